import { VbfsError } from '../errors';
import type { Compression, Durability, VolumeInfo } from '../store/types';
import { COMPRESSIONS, DURABILITY_MODES } from '../store/types';

/**
 * volume.json: the only JSON on disk, written once at create (temp + fsync + rename
 * + fsync dir) and rewritten (the same way) only to upgrade its format version.
 *   { "formatVersion": 2, "name", "id" (32 hex), "size", "blockSize",
 *     "durability", "compression", "createdAt" (ISO 8601) }
 *
 * Format 2: WAL segments and map logs carry sync markers (docs/FORMAT.md). A version 1
 * volume is read as it is and upgraded to 2 when first opened for writing, before
 * any version 2 segment is written, so an older build refuses it instead of
 * misreading a marker.
 */
export const VOLUME_FORMAT_VERSION = 2;
export const READABLE_VOLUME_VERSIONS: readonly number[] = [1, 2];
export const MIN_BLOCK = 512;
export const MAX_BLOCK = 65536;
/** 2^48 bytes (256 TiB): keeps block numbers, byte offsets and index pages well inside exact JS numbers and Map limits. */
export const MAX_VOLUME_SIZE = 2 ** 48;

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

export function checkCompression(c: unknown): Compression {
  if (!COMPRESSIONS.includes(c as Compression)) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid compression ${JSON.stringify(c)}: use one of ${COMPRESSIONS.join(', ')}`);
  }
  return c as Compression;
}

export function encodeVolumeMeta(info: VolumeInfo): Buffer {
  return Buffer.from(JSON.stringify(info, null, 2) + '\n');
}

export function decodeVolumeMeta(buf: Buffer, path: string): VolumeInfo {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new VbfsError('VBFS_CORRUPT', `${path}: not valid JSON`, { path });
  }
  if (!READABLE_VOLUME_VERSIONS.includes(v.formatVersion as number)) {
    throw new VbfsError('VBFS_UNSUPPORTED_VERSION', `${path}: format version ${String(v.formatVersion)} is not supported (this build reads ${READABLE_VOLUME_VERSIONS.join(' and ')})`, { path });
  }
  try {
    const blockSize = checkBlockSize(v.blockSize);
    if (typeof v.id !== 'string' || !/^[0-9a-f]{32}$/.test(v.id)) throw new Error('bad id');
    return {
      name: checkVolumeName(v.name),
      id: v.id,
      size: checkSize(v.size, blockSize),
      blockSize,
      durability: checkDurability(v.durability),
      compression: checkCompression(v.compression),
      createdAt: String(v.createdAt),
      formatVersion: v.formatVersion as number,
    };
  } catch (err) {
    throw new VbfsError('VBFS_CORRUPT', `${path}: invalid volume metadata (${(err as Error).message})`, { path });
  }
}
