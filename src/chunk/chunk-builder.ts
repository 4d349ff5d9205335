import { encodeRecordWithCrc, RECORD_HEADER } from '../format/block-record';
import { allocPlacement, type ChunkPlacement } from '../format/map-records';
import { SEGMENT_HEADER } from '../format/segment-header';
import { encodeChunkHeader } from './chunk';

/** Chunk building yields to the event loop after this many records. */
const BUILD_SLICE = 128;

/**
 * Where a chunk's records come from: block versions in write-buffer slots, each
 * with the record it was logged to the WAL as (its CRC, its flags, and its stored
 * payload when compressed or sealed). The arena is one; tests may hand in another.
 */
export interface ChunkSource {
  blockOf(slot: number): number;
  seqOf(slot: number): number;
  recordCrc(slot: number): number;
  recordFlags(slot: number): number;
  packedOf(slot: number): Buffer | undefined;
  slab(slot: number): Buffer;
  offset(slot: number): number;
}

export interface BuiltChunk {
  id: number;
  buf: Buffer; // the encoded object
  base: Buffer; // the pooled buffer it lives in (give it back with recycle())
  placement: ChunkPlacement; // where each record went, for the map commit and the index
  slots: number[];
}

/**
 * Encodes chunk objects from write-buffer slots, into buffers reused across
 * flushes. Each chunk record is the WAL record of the same version, byte for
 * byte: the payload is copied (raw from the slot, or the LZ4 and/or sealed payload
 * the writer kept), and the CRC and flags are reused, so a block is neither
 * checksummed, compressed nor sealed a second time (the flusher does no crypto).
 */
export class ChunkBuilder {
  private readonly pool: Buffer[] = [];

  constructor(
    private readonly volumeId: string,
    private readonly blockSize: number,
    /** Size of a pooled buffer (a chunk object is never larger). */
    private readonly chunkBytes: number,
    /** Buffers kept for reuse: one per chunk written in parallel. */
    private readonly poolSize: number,
  ) {}

  /** Encode chunk `id` from `slots` (sorted by block): no per-block objects, one pass. */
  async build(src: ChunkSource, slots: number[], id: number): Promise<BuiltChunk> {
    const bs = this.blockSize;
    const n = slots.length;
    let size = SEGMENT_HEADER;
    for (let k = 0; k < n; k++) size += RECORD_HEADER + (src.packedOf(slots[k] as number)?.length ?? bs);
    const base = this.take(size);
    const buf = base.subarray(0, size);
    const placement = allocPlacement(id, n);
    let pos = SEGMENT_HEADER;
    let maxSeq = 0;
    for (let k = 0; k < n; k++) {
      if (k > 0 && k % BUILD_SLICE === 0) await new Promise<void>((r) => setImmediate(r));
      const slot = slots[k] as number;
      const block = src.blockOf(slot);
      const seq = src.seqOf(slot);
      if (seq > maxSeq) maxSeq = seq;
      const packed = src.packedOf(slot);
      const crc = src.recordCrc(slot);
      const flags = src.recordFlags(slot);
      const o = src.offset(slot);
      const end = packed
        ? encodeRecordWithCrc(buf, pos, crc, seq, block, flags, bs, packed, 0, packed.length)
        : encodeRecordWithCrc(buf, pos, crc, seq, block, flags, bs, src.slab(slot), o, o + bs);
      placement.blocks[k] = block;
      placement.seqs[k] = seq;
      placement.offsets[k] = pos;
      placement.lens[k] = end - pos - RECORD_HEADER;
      placement.flags[k] = flags;
      pos = end;
    }
    encodeChunkHeader(buf, this.volumeId, bs, id, n, maxSeq);
    return { id, buf, base, placement, slots };
  }

  /** The backend is done with the chunk's bytes (put() resolved or failed): reuse its buffer. */
  recycle(c: BuiltChunk): void {
    if (this.pool.length < this.poolSize) this.pool.push(c.base);
  }

  /** Buffers held for reuse. */
  get pooled(): number {
    return this.pool.length;
  }

  /** Give the pooled buffers back (an idle volume). */
  trim(): void {
    this.pool.length = 0;
  }

  private take(size: number): Buffer {
    const b = this.pool.pop();
    if (b && b.length >= size) return b;
    return Buffer.allocUnsafeSlow(Math.max(size, this.chunkBytes));
  }
}
