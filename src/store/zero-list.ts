/**
 * Zero records (trims, full-block zero writes) logged in the WAL and not yet in a
 * map tombstone, in log order: (block, seq) pairs in two growing typed arrays, so
 * a large trim costs 16 bytes a block here and no object per block. The flusher
 * takes them with its snapshot (take) and gives back what it could not commit
 * (restore). Entries superseded since are skipped there (BlockIndex.isZeroVersion).
 */
export class ZeroList {
  private blocks = new Float64Array(256);
  private seqs = new Float64Array(256);
  length = 0;

  push(block: number, seq: number): void {
    if (this.length === this.blocks.length) this.grow(this.length * 2);
    this.blocks[this.length] = block;
    this.seqs[this.length] = seq;
    this.length++;
  }

  /** Take up to `max` of the oldest entries out of the list. */
  take(max: number): { blocks: Float64Array; seqs: Float64Array; count: number } {
    const n = Math.min(max, this.length);
    const out = { blocks: this.blocks.slice(0, n), seqs: this.seqs.slice(0, n), count: n };
    this.blocks.copyWithin(0, n, this.length);
    this.seqs.copyWithin(0, n, this.length);
    this.length -= n;
    return out;
  }

  /** Put back entries taken earlier (a flush that failed): they go first, as they are older. */
  restore(blocks: Float64Array, seqs: Float64Array, count: number): void {
    if (count === 0) return;
    if (this.length + count > this.blocks.length) this.grow(Math.max(this.blocks.length * 2, this.length + count));
    this.blocks.copyWithin(count, 0, this.length);
    this.seqs.copyWithin(count, 0, this.length);
    this.blocks.set(blocks.subarray(0, count), 0);
    this.seqs.set(seqs.subarray(0, count), 0);
    this.length += count;
  }

  private grow(n: number): void {
    const b = new Float64Array(n);
    const s = new Float64Array(n);
    b.set(this.blocks.subarray(0, this.length));
    s.set(this.seqs.subarray(0, this.length));
    this.blocks = b;
    this.seqs = s;
  }
}
