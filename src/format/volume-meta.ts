import { VbfsError } from '../errors';
import { COMPRESSIONS, DURABILITY_MODES, type Compression, type Durability, type VolumeInfo } from '../types';
import { checkEncryptionMeta } from './encryption-meta';

/**
 * volume.json: the only JSON on disk, written once at create (temp + fsync + rename
 * + fsync dir) and rewritten (the same way) only to upgrade its format version.
 *   { "formatVersion": 2, "name", "id" (32 hex), "size", "blockSize",
 *     "durability", "compression", "createdAt" (ISO 8601)
 *     [, "encryption": { ... } (format 3 only)] }
 *
 * Format 2: WAL segments and map logs carry sync markers (docs/FORMAT.md). A version 1
 * volume is read as it is and upgraded to 2 when first opened for writing, before
 * any version 2 segment is written, so an older build refuses it instead of
 * misreading a marker.
 *
 * Format 3 is format 2 with an `encryption` object (encryption-meta.ts): every
 * record payload is sealed (docs/FORMAT.md "Encryption"). An encrypted volume is
 * written as 3 from its create on, so an older build refuses it (unsupported
 * version) instead of serving ciphertext as data; a plain volume stays 2. The
 * in-memory `encrypted` flag is derived from the object and never written.
 *
 * Decoding checks the shape only (every field there, of its type, modes from the
 * known lists); what the store accepts as a name, block size or size is policy and
 * is checked by store/volume-rules.ts.
 */
export const VOLUME_FORMAT_VERSION = 2;
export const ENCRYPTED_FORMAT_VERSION = 3;
const READABLE_VOLUME_VERSIONS: readonly number[] = [1, 2, 3];

export function encodeVolumeMeta(info: VolumeInfo): Buffer {
  // `encrypted` is derived from `encryption` on decode: never stored.
  return Buffer.from(JSON.stringify(info, (k, v: unknown) => (k === 'encrypted' ? undefined : v), 2) + '\n');
}

export function decodeVolumeMeta(buf: Buffer, path: string): VolumeInfo {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new VbfsError('VBFS_CORRUPT', `${path}: not valid JSON`, { path });
  }
  if (!READABLE_VOLUME_VERSIONS.includes(v.formatVersion as number)) {
    throw new VbfsError(
      'VBFS_UNSUPPORTED_VERSION',
      `${path}: format version ${String(v.formatVersion)} is not supported (this build reads ${READABLE_VOLUME_VERSIONS.join(' and ')})`,
      { path },
    );
  }
  const bad = (what: string): VbfsError => new VbfsError('VBFS_CORRUPT', `${path}: invalid volume metadata (${what})`, { path });
  if (typeof v.name !== 'string') throw bad('name is not a string');
  if (typeof v.id !== 'string' || !/^[0-9a-f]{32}$/.test(v.id)) throw bad('bad id');
  if (typeof v.blockSize !== 'number' || !Number.isSafeInteger(v.blockSize)) throw bad(`block size ${String(v.blockSize)} is not an integer`);
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size)) throw bad(`size ${String(v.size)} is not an integer`);
  if (!DURABILITY_MODES.includes(v.durability as Durability)) throw bad(`unknown durability ${JSON.stringify(v.durability)}`);
  if (!COMPRESSIONS.includes(v.compression as Compression)) throw bad(`unknown compression ${JSON.stringify(v.compression)}`);
  const encrypted = v.formatVersion === ENCRYPTED_FORMAT_VERSION;
  if (encrypted !== (v.encryption !== undefined))
    throw bad(encrypted ? 'format 3 without encryption settings' : `encryption settings in a format ${String(v.formatVersion)} volume`);
  const out: VolumeInfo = {
    name: v.name,
    id: v.id,
    size: v.size,
    blockSize: v.blockSize,
    durability: v.durability as Durability,
    compression: v.compression as Compression,
    createdAt: String(v.createdAt),
    formatVersion: v.formatVersion as number,
    encrypted,
  };
  if (encrypted) out.encryption = checkEncryptionMeta(v.encryption, path);
  return out;
}
