/**
 * One error type for the whole project. Callers (the FUSE layer, the CLI, tests)
 * branch on `code`, never on the message text: the FUSE layer maps codes to errno
 * in one table, the CLI maps them to exit statuses in one table.
 */
export type VbfsErrorCode =
  | 'VBFS_INVALID_ARGUMENT' // a bad parameter: negative length, unknown option value, ...
  | 'VBFS_OUT_OF_RANGE' // offset/length past the end of the volume
  | 'VBFS_INVALID_NAME' // volume name that is not a plain, safe file name
  | 'VBFS_NOT_FOUND' // unknown volume
  | 'VBFS_EXISTS' // volume already exists
  | 'VBFS_LOCKED' // volume is open for writing elsewhere (other process or handle)
  | 'VBFS_CLOSED' // operation on a closed volume or store
  | 'VBFS_READ_ONLY' // write to a volume opened read-only
  | 'VBFS_CORRUPT' // checksum or structure failure in a WAL, map log, checkpoint or chunk
  | 'VBFS_UNSUPPORTED_VERSION' // on-disk format version this build does not know
  | 'VBFS_BUSY' // e.g. delete of a volume that is open
  | 'VBFS_BAD_KEY' // the key (or passphrase) given does not match the volume's key check value
  | 'VBFS_LEASE_HELD' // the volume's lease in the bucket is live and held by another writer (any machine)
  | 'VBFS_LEASE_LOST' // this writer's lease expired or was taken over: it is fenced and must not write
  | 'VBFS_KEY_REQUIRED' // the volume is encrypted and no key was given
  | 'VBFS_IO'; // an I/O error from the file layer or the backend

export class VbfsError extends Error {
  readonly code: VbfsErrorCode;
  /** Extra structured context (file, offset, volume ...), shown by the CLI in debug mode. */
  readonly details: Record<string, unknown>;

  constructor(code: VbfsErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VbfsError';
    this.code = code;
    this.details = details;
  }
}

export function isVbfsError(err: unknown, code?: VbfsErrorCode): err is VbfsError {
  return err instanceof VbfsError && (code === undefined || err.code === code);
}

/** Wrap a foreign (fs, network) error so that callers only ever see VbfsError. */
export function ioError(message: string, cause: unknown, details: Record<string, unknown> = {}): VbfsError {
  if (cause instanceof VbfsError) return cause;
  const errno = (cause as NodeJS.ErrnoException | undefined)?.code;
  const why = cause instanceof Error ? cause.message : String(cause);
  return new VbfsError('VBFS_IO', `${message}: ${why}`, { ...details, errno }, { cause });
}

const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/**
 * A write that failed for lack of space (ENOSPC, EDQUOT) anywhere in the cause
 * chain: retryable once space returns, because the caller still holds the data
 * and rewrites it at the same place. Never true for a failed fsync/fdatasync
 * (marked with details.syncFailed by syncFailed()): after one, the kernel may have
 * dropped the dirty pages and a retried sync can report success for lost data.
 */
export function isNoSpace(err: unknown): boolean {
  let found = false;
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 10; depth++) {
    if (e instanceof VbfsError) {
      if (e.details['syncFailed'] === true) return false;
      const errno = e.details['errno'];
      if (typeof errno === 'string' && NO_SPACE.has(errno)) found = true;
    } else if (NO_SPACE.has(String((e as NodeJS.ErrnoException).code))) {
      found = true;
    }
    e = (e as { cause?: unknown }).cause;
  }
  return found;
}

/** Wrap the error of a failed fsync/fdatasync: never retryable (see isNoSpace). */
export function syncFailed(message: string, cause: unknown): VbfsError {
  const base = ioError(message, cause);
  return new VbfsError('VBFS_IO', base.message, { ...base.details, syncFailed: true }, { cause });
}
