import { crc32c } from './crc32c';
import { readU16, readU32, readU64, writeU16, writeU32, writeU64 } from './u64';

/**
 * The 64-byte header that opens every WAL segment and every chunk object:
 *
 *   off size field
 *     0    8 magic     "VBFSWAL\0" (WAL segment) or "VBFSCHK\0" (chunk object)
 *     8    2 version   WAL segment: 3 (a base seq and flags below; markers carry
 *                       the base seq); 2 = sync markers, no base seq; 1 = written
 *                       before markers existed. Chunk: 1
 *    10    2 reserved  0
 *    12    4 blockSize raw block size of the volume
 *    16   16 volumeId  the volume's id (raw bytes of the 32-hex-char id)
 *    32    8 number    segment number (WAL) or chunk id (chunk)
 *    40    4 count     chunk: number of block records; WAL (v3): flags, bit 0 =
 *                       preallocated (the file was full size before its first
 *                       record; what follows the last record is zeros or the
 *                       stale records of an earlier use of the file); else 0
 *    44    4 reserved  0
 *    48    8 maxSeq    chunk: highest record seq in it; WAL (v3): base seq, every
 *                       block record of this segment has a seq above it, and
 *                       every sync marker carries it as its seq; else 0
 *    56    4 reserved  0
 *    60    4 crc32c of bytes [0, 60)
 *
 * Block records (format/block-record.ts) follow from offset 64.
 */
export const SEGMENT_HEADER = 64;
/** WAL segments written by this build are format 3 (base seq, preallocation flag); versions 1 and 2 are still read. */
export const WAL_VERSION = 3;
/** WAL v3 header flag (in the `count` field): the segment file was preallocated (zero-filled or recycled). */
export const WAL_FLAG_PREALLOCATED = 1;
export const CHUNK_VERSION = 1;
export const WAL_MAGIC = 'VBFSWAL\0';
export const CHUNK_MAGIC = 'VBFSCHK\0';

export interface SegmentHeader {
  magic: string;
  version: number;
  blockSize: number;
  volumeId: string;
  number: number;
  count: number;
  maxSeq: number;
}

export function encodeSegmentHeader(h: Omit<SegmentHeader, 'version'>, out: Uint8Array = Buffer.alloc(SEGMENT_HEADER)): Uint8Array {
  out.fill(0, 0, SEGMENT_HEADER);
  Buffer.from(out.buffer, out.byteOffset, SEGMENT_HEADER).write(h.magic, 0, 8, 'latin1');
  writeU16(out, 8, h.magic === WAL_MAGIC ? WAL_VERSION : CHUNK_VERSION);
  writeU32(out, 12, h.blockSize);
  out.set(Buffer.from(h.volumeId, 'hex'), 16);
  writeU64(out, 32, h.number);
  writeU32(out, 40, h.count);
  writeU64(out, 48, h.maxSeq);
  writeU32(out, 60, crc32c(out, 0, 0, 60));
  return out;
}

/** Returns null when the bytes are not a valid header (short, bad magic or bad crc). */
export function decodeSegmentHeader(buf: Uint8Array, magic: string): SegmentHeader | null {
  if (buf.length < SEGMENT_HEADER) return null;
  const b = Buffer.from(buf.buffer, buf.byteOffset, SEGMENT_HEADER);
  if (b.toString('latin1', 0, 8) !== magic) return null;
  if (crc32c(buf, 0, 0, 60) !== readU32(buf, 60)) return null;
  return {
    magic,
    version: readU16(buf, 8),
    blockSize: readU32(buf, 12),
    volumeId: b.toString('hex', 16, 32),
    number: readU64(buf, 32),
    count: readU32(buf, 40),
    maxSeq: readU64(buf, 48),
  };
}
