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
 *     4    4 len      payload length in bytes (<= raw block size)
 *     8    8 seq      sequence number (u64 LE, < 2^53), unique per volume, only grows
 *    16    8 block    block number (u64 LE)
 *    24    4 flags    bit 0: payload is an LZ4 block (lz4-napi format); others 0
 *    28    4 rawLen   uncompressed length (= volume block size)
 *    32  len payload
 *
 * All integers little endian.
 */
export const RECORD_HEADER = 32;
export const FLAG_LZ4 = 1;

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

export type RecordCheck =
  | { ok: true; header: RecordHeader; end: number }
  | { ok: false; reason: 'short' | 'zero' | 'bad-length' | 'bad-crc' };

/**
 * Check the record at `off`. `maxLen` bounds the payload (the raw block size), so a
 * garbage length is rejected before any checksum work. Pure: never throws.
 */
export function checkRecord(buf: Uint8Array, off: number, limit: number, maxLen: number): RecordCheck {
  if (off + RECORD_HEADER > limit) return { ok: false, reason: allZero(buf, off, limit) ? 'zero' : 'short' };
  const len = readU32(buf, off + 4);
  const storedCrc = readU32(buf, off);
  if (storedCrc === 0 && len === 0 && allZero(buf, off, Math.min(limit, off + RECORD_HEADER))) return { ok: false, reason: 'zero' };
  if (len === 0 || len > maxLen) return { ok: false, reason: 'bad-length' };
  const end = off + RECORD_HEADER + len;
  if (end > limit) return { ok: false, reason: 'short' };
  if (crc32c(buf, 0, off + 4, end) !== storedCrc) return { ok: false, reason: 'bad-crc' };
  return {
    ok: true,
    end,
    header: { len, seq: readU64(buf, off + 8), block: readU64(buf, off + 16), flags: readU32(buf, off + 24), rawLen: readU32(buf, off + 28) },
  };
}

export function allZero(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}
