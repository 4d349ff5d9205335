import { copyBytes } from '../format/bytes';

const SLAB_BYTES = 4 * 1024 * 1024;

/**
 * Share of the cache a block read once may take (2Q's A1in): at least PROBATION_MIN_BYTES,
 * so it holds twice what readahead can have in flight (16 reads of 1 MiB, reader.ts) and
 * readahead data is not recycled before the request that wants it reads it.
 */
const PROBATION_MIN_BYTES = 32 * 1024 * 1024;
const PROBATION_FRACTION = 1 / 32;
/** Where a slot is linked: blocks read once (FIFO) or blocks read again (LRU). */
const PROBATION = 0;
const MAIN = 1;

/**
 * Read cache of persisted blocks, bounded in bytes and scan-resistant (2Q). Block
 * data lives in fixed slots carved from 4 MiB slabs (allocated as the cache fills),
 * the queues are doubly linked lists in typed arrays, and only the block -> slot
 * lookup is a Map, whose size is bounded by cacheBytes / blockSize. So a cache hit
 * or fill allocates nothing and leaves nothing for the garbage collector.
 * `onEvict` lets the index move a block from Cached back to Persisted.
 *
 * Admission: a block read for the first time goes into a small probation FIFO
 * that recycles its own slots once it is full; only a block read again after it
 * left the cache (its number is still in the ghost list) enters the main LRU,
 * which grows into new slabs up to the limit. A one-pass scan (a cold sequential
 * read, a backup, a guest's own readahead) therefore neither evicts the working
 * set nor grows the cache into fresh memory: on this kind of VM the first touch
 * of a new page costs ~4 ms of CPU per MiB, 10x the copy into a recycled slot, and
 * a VM disk's re-read blocks are the ones the guest's page cache did not keep. A
 * hit in probation does not promote (readahead then the request that wanted it
 * is one use, as in 2Q).
 */
export class BlockCache {
  private readonly slotOf = new Map<number, number>();
  private readonly slabs: Buffer[] = [];
  private readonly perSlab: number;
  private readonly capacity: number;
  private limit: number; // blocks held at once (<= capacity): a share of a store-wide budget
  private probationLimit: number; // blocks read once held at most (recycled beyond)
  // Per-slot arrays, grown with the slabs: a large cacheBytes (the default is set by
  // the memory budget) costs nothing until the cache really holds that much.
  private blockOf: Float64Array;
  private prev: Int32Array;
  private next: Int32Array;
  private queueOf: Uint8Array;
  // Per queue: most and least recently used slot, and how many slots are linked.
  private readonly head = Int32Array.of(-1, -1);
  private readonly tail = Int32Array.of(-1, -1);
  private readonly count = Int32Array.of(0, 0);
  private readonly free: number[] = [];
  private fresh = 0;
  /**
   * Ghost list: numbers of blocks that left the cache (or were read once and not
   * kept), newest last, at most `limit` of them: a ring of block numbers plus the
   * number -> insertion count lookup (a ring entry is stale once its block was
   * forgotten or ghosted again later). Costs ~100 bytes per entry, no block data.
   */
  private readonly ghost = new Map<number, number>();
  private ghostRing: Float64Array = new Float64Array(0);
  private ghostAdded = 0;
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
    this.queueOf = new Uint8Array(0);
    this.limit = this.capacity;
    this.probationLimit = this.probationFor(this.limit);
  }

  /** Hold at most this many bytes from now on (slabs allocated above it are kept until trim()). */
  setLimit(bytes: number): void {
    // Whole slabs only (a slab is what is allocated): less than one slab means no cache.
    this.limit = Math.max(0, Math.min(this.capacity, Math.floor(bytes / this.blockSize / this.perSlab) * this.perSlab));
    this.probationLimit = this.probationFor(this.limit);
    while (this.slotOf.size > this.limit) this.free.push(this.evictOne());
    while ((this.count[PROBATION] as number) > this.probationLimit) this.free.push(this.evictFrom(PROBATION));
    if (this.ghostRing.length > this.limit) this.ghostResize(this.limit);
  }

  /** Drop every cached block and give the slabs back (an idle volume holds no cache). */
  trim(): void {
    for (const block of this.slotOf.keys()) this.onEvict(block);
    this.slotOf.clear();
    this.slabs.length = 0;
    this.blockOf = new Float64Array(0);
    this.prev = new Int32Array(0);
    this.next = new Int32Array(0);
    this.queueOf = new Uint8Array(0);
    this.free.length = 0;
    this.fresh = 0;
    for (const q of [PROBATION, MAIN]) {
      this.head[q] = -1;
      this.tail[q] = -1;
      this.count[q] = 0;
    }
    // The ghost list holds no block data: kept, so blocks read before the trim are
    // still recognised as re-read.
  }

  /** Bytes of slabs held (what this cache costs in memory). */
  get slabBytes(): number {
    return this.slabs.length * this.perSlab * this.blockSize;
  }

  get bytes(): number {
    return this.slotOf.size * this.blockSize;
  }

  /** Bytes held by blocks read once (the probation queue). */
  get probationBytes(): number {
    return (this.count[PROBATION] as number) * this.blockSize;
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

  /**
   * Store a copy of src[start, start + blockSize): into the main LRU if the block was
   * read before (it is in the ghost list), else into probation, recycling its oldest
   * slot when probation is full. False if the cache holds nothing.
   */
  set(block: number, src: Uint8Array, start = 0): boolean {
    if (this.limit === 0) return false;
    let slot = this.slotOf.get(block);
    if (slot === undefined) {
      const queue = this.ghost.delete(block) ? MAIN : PROBATION;
      slot = this.allocSlot(queue);
      this.slotOf.set(block, slot);
      this.blockOf[slot] = block;
      this.linkHead(slot, queue);
    } else {
      this.touch(slot);
    }
    copyBytes(src, this.slab(slot), this.offset(slot), start, start + this.blockSize);
    return true;
  }

  delete(block: number): void {
    // A new version replaces the block: whether the old one was re-read says nothing.
    this.ghost.delete(block);
    const slot = this.slotOf.get(block);
    if (slot === undefined) return;
    this.slotOf.delete(block);
    this.unlink(slot);
    this.free.push(slot);
  }

  /** 2Q's share for blocks read once: see PROBATION_MIN_BYTES; at most a quarter of the cache. */
  private probationFor(limit: number): number {
    const min = Math.ceil(PROBATION_MIN_BYTES / this.blockSize);
    return Math.max(limit > 0 ? 1 : 0, Math.min(Math.max(min, Math.floor(limit * PROBATION_FRACTION)), Math.floor(limit / 4)));
  }

  /**
   * A slot for a new block of `queue`. Probation never grows beyond its share: once
   * full, its oldest slot is reused (memory touched before, cheap to copy into).
   * Otherwise a free slot, a fresh one while under the limit, or the victim of evictOne().
   */
  private allocSlot(queue: number): number {
    if (queue === PROBATION && (this.count[PROBATION] as number) >= this.probationLimit) return this.evictFrom(PROBATION);
    if (this.slotOf.size < this.limit) {
      const f = this.free.pop();
      if (f !== undefined) return f;
      if (this.fresh < this.capacity) {
        const s = this.fresh++;
        if (Math.floor(s / this.perSlab) >= this.slabs.length) this.slabs.push(Buffer.allocUnsafeSlow(this.perSlab * this.blockSize));
        if (s >= this.blockOf.length) this.growSlots(s + 1);
        return s;
      }
    }
    return this.evictOne();
  }

  /** Room for `n` slots in the per-slot arrays (doubling, at most capacity). */
  private growSlots(n: number): void {
    const len = Math.min(this.capacity, Math.max(n, 2 * this.blockOf.length, this.perSlab));
    const grow = <T extends Float64Array | Int32Array | Uint8Array>(old: T, make: (n: number) => T): T => {
      const a = make(len);
      a.set(old);
      return a;
    };
    this.blockOf = grow(this.blockOf, (k) => new Float64Array(k));
    this.prev = grow(this.prev, (k) => new Int32Array(k));
    this.next = grow(this.next, (k) => new Int32Array(k));
    this.queueOf = grow(this.queueOf, (k) => new Uint8Array(k));
  }

  /** The cache is full: take a slot from probation if it holds more than its share (or main is empty), else from main (2Q's reclaim). */
  private evictOne(): number {
    const fromProbation =
      (this.count[PROBATION] as number) > 0 && ((this.count[PROBATION] as number) > this.probationLimit || (this.count[MAIN] as number) === 0);
    return this.evictFrom(fromProbation ? PROBATION : MAIN);
  }

  /** Evict the oldest block of `queue` (its number goes to the ghost list) and return its slot. */
  private evictFrom(queue: number): number {
    const slot = this.tail[queue] as number;
    const block = this.blockOf[slot] as number;
    this.slotOf.delete(block);
    this.unlink(slot);
    this.onEvict(block);
    this.ghostAdd(block);
    return slot;
  }

  private ghostAdd(block: number): void {
    if (this.limit === 0) return;
    // Grown as used (doubling, up to `limit` entries): a large cache costs nothing here until blocks leave it.
    if (this.ghostAdded >= this.ghostRing.length && this.ghostRing.length < this.limit) {
      this.ghostResize(Math.min(this.limit, Math.max(1024, 2 * this.ghostRing.length)));
    }
    this.ghost.delete(block); // its older ring entry, if any, is stale from now on
    const n = this.ghostAdded++;
    const pos = n % this.ghostRing.length;
    const old = this.ghostRing[pos] as number;
    // The entry written here one lap ago is forgotten now, unless it was re-added since.
    if (n >= this.ghostRing.length && this.ghost.get(old) === n - this.ghostRing.length) this.ghost.delete(old);
    this.ghostRing[pos] = block;
    this.ghost.set(block, n);
  }

  /** A ring of `n` entries holding the newest `n` ghosts (the Map's order is the order they were added in). */
  private ghostResize(n: number): void {
    const live = [...this.ghost.keys()];
    this.ghost.clear();
    this.ghostRing = new Float64Array(n);
    this.ghostAdded = 0;
    for (const b of live.slice(Math.max(0, live.length - n))) {
      this.ghostRing[this.ghostAdded] = b;
      this.ghost.set(b, this.ghostAdded++);
    }
  }

  private slab(slot: number): Buffer {
    return this.slabs[Math.floor(slot / this.perSlab)] as Buffer;
  }

  private offset(slot: number): number {
    return (slot % this.perSlab) * this.blockSize;
  }

  /** A use of a cached block: moves it to the front of main; probation is FIFO (a second use soon after the first is the same use). */
  private touch(slot: number): void {
    const q = this.queueOf[slot] as number;
    if (q !== MAIN || this.head[MAIN] === slot) return;
    this.unlink(slot);
    this.linkHead(slot, MAIN);
  }

  private linkHead(slot: number, queue: number): void {
    this.queueOf[slot] = queue;
    this.prev[slot] = -1;
    this.next[slot] = this.head[queue] as number;
    if ((this.head[queue] as number) >= 0) this.prev[this.head[queue] as number] = slot;
    this.head[queue] = slot;
    if ((this.tail[queue] as number) < 0) this.tail[queue] = slot;
    this.count[queue] = (this.count[queue] as number) + 1;
  }

  private unlink(slot: number): void {
    const q = this.queueOf[slot] as number;
    const p = this.prev[slot] as number;
    const n = this.next[slot] as number;
    if (p >= 0) this.next[p] = n;
    else this.head[q] = n;
    if (n >= 0) this.prev[n] = p;
    else this.tail[q] = p;
    this.count[q] = (this.count[q] as number) - 1;
  }
}
