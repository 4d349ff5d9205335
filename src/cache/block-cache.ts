import { copyBytes } from '../format/bytes';

const SLAB_BYTES = 4 * 1024 * 1024;

/**
 * Read cache of persisted blocks: LRU, bounded in bytes. Block data lives in fixed
 * slots carved from 4 MiB slabs (allocated as the cache fills), the LRU order is a
 * doubly linked list in typed arrays, and only the block -> slot lookup is a Map,
 * whose size is bounded by cacheBytes / blockSize. So a cache hit or fill allocates
 * nothing and leaves nothing for the garbage collector. `onEvict` lets the index
 * move a block from Cached back to Persisted.
 */
export class BlockCache {
  private readonly slotOf = new Map<number, number>();
  private readonly slabs: Buffer[] = [];
  private readonly perSlab: number;
  private readonly capacity: number;
  private limit: number; // blocks held at once (<= capacity): a share of a store-wide budget
  // Per-slot arrays, grown with the slabs: a large cacheBytes (the default is set by
  // the memory budget) costs nothing until the cache really holds that much.
  private blockOf: Float64Array;
  private prev: Int32Array;
  private next: Int32Array;
  private head = -1; // most recently used
  private tail = -1; // least recently used
  private readonly free: number[] = [];
  private fresh = 0;
  hits = 0;
  misses = 0;

  constructor(
    readonly maxBytes: number,
    readonly blockSize: number,
    private readonly onEvict: (block: number) => void,
  ) {
    this.capacity = Math.max(0, Math.floor(maxBytes / blockSize));
    this.perSlab = Math.max(1, Math.floor(SLAB_BYTES / blockSize));
    this.blockOf = new Float64Array(0);
    this.prev = new Int32Array(0);
    this.next = new Int32Array(0);
    this.limit = this.capacity;
  }

  /** Hold at most this many bytes from now on (slabs allocated above it are kept until trim()). */
  setLimit(bytes: number): void {
    // Whole slabs only (a slab is what is allocated): less than one slab means no cache.
    this.limit = Math.max(0, Math.min(this.capacity, Math.floor(bytes / this.blockSize / this.perSlab) * this.perSlab));
    while (this.slotOf.size > this.limit && this.tail >= 0) this.free.push(this.evictTail());
  }

  /** Drop every cached block and give the slabs back (an idle volume holds no cache). */
  trim(): void {
    for (const block of this.slotOf.keys()) this.onEvict(block);
    this.slotOf.clear();
    this.slabs.length = 0;
    this.blockOf = new Float64Array(0);
    this.prev = new Int32Array(0);
    this.next = new Int32Array(0);
    this.free.length = 0;
    this.fresh = 0;
    this.head = -1;
    this.tail = -1;
  }

  /** Bytes of slabs held (what this cache costs in memory). */
  get slabBytes(): number {
    return this.slabs.length * this.perSlab * this.blockSize;
  }

  get bytes(): number {
    return this.slotOf.size * this.blockSize;
  }

  has(block: number): boolean {
    return this.slotOf.has(block);
  }

  /** Copy bytes [from, to) of the cached block to dst[at]; false on a miss. Counts hits and misses. */
  copyOut(block: number, dst: Uint8Array, at: number, from = 0, to = this.blockSize): boolean {
    const slot = this.slotOf.get(block);
    if (slot === undefined) {
      this.misses++;
      return false;
    }
    this.hits++;
    this.touch(slot);
    const o = this.offset(slot);
    copyBytes(this.slab(slot), dst, at, o + from, o + to);
    return true;
  }

  /** A view of the cached block (for a read-modify-write), or undefined. */
  view(block: number): Buffer | undefined {
    const slot = this.slotOf.get(block);
    if (slot === undefined) return undefined;
    this.touch(slot);
    const o = this.offset(slot);
    return this.slab(slot).subarray(o, o + this.blockSize);
  }

  /** Store a copy of src[start, start + blockSize); evicts the least recently used block if full. */
  set(block: number, src: Uint8Array, start = 0): boolean {
    if (this.limit === 0) return false;
    let slot = this.slotOf.get(block);
    if (slot === undefined) {
      slot = this.allocSlot();
      this.slotOf.set(block, slot);
      this.blockOf[slot] = block;
      this.linkHead(slot);
    } else {
      this.touch(slot);
    }
    copyBytes(src, this.slab(slot), this.offset(slot), start, start + this.blockSize);
    return true;
  }

  delete(block: number): void {
    const slot = this.slotOf.get(block);
    if (slot === undefined) return;
    this.slotOf.delete(block);
    this.unlink(slot);
    this.free.push(slot);
  }

  private allocSlot(): number {
    const f = this.free.pop();
    if (f !== undefined && this.slotOf.size < this.limit) return f;
    if (f !== undefined) this.free.push(f);
    if (this.fresh < this.capacity && this.slotOf.size < this.limit) {
      const s = this.fresh++;
      if (Math.floor(s / this.perSlab) >= this.slabs.length) this.slabs.push(Buffer.allocUnsafeSlow(this.perSlab * this.blockSize));
      if (s >= this.blockOf.length) this.growSlots(s + 1);
      return s;
    }
    return this.evictTail();
  }

  /** Room for `n` slots in the per-slot arrays (doubling, at most capacity). */
  private growSlots(n: number): void {
    const len = Math.min(this.capacity, Math.max(n, 2 * this.blockOf.length, this.perSlab));
    const grow = <T extends Float64Array | Int32Array>(old: T, make: (n: number) => T): T => {
      const a = make(len);
      a.set(old);
      return a;
    };
    this.blockOf = grow(this.blockOf, (k) => new Float64Array(k));
    this.prev = grow(this.prev, (k) => new Int32Array(k));
    this.next = grow(this.next, (k) => new Int32Array(k));
  }

  private evictTail(): number {
    const slot = this.tail;
    const block = this.blockOf[slot] as number;
    this.slotOf.delete(block);
    this.unlink(slot);
    this.onEvict(block);
    return slot;
  }

  private slab(slot: number): Buffer {
    return this.slabs[Math.floor(slot / this.perSlab)] as Buffer;
  }

  private offset(slot: number): number {
    return (slot % this.perSlab) * this.blockSize;
  }

  private touch(slot: number): void {
    if (this.head === slot) return;
    this.unlink(slot);
    this.linkHead(slot);
  }

  private linkHead(slot: number): void {
    this.prev[slot] = -1;
    this.next[slot] = this.head;
    if (this.head >= 0) this.prev[this.head] = slot;
    this.head = slot;
    if (this.tail < 0) this.tail = slot;
  }

  private unlink(slot: number): void {
    const p = this.prev[slot] as number;
    const n = this.next[slot] as number;
    if (p >= 0) this.next[p] = n;
    else this.head = n;
    if (n >= 0) this.prev[n] = p;
    else this.tail = p;
  }
}
