/**
 * The one table from VbfsError codes to the errno a FUSE callback returns.
 * fuse-native wants negative numbers; a positive value in `read`/`write` is a byte
 * count, and `cb(null)` in `write` throws inside fuse-native and kills the mount.
 */
import { constants } from 'node:os';
import { isVbfsError, type VbfsErrorCode } from '../errors';

const E = constants.errno;

export const ERRNO_BY_CODE: Readonly<Record<VbfsErrorCode, number>> = {
  VBFS_INVALID_ARGUMENT: E.EINVAL,
  VBFS_OUT_OF_RANGE: E.ENOSPC, // what a block device says for I/O past its end
  VBFS_INVALID_NAME: E.ENOENT, // a path that can never name a volume
  VBFS_NOT_FOUND: E.ENOENT,
  VBFS_EXISTS: E.EEXIST,
  VBFS_LOCKED: E.EBUSY,
  VBFS_CLOSED: E.EIO, // volume closed under us (shutdown): the data path is gone
  VBFS_READ_ONLY: E.EROFS,
  VBFS_CORRUPT: E.EIO,
  VBFS_UNSUPPORTED_VERSION: E.EIO,
  VBFS_BUSY: E.EBUSY,
  VBFS_BAD_KEY: E.EACCES, // only at open; a mount refuses the volume before any file op
  VBFS_LEASE_HELD: E.EBUSY, // only at open, like VBFS_LOCKED
  VBFS_LEASE_LOST: E.EIO, // fenced: every later write and fsync fails
  VBFS_KEY_REQUIRED: E.EACCES, // likewise
  VBFS_IO: E.EIO,
};

/** Underlying errnos worth passing through a VBFS_IO error: the user can act on them. */
const PASS_THROUGH = new Set(['ENOSPC', 'EDQUOT', 'EROFS']);

/** Negative errno for any thrown value; unknown errors (bugs) become -EIO. */
export function toErrno(err: unknown): number {
  if (isVbfsError(err)) {
    const under = err.details['errno'];
    if (err.code === 'VBFS_IO' && typeof under === 'string' && PASS_THROUGH.has(under)) {
      return -(E as Record<string, number>)[under]!;
    }
    return -ERRNO_BY_CODE[err.code];
  }
  return -E.EIO;
}

export const errno = {
  EPERM: -E.EPERM,
  ENOENT: -E.ENOENT,
  EIO: -E.EIO,
  EBADF: -E.EBADF,
  EACCES: -E.EACCES,
  EBUSY: -E.EBUSY,
  EISDIR: -E.EISDIR,
  EINVAL: -E.EINVAL,
  ENOSPC: -E.ENOSPC,
  EROFS: -E.EROFS,
  EOPNOTSUPP: -E.EOPNOTSUPP,
} as const;
