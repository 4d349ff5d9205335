import { copyBytes } from './bytes';
import { crc32c } from './crc32c';
import { readU32, readU64, writeU32, writeU64 } from './u64';

/**
 * A block record: one version of one block. The same layout is used by WAL
 * segments and by chunk objects, so a chunk is a WAL written in block order and
 * either can rebuild a volume on its own.
 *
 *   off size field
 *     0    4 crc32c of bytes [4, 32 + len)  (header after the crc, and payload)
 *     4    4 len      payload length in bytes (<= raw block size, + 16 when sealed)
 *     8    8 seq      sequence number (u64 LE, < 2^53), unique per volume, only grows
 *    16    8 block    block number (u64 LE)
 *    24    4 flags    bit 0: payload is an LZ4 block (lz4-napi format)
 *                       bit 1: sync marker (WAL only, below)
 *                       bit 2: payload is sealed (AES-256-GCM: ciphertext || 16-byte tag,
 *                              of an encrypted volume; LZ4 happens before sealing)
 *                       bit 3: zero record (WAL only): the block is all zeros from this
 *                              seq on (a trim or a full-block zero write); no payload
 *                              (len 0), or on an encrypted volume the GCM tag of an
 *                              empty plaintext (len 16, with bit 2), which authenticates
 *                              the header; never in a chunk
 *                       bits 8..15: reserved for a key generation (rekey); others 0
 *    28    4 rawLen   uncompressed length (= volume block size)
 *    32  len payload
 *
 * All integers little endian.
 */
export const RECORD_HEADER = 32;
export const FLAG_LZ4 = 1;
export const FLAG_SEALED = 4;
export const FLAG_ZERO = 8;
/** The flag bits a block record (not a marker) may carry. */
export const BLOCK_RECORD_FLAGS = FLAG_LZ4 | FLAG_SEALED;
/** The flag bits a WAL record may carry: a block record's, or a zero record's. */
export const WAL_RECORD_FLAGS = BLOCK_RECORD_FLAGS | FLAG_ZERO;
/** What sealing adds to a payload: the GCM tag (crypto/volume-cipher.ts). */
export const SEAL_TAG_BYTES = 16;

/** True when a (CRC-checked) record is a zero record. */
export function isZeroRecord(h: RecordHeader): boolean {
  return (h.flags & FLAG_ZERO) !== 0;
}

/** A zero record's only legal shapes: no LZ4, and an empty payload (plain) or a bare tag (sealed). */
export function zeroRecordWellFormed(h: RecordHeader): boolean {
  if ((h.flags & FLAG_LZ4) !== 0) return false;
  return h.len === ((h.flags & FLAG_SEALED) !== 0 ? SEAL_TAG_BYTES : 0);
}

/** The largest payload a block record of this block size can hold (a raw block, sealed). */
export function maxPayload(blockSize: number): number {
  return blockSize + SEAL_TAG_BYTES;
}

/**
 * A sync marker (WAL format 2 and 3): a record with flags = FLAG_SYNC_MARK, seq = 0
 * (format 3: the segment's base seq, so a marker left by an earlier use of a recycled
 * segment file is told apart from this use's),
 * block = 0, rawLen = 0 and an 8-byte payload, the u64 segment offset up to which
 * this segment was covered by a COMPLETED fdatasync when the marker was written.
 * Every WAL batch starts with one, so the claim costs 40 bytes per batch and no
 * extra sync. A marker that survived a power cut is true whether or not its own
 * batch was synced: it only reports a sync that had finished before it was written.
 * Recovery takes the highest claim found anywhere in the segment as the proven
 * sync point (see wal-reader.ts).
 */
const FLAG_SYNC_MARK = 2;
export const SYNC_MARKER_BYTES = RECORD_HEADER + 8;

/**
 * Encode a sync marker at `off` claiming `syncedTo`; `scratch` is an 8-byte buffer (no
 * allocation per batch). `tag` is the seq field: 0 in format 2, the base seq in format 3.
 */
export function encodeSyncMarker(buf: Uint8Array, off: number, syncedTo: number, scratch: Uint8Array, tag = 0): number {
  writeU64(scratch, 0, syncedTo);
  return encodeRecord(buf, off, tag, 0, FLAG_SYNC_MARK, 0, scratch, 0, 8);
}

/** True when a record header (already CRC-checked) is a sync marker. */
export function isSyncMarker(h: RecordHeader): boolean {
  return (h.flags & FLAG_SYNC_MARK) !== 0;
}

/** The claim of a valid sync marker record, or -1 if the marker is malformed (bad fields, or a seq other than `tag`). */
export function syncMarkerClaim(h: RecordHeader, buf: Uint8Array, payloadOff: number, tag = 0): number {
  if (h.flags !== FLAG_SYNC_MARK || h.len !== 8 || h.seq !== tag || h.block !== 0 || h.rawLen !== 0) return -1;
  return readU64(buf, payloadOff);
}

export interface RecordHeader {
  len: number;
  seq: number;
  block: number;
  flags: number;
  rawLen: number;
}

/** Encode header + payload at `off` in `buf`; returns the offset after the record. */
export function encodeRecord(
  buf: Uint8Array,
  off: number,
  seq: number,
  block: number,
  flags: number,
  rawLen: number,
  payload: Uint8Array,
  pStart = 0,
  pEnd = payload.length,
): number {
  const end = encodeRecordWithCrc(buf, off, 0, seq, block, flags, rawLen, payload, pStart, pEnd);
  writeU32(buf, off, crc32c(buf, 0, off + 4, end));
  return end;
}

/**
 * Like encodeRecord, with the CRC already known: the WAL record of the same
 * version has the same header fields and payload, so the flusher reuses its CRC
 * instead of checksumming every block a second time.
 */
export function encodeRecordWithCrc(
  buf: Uint8Array,
  off: number,
  crc: number,
  seq: number,
  block: number,
  flags: number,
  rawLen: number,
  payload: Uint8Array,
  pStart: number,
  pEnd: number,
): number {
  const len = pEnd - pStart;
  writeU32(buf, off, crc);
  writeU32(buf, off + 4, len);
  writeU64(buf, off + 8, seq);
  writeU64(buf, off + 16, block);
  writeU32(buf, off + 24, flags);
  writeU32(buf, off + 28, rawLen);
  copyBytes(payload, buf, off + RECORD_HEADER, pStart, pEnd);
  return off + RECORD_HEADER + len;
}

export type RecordCheck = { ok: true; header: RecordHeader; end: number } | { ok: false; reason: 'short' | 'zero' | 'bad-length' | 'bad-crc' };

/**
 * Check the record at `off`. `maxLen` bounds the payload (the raw block size), so a
 * garbage length is rejected before any checksum work. Pure: never throws.
 */
export function checkRecord(buf: Uint8Array, off: number, limit: number, maxLen: number): RecordCheck {
  if (off + RECORD_HEADER > limit) return { ok: false, reason: allZero(buf, off, limit) ? 'zero' : 'short' };
  const len = readU32(buf, off + 4);
  const storedCrc = readU32(buf, off);
  if (storedCrc === 0 && len === 0 && allZero(buf, off, Math.min(limit, off + RECORD_HEADER))) return { ok: false, reason: 'zero' };
  // Only a zero record has no payload (a header of zeros was caught above).
  if ((len === 0 && (readU32(buf, off + 24) & FLAG_ZERO) === 0) || len > maxLen) return { ok: false, reason: 'bad-length' };
  const end = off + RECORD_HEADER + len;
  if (end > limit) return { ok: false, reason: 'short' };
  if (crc32c(buf, 0, off + 4, end) !== storedCrc) return { ok: false, reason: 'bad-crc' };
  return {
    ok: true,
    end,
    header: { len, seq: readU64(buf, off + 8), block: readU64(buf, off + 16), flags: readU32(buf, off + 24), rawLen: readU32(buf, off + 28) },
  };
}

function allZero(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}
