/**
 * The block index: one entry per block of a volume, in exactly one state.
 *
 *   Empty -> Hot -> Pending -> Persisted <-> Cached
 *             ^                    |
 *             +--------------------+  (a new write)
 *
 * Storage is paged typed arrays (4096 blocks per page, pages allocated on first
 * touch), never one JS object or Map entry per block: a 1 TiB volume has 2^28
 * blocks, and a Map tops out at 2^24 entries. Memory per touched page is
 * 4096 x 26 bytes = 104 KiB, i.e. 26 bytes per block of a touched 16 MiB region.
 *
 * Two things are kept per block, side by side:
 *  - the in-memory version (Hot/Pending): an arena slot holding the data;
 *  - the persisted location (chunk id, record offset, stored length, flags, seq).
 * A Hot block keeps its old persisted location, because until the new version is
 * durable in a chunk, the old chunk copy is what a crash falls back to, and the
 * checkpoint must keep recording it.
 */
export const EMPTY = 0;
export const HOT = 1;
export const PENDING = 2;
export const PERSISTED = 3;
export const CACHED = 4;
export type BlockState = typeof EMPTY | typeof HOT | typeof PENDING | typeof PERSISTED | typeof CACHED;
export const STATE_NAMES = ['empty', 'hot', 'pending', 'persisted', 'cached'] as const;

export const PAGE_SHIFT = 12;
export const PAGE_BLOCKS = 1 << PAGE_SHIFT;
const PAGE_MASK = PAGE_BLOCKS - 1;
export const INDEX_BYTES_PER_BLOCK = 1 + 4 + 4 + 4 + 4 + 1 + 8;

class Page {
  readonly state = new Uint8Array(PAGE_BLOCKS);
  readonly slot = new Int32Array(PAGE_BLOCKS).fill(-1);
  readonly chunk = new Uint32Array(PAGE_BLOCKS);
  readonly off = new Uint32Array(PAGE_BLOCKS);
  readonly len = new Uint32Array(PAGE_BLOCKS);
  readonly flags = new Uint8Array(PAGE_BLOCKS);
  readonly pseq = new Float64Array(PAGE_BLOCKS); // 0 = no persisted location
}

export interface PersistedLocation {
  chunk: number;
  off: number;
  len: number;
  flags: number;
  seq: number;
}

/** Blocks per state, for the stats (Empty is not counted: it is every block never written). */
export interface StateCounts {
  hot: number;
  pending: number;
  persisted: number;
  cached: number;
}

export class BlockIndex {
  private readonly pages = new Map<number, Page>();
  /** Live block count per chunk id, so fully superseded chunks can be deleted. */
  private readonly chunkRefs = new Map<number, number>();
  /** Chunks whose live count reached 0 since the last takeDeadChunks() (may have duplicates). */
  private deadCandidates: number[] = [];
  /** Blocks per state, indexed by state; kept up to date by every transition. */
  private readonly counts = new Float64Array(5);

  constructor(readonly blockCount: number) {}

  private page(block: number): Page | undefined {
    return this.pages.get(Math.floor(block / PAGE_BLOCKS));
  }

  private pageForWrite(block: number): Page {
    const n = Math.floor(block / PAGE_BLOCKS);
    let p = this.pages.get(n);
    if (!p) {
      p = new Page();
      this.pages.set(n, p);
    }
    return p;
  }

  state(block: number): BlockState {
    const p = this.page(block);
    return p ? (p.state[block & PAGE_MASK] as BlockState) : EMPTY;
  }

  /** Arena slot of the in-memory version, or -1. */
  slot(block: number): number {
    const p = this.page(block);
    return p ? (p.slot[block & PAGE_MASK] as number) : -1;
  }

  /** Persisted location, or null if the block has never reached a chunk. Allocates: not for per-block hot loops. */
  location(block: number): PersistedLocation | null {
    const p = this.page(block);
    const i = block & PAGE_MASK;
    if (!p || p.pseq[i] === 0) return null;
    return { chunk: p.chunk[i] as number, off: p.off[i] as number, len: p.len[i] as number, flags: p.flags[i] as number, seq: p.pseq[i] as number };
  }

  persistedSeq(block: number): number {
    const p = this.page(block);
    return p ? (p.pseq[block & PAGE_MASK] as number) : 0;
  }

  persistedChunk(block: number): number {
    return (this.page(block)?.chunk[block & PAGE_MASK] as number | undefined) ?? 0;
  }

  persistedOff(block: number): number {
    return (this.page(block)?.off[block & PAGE_MASK] as number | undefined) ?? 0;
  }

  persistedLen(block: number): number {
    return (this.page(block)?.len[block & PAGE_MASK] as number | undefined) ?? 0;
  }

  private setState(p: Page, i: number, to: BlockState): void {
    const c = this.counts;
    const from = p.state[i] as number;
    c[from] = (c[from] as number) - 1;
    c[to] = (c[to] as number) + 1;
    p.state[i] = to;
  }

  /** A new version in arena slot `slot`; returns the previous slot (-1 if none) for the caller to release. */
  setHot(block: number, slot: number, pending = false): number {
    const p = this.pageForWrite(block);
    const i = block & PAGE_MASK;
    const prev = p.slot[i] as number;
    p.slot[i] = slot;
    this.setState(p, i, pending ? PENDING : HOT);
    return prev;
  }

  /** The WAL holding this version is synced. */
  markPending(block: number, slot: number): void {
    const p = this.page(block);
    const i = block & PAGE_MASK;
    if (p && p.slot[i] === slot && p.state[i] === HOT) this.setState(p, i, PENDING);
  }

  /**
   * Record a durable chunk location (after the map commit is durable). Stale
   * locations (seq not newer than the current one) are ignored, per block. If the
   * in-memory version is `slot`, it is now redundant: the block drops to Persisted
   * and true is returned so the caller frees the slot.
   */
  setPersisted(block: number, seq: number, chunk: number, off: number, len: number, flags: number, slot = -1): boolean {
    const p = this.pageForWrite(block);
    const i = block & PAGE_MASK;
    if ((p.pseq[i] as number) >= seq) return false;
    if ((p.pseq[i] as number) > 0) this.unref(p.chunk[i] as number);
    p.pseq[i] = seq;
    p.chunk[i] = chunk;
    p.off[i] = off;
    p.len[i] = len;
    p.flags[i] = flags;
    this.chunkRefs.set(chunk, (this.chunkRefs.get(chunk) ?? 0) + 1);
    if (slot >= 0 && p.slot[i] === slot) {
      p.slot[i] = -1;
      this.setState(p, i, PERSISTED);
      return true;
    }
    if ((p.slot[i] as number) < 0) this.setState(p, i, PERSISTED);
    return false;
  }

  private unref(chunk: number): void {
    const n = (this.chunkRefs.get(chunk) ?? 0) - 1;
    if (n > 0) this.chunkRefs.set(chunk, n);
    else {
      this.chunkRefs.set(chunk, 0);
      this.deadCandidates.push(chunk);
    }
  }

  /**
   * Chunk ids whose live block count dropped to 0 since the last call: nothing in
   * the index points into them any more. The index forgets them (the caller
   * deletes the objects). A chunk that came back to life meanwhile is not returned.
   */
  takeDeadChunks(): number[] {
    if (this.deadCandidates.length === 0) return [];
    const out: number[] = [];
    for (const id of this.deadCandidates) {
      if (this.chunkRefs.get(id) !== 0) continue; // revived, or a duplicate already taken
      this.chunkRefs.delete(id);
      out.push(id);
    }
    this.deadCandidates = [];
    return out;
  }

  /** Blocks of the index that point into chunk `id` (0 for an unknown or dead chunk). */
  liveBlocks(chunk: number): number {
    return this.chunkRefs.get(chunk) ?? 0;
  }

  /** Visit every chunk at least one block points into, with its live block count. */
  forEachLiveChunk(fn: (chunk: number, liveBlocks: number) => void): void {
    for (const [id, n] of this.chunkRefs) if (n > 0) fn(id, n);
  }

  /** Blocks in each state (O(1): the counts are kept by every transition). */
  stateCounts(): StateCounts {
    const c = this.counts;
    return { hot: c[HOT] as number, pending: c[PENDING] as number, persisted: c[PERSISTED] as number, cached: c[CACHED] as number };
  }

  setCached(block: number, cached: boolean): void {
    const p = this.page(block);
    const i = block & PAGE_MASK;
    if (!p) return;
    const s = p.state[i];
    if (cached && s === PERSISTED) this.setState(p, i, CACHED);
    else if (!cached && s === CACHED) this.setState(p, i, PERSISTED);
  }

  /** Page numbers in ascending order (for visiting the index in pieces). */
  pageKeys(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b);
  }

  /** Visit every block of page `k` that has a persisted location, in block order. */
  forEachPersistedIn(k: number, fn: (block: number, seq: number, chunk: number, off: number, len: number, flags: number) => void): void {
    const p = this.pages.get(k);
    if (!p) return;
    const base = k * PAGE_BLOCKS;
    for (let i = 0; i < PAGE_BLOCKS; i++) {
      const s = p.pseq[i] as number;
      if (s > 0) fn(base + i, s, p.chunk[i] as number, p.off[i] as number, p.len[i] as number, p.flags[i] as number);
    }
  }

  /** Visit every block that has a persisted location, in block order. */
  forEachPersisted(fn: (block: number, seq: number, chunk: number, off: number, len: number, flags: number) => void): void {
    for (const k of this.pageKeys()) this.forEachPersistedIn(k, fn);
  }

  countPersisted(): number {
    let n = 0;
    for (const c of this.chunkRefs.values()) n += c;
    return n;
  }

  get pageCount(): number {
    return this.pages.size;
  }

  get memoryBytes(): number {
    return this.pages.size * PAGE_BLOCKS * INDEX_BYTES_PER_BLOCK;
  }
}
