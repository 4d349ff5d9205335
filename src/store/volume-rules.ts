import { VbfsError } from '../errors';
import { COMPRESSIONS, DURABILITY_MODES, type Compression, type Durability, type VolumeInfo } from '../types';

/**
 * What the store accepts as a volume: its name, block size, size and modes. Policy,
 * not format: format/volume-meta.ts only decodes volume.json into typed fields, and
 * the store checks the result against these rules (checkVolumeInfo), as it checks
 * the arguments of createVolume and openVolume.
 */
const MIN_BLOCK = 512;
const MAX_BLOCK = 65536;
/** 2^48 bytes (256 TiB): keeps block numbers, byte offsets and index pages well inside exact JS numbers and Map limits. */
const MAX_VOLUME_SIZE = 2 ** 48;

/** A volume name is a directory name in the store and a file name in the mount: plain and safe. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkVolumeName(name: unknown): string {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name.includes('..')) {
    throw new VbfsError(
      'VBFS_INVALID_NAME',
      `invalid volume name ${JSON.stringify(name)}: use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit`,
      { name },
    );
  }
  return name;
}

export function checkBlockSize(bs: unknown): number {
  if (typeof bs !== 'number' || !Number.isInteger(bs) || bs < MIN_BLOCK || bs > MAX_BLOCK || (bs & (bs - 1)) !== 0) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid block size ${String(bs)}: must be a power of two from ${MIN_BLOCK} to ${MAX_BLOCK}`);
  }
  return bs;
}

export function checkSize(size: unknown, blockSize: number): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid volume size ${String(size)}: must be a positive integer number of bytes`);
  }
  if (size > MAX_VOLUME_SIZE) throw new VbfsError('VBFS_INVALID_ARGUMENT', `volume size ${size} is larger than the maximum ${MAX_VOLUME_SIZE} (256 TiB)`);
  if (size % blockSize !== 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `volume size ${size} is not a multiple of the block size ${blockSize}`);
  return size;
}

export function checkDurability(d: unknown): Durability {
  if (!DURABILITY_MODES.includes(d as Durability)) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid durability ${JSON.stringify(d)}: use one of ${DURABILITY_MODES.join(', ')}`);
  }
  return d as Durability;
}

/**
 * `remote` promises that an fsync'ed write is in the backend, off this machine. A
 * local directory backend is on the machine (the CLI's is inside the store
 * directory), so there it would only be a slower `strict`: refused, so that a
 * forgotten --backend is not mistaken for protection against losing the disk.
 */
export function checkDurabilityOn(d: Durability, backend: { kind: string; remote?: boolean }): Durability {
  if (d === 'remote' && backend.remote !== true) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `durability 'remote' needs a remote backend (S3: --backend s3://...), not a ${backend.kind} backend`, {
      durability: d,
      backend: backend.kind,
    });
  }
  return d;
}

export function checkCompression(c: unknown): Compression {
  if (!COMPRESSIONS.includes(c as Compression)) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid compression ${JSON.stringify(c)}: use one of ${COMPRESSIONS.join(', ')}`);
  }
  return c as Compression;
}

/**
 * A decoded volume.json that breaks these rules was not written by a store: refused
 * as corrupt (VBFS_CORRUPT naming the file), not as a bad argument.
 */
export function checkVolumeInfo(info: VolumeInfo, path: string): VolumeInfo {
  try {
    checkVolumeName(info.name);
    checkSize(info.size, checkBlockSize(info.blockSize));
  } catch (err) {
    throw new VbfsError('VBFS_CORRUPT', `${path}: invalid volume metadata (${(err as Error).message})`, { path });
  }
  return info;
}
