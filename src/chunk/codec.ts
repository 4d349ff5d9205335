import { compressSync, uncompressSync } from 'lz4-napi';
import { FLAG_LZ4 } from '../format/block-record';

/**
 * The LZ4 policy, in one place. A block of an lz4 volume is compressed once, when
 * it is written: the WAL record carries the compressed payload, and the chunk
 * record of the same version reuses that payload and its CRC (the two records are
 * byte-identical), so the flusher never compresses.
 *
 * A block is stored compressed only when that saves at least a tenth of it:
 * below that, the CPU spent decompressing on every read buys too little space.
 * Payloads use the lz4-napi block format (FLAG_LZ4 in the record flags).
 */

/** Compressed payloads at or above this fraction of the block are stored raw. */
const KEEP_BELOW = 9 / 10;

/**
 * The compressed payload of a raw block, or null when it should be stored raw
 * (the saving is under a tenth). Synchronous: one block (4 KiB by default)
 * compresses in a few microseconds, cheaper than a trip to the thread pool.
 */
export function compressBlock(raw: Buffer): Buffer | null {
  const c = compressSync(raw);
  return c.length < raw.length * KEEP_BELOW ? c : null;
}

/** True when a record's payload is LZ4-compressed. */
export function isCompressed(flags: number): boolean {
  return (flags & FLAG_LZ4) !== 0;
}

/** The raw bytes of an LZ4 payload (throws on a payload LZ4 rejects: callers treat that as damage). */
export function uncompressBlock(payload: Uint8Array): Buffer {
  return uncompressSync(payload);
}
