/**
 * Read cache of persisted blocks, LRU, bounded in bytes. A Map keeps insertion
 * order, so the oldest entry is the first key; a hit re-inserts. The entry count
 * is bounded by cacheBytes / blockSize, so a Map is fine here (unlike the index).
 * `onEvict` lets the index move the block from Cached back to Persisted.
 */
export class BlockCache {
  private readonly map = new Map<number, Buffer>();
  bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number, private readonly onEvict: (block: number) => void) {}

  get(block: number): Buffer | undefined {
    const b = this.map.get(block);
    if (b === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.map.delete(block);
    this.map.set(block, b);
    return b;
  }

  has(block: number): boolean {
    return this.map.has(block);
  }

  /** Stores `data` as is: pass a buffer nobody else will modify. */
  set(block: number, data: Buffer): boolean {
    if (this.maxBytes < data.length) return false;
    const old = this.map.get(block);
    if (old) {
      this.bytes -= old.length;
      this.map.delete(block);
    }
    this.map.set(block, data);
    this.bytes += data.length;
    while (this.bytes > this.maxBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      this.evict(first.value);
    }
    return true;
  }

  delete(block: number): void {
    const b = this.map.get(block);
    if (b) {
      this.bytes -= b.length;
      this.map.delete(block);
    }
  }

  private evict(block: number): void {
    this.delete(block);
    this.onEvict(block);
  }

  clear(): void {
    for (const k of [...this.map.keys()]) this.evict(k);
  }
}
