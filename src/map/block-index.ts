import { VbfsError } from '../errors';
import { RECORD_HEADER } from '../format/block-record';
import { SEGMENT_HEADER } from '../format/segment-header';
import { NumTable } from './num-table';

/**
 * The block index: every block of a volume in exactly one state.
 *
 *   Empty -> Hot -> Pending -> Persisted <-> Cached
 *             ^                    |
 *             +--------------------+  (a new write)
 *
 * Memory follows what was written, never the volume size (a 16 TiB volume has
 * 2^32 blocks; nothing here is sized by that), and no block gets a JS object or
 * Map entry:
 *
 *  - Persisted locations are extents: a run of blocks whose records lie back to
 *    back in one chunk, with consecutive seqs and one stored length and flags. One
 *    extent is 24 bytes in a Uint32Array leaf, whether it holds 1 block (scattered
 *    writes) or a chunk's worth (sequential writes). Leaves hold up to LEAF_MAX
 *    extents sorted by first block; they grow in small steps and split in two when
 *    full (a B+-tree of depth two: a sorted array of leaves per 2^32 blocks, binary
 *    searched). Lookups are O(log n), O(1) when they follow the previous one (a
 *    cursor), and a contiguous run is one extent: runLength().
 *  - Hot and Pending blocks (only those in the write buffer have an arena slot)
 *    live in an open-addressing typed-array hash, bounded by the write buffer.
 *  - Cached blocks: a second such hash, bounded by the read cache.
 *  - Live blocks and bytes per chunk: a third one, one entry per chunk.
 *
 * A trimmed (or zero-written) block is Empty at once: its hot entry holds no
 * arena slot but the zero record's seq (v1 = -seq), until the flusher commits its
 * map tombstone (dropTrimmed); the old location stays meanwhile, like a Hot
 * block's, for the same reason.
 *
 * A Hot block keeps its old persisted location, because until the new version is
 * durable in a chunk, the old chunk copy is what a crash falls back to, and the
 * checkpoint must keep recording it.
 *
 * Why one file of ~700 lines: the extent leaves, the three hashes and the state
 * counters change together on every transition; split apart, each piece would have
 * to expose the invariants this class exists to keep (NumTable, the hash, is apart).
 */
export const EMPTY = 0;
export const HOT = 1;
export const PENDING = 2;
export const PERSISTED = 3;
export const CACHED = 4;
export type BlockState = typeof EMPTY | typeof HOT | typeof PENDING | typeof PERSISTED | typeof CACHED;
export const STATE_NAMES = ['empty', 'hot', 'pending', 'persisted', 'cached'] as const;

/*
 * Extent layout, 6 u32 words (24 bytes):
 *   0 first block (low 32 bits; the leaf's bucket holds the high bits)
 *   1 chunk id
 *   2 offset of the first block's record in the chunk
 *   3 stored length of each record (bits 0..16) | (block count - 1) << 17
 *   4 seq of the first block, low 32 bits
 *   5 seq high 21 bits (seqs stay below 2^53) | flags << 21
 * Block k of the extent has seq + k and its record at offset + k * (header + len).
 */
const STRIDE = 6;
/** Extents per leaf: a split copies at most this many, an insert moves half of it on average. */
export const LEAF_MAX = 256;
const LEAF_MIN_CAP = 8;
const LEN_BITS = 17;
const LEN_MASK = (1 << LEN_BITS) - 1;
/** Blocks per extent (15 bits); longer runs take more extents (a 4 MiB chunk holds 1024 4 KiB blocks). */
export const MAX_RUN = 1 << (32 - LEN_BITS);
export const MAX_LEN = LEN_MASK;
const SEQ_HI_MASK = (1 << 21) - 1;
const TWO32 = 4294967296;
/** Bytes a typed array and its leaf object cost beyond their elements (V8 object, buffer and backing-store headers). */
const LEAF_OVERHEAD = 200;

/** Hot-table v2 bits: the state (low 3 bits), and whether the block also has a persisted location. */
const HAS_LOC = 8;

class Leaf {
  constructor(
    public a: Uint32Array,
    public n: number,
  ) {}
}

/** The leaves of one 2^32-block stretch of the volume. */
class Bucket {
  readonly leaves: Leaf[] = [];
  constructor(readonly hi: number) {}
}

export interface PersistedLocation {
  chunk: number;
  off: number;
  len: number;
  flags: number;
  seq: number;
}

export interface StateCounts {
  hot: number;
  pending: number;
  persisted: number;
  cached: number;
}

/** One extent, as visitExtents hands it out. */
export type ExtentVisitor = (block: number, count: number, seq: number, chunk: number, off: number, len: number, flags: number) => void;

const run = (a: Uint32Array, j: number): number => ((a[j + 3] as number) >>> LEN_BITS) + 1;
const lenOf = (a: Uint32Array, j: number): number => (a[j + 3] as number) & LEN_MASK;
const seqOf = (a: Uint32Array, j: number): number => (a[j + 4] as number) + ((a[j + 5] as number) & SEQ_HI_MASK) * TWO32;
const flagsOf = (a: Uint32Array, j: number): number => (a[j + 5] as number) >>> 21;

export class BlockIndex {
  private readonly buckets = new Map<number, Bucket>();
  private sortedHis: number[] | null = [];
  /** block -> v1 arena slot, v2 state | HAS_LOC */
  private readonly hot = new NumTable();
  /** block -> present (Cached: the read cache holds the persisted version) */
  private readonly cached = new NumTable();
  /** chunk id -> v1 live blocks, v2 live bytes (record header + stored payload) */
  private readonly chunkRefs = new NumTable();
  /**
   * chunk id -> v1 bytes of the records the chunk object holds (live or not), v2 their
   * count: every record the index ever pointed at in it, raised by noteChunkRecords()
   * to what the object is known to hold. With the totals below, the compactor's
   * "stored vs live" figures cost O(1).
   */
  private readonly chunkStored = new NumTable();
  private liveRecordBytes = 0;
  private storedRecordBytes = 0;
  private dead: number[] = [];
  private persistedBlocks = 0;
  private extents = 0;
  private hotCount = 0;
  private pendingCount = 0;
  private hotWithLoc = 0;
  /** Hot entries that are zero versions (trimmed, tombstone not yet committed). */
  private zeroCount = 0;
  private leafBytes = 0;
  private leafCount = 0;

  // Position found by the last lookup: bucket, leaf, and the last extent starting
  // at or before the block (pe = -1 / pl = -1 when none). Valid while gen is unchanged.
  private gen = 0;
  private pgen = -1;
  private pb: Bucket | null = null;
  private phi = -1;
  private pl = -1;
  private pe = -1;

  constructor(
    readonly blockCount: number,
    private readonly recordHeader = RECORD_HEADER,
  ) {}

  // ------------------------------------------------------------- states

  state(block: number): BlockState {
    if (this.hot.size > 0) {
      const h = this.hot.find(block);
      if (h >= 0) return ((this.hot.v2[h] as number) & 7) as BlockState;
    }
    if (!this.lookup(block)) return EMPTY;
    return this.cached.size > 0 && this.cached.find(block) >= 0 ? CACHED : PERSISTED;
  }

  /** Arena slot of the in-memory version, or -1 (none, or a zero version). */
  slot(block: number): number {
    const h = this.hot.find(block);
    return h >= 0 ? Math.max(-1, this.hot.v1[h] as number) : -1;
  }

  /** Zero versions whose map tombstone is not committed yet. */
  get pendingZeros(): number {
    return this.zeroCount;
  }

  /**
   * A zero record with `seq` made the block Empty (a trim or a full-block zero
   * write): no arena slot; the old location stays until dropTrimmed. Returns the
   * previous slot (-1 if none) for the caller to release.
   */
  setZero(block: number, seq: number): number {
    let h = this.hot.find(block);
    let prev = -1;
    if (h >= 0) {
      const v = this.hot.v1[h] as number;
      if (v >= 0) {
        prev = v;
        this.countState((this.hot.v2[h] as number) & 7, -1);
        this.zeroCount++;
      }
    } else {
      const loc = this.lookup(block);
      if (loc) this.hotWithLoc++;
      if (this.cached.size > 0) this.cached.remove(block);
      h = this.hot.insert(block);
      this.hot.v2[h] = loc ? HAS_LOC : 0;
      this.zeroCount++;
    }
    this.hot.v1[h] = -seq;
    this.hot.v2[h] = ((this.hot.v2[h] as number) & HAS_LOC) | EMPTY;
    return prev;
  }

  /** The block's current version is the zero version `seq` (not superseded since). */
  isZeroVersion(block: number, seq: number): boolean {
    const h = this.hot.find(block);
    return h >= 0 && this.hot.v1[h] === -seq;
  }

  /**
   * The map tombstone of the zero version `seq` is durable (or was loaded): any
   * older persisted location goes (its chunk loses a live block, and a chunk left
   * with none is dead), and the zero version's hot entry ends. A newer location
   * or version is left alone. True when a location was dropped.
   */
  dropTrimmed(block: number, seq: number): boolean {
    let dropped = false;
    if (this.lookup(block)) {
      const a = (this.pb as Bucket).leaves[this.pl]?.a as Uint32Array;
      const j = this.pe * STRIDE;
      if (seqOf(a, j) + (block - this.phi * TWO32 - (a[j] as number)) < seq) {
        this.unmap(block);
        this.persistedBlocks--;
        if (this.cached.size > 0) this.cached.remove(block);
        dropped = true;
      }
    }
    const h = this.hot.size > 0 ? this.hot.find(block) : -1;
    if (h < 0) return dropped;
    const f = this.hot.v2[h] as number;
    if (this.hot.v1[h] === -seq) {
      if (f & HAS_LOC) this.hotWithLoc--;
      this.zeroCount--;
      this.hot.removeAt(h);
    } else if (dropped && f & HAS_LOC) {
      this.hot.v2[h] = f & ~HAS_LOC;
      this.hotWithLoc--;
    }
    return dropped;
  }

  /** Blocks in each state, kept as they change (O(1)). */
  stateCounts(): StateCounts {
    return {
      hot: this.hotCount,
      pending: this.pendingCount,
      persisted: this.persistedBlocks - this.hotWithLoc - this.cached.size,
      cached: this.cached.size,
    };
  }

  /** A new version in arena slot `slot`; returns the previous slot (-1 if none) for the caller to release. */
  setHot(block: number, slot: number, pending = false): number {
    let h = this.hot.find(block);
    let prev = -1;
    if (h >= 0) {
      prev = this.hot.v1[h] as number;
      if (prev >= 0) this.countState((this.hot.v2[h] as number) & 7, -1);
      else this.zeroCount--; // a zero version superseded: no slot to release
      prev = Math.max(-1, prev);
    } else {
      const loc = this.lookup(block);
      if (loc) this.hotWithLoc++;
      if (this.cached.size > 0) this.cached.remove(block);
      h = this.hot.insert(block);
      this.hot.v2[h] = loc ? HAS_LOC : 0;
    }
    const st = pending ? PENDING : HOT;
    this.hot.v1[h] = slot;
    this.hot.v2[h] = ((this.hot.v2[h] as number) & HAS_LOC) | st;
    this.countState(st, 1);
    return prev;
  }

  /** The WAL holding this version is synced. */
  markPending(block: number, slot: number): void {
    const h = this.hot.find(block);
    if (h < 0 || this.hot.v1[h] !== slot || ((this.hot.v2[h] as number) & 7) !== HOT) return;
    this.hot.v2[h] = ((this.hot.v2[h] as number) & HAS_LOC) | PENDING;
    this.hotCount--;
    this.pendingCount++;
  }

  private countState(st: number, d: number): void {
    if (st === HOT) this.hotCount += d;
    else this.pendingCount += d;
  }

  setCached(block: number, cached: boolean): void {
    if (cached) {
      if ((this.hot.size === 0 || this.hot.find(block) < 0) && this.lookup(block)) this.cached.insert(block);
    } else if (this.cached.size > 0) {
      this.cached.remove(block);
    }
  }

  // ------------------------------------------------------------- persisted locations

  /** Persisted location, or null if the block has never reached a chunk. Allocates: not for per-block hot loops. */
  location(block: number): PersistedLocation | null {
    if (!this.lookup(block)) return null;
    return {
      chunk: this.persistedChunk(block),
      off: this.persistedOff(block),
      len: this.persistedLen(block),
      flags: this.persistedFlags(block),
      seq: this.persistedSeq(block),
    };
  }

  /** The leaf words holding the block's extent (at word pe * STRIDE), or null. */
  private at(block: number): Uint32Array | null {
    if (!this.lookup(block)) return null;
    return (this.pb as Bucket).leaves[this.pl]?.a ?? null;
  }

  persistedSeq(block: number): number {
    const a = this.at(block);
    if (!a) return 0;
    const j = this.pe * STRIDE;
    return seqOf(a, j) + (block - this.phi * TWO32 - (a[j] as number));
  }

  persistedChunk(block: number): number {
    const a = this.at(block);
    return a ? (a[this.pe * STRIDE + 1] as number) : 0;
  }

  persistedOff(block: number): number {
    const a = this.at(block);
    if (!a) return 0;
    const j = this.pe * STRIDE;
    return (a[j + 2] as number) + (block - this.phi * TWO32 - (a[j] as number)) * (this.recordHeader + lenOf(a, j));
  }

  persistedLen(block: number): number {
    const a = this.at(block);
    return a ? lenOf(a, this.pe * STRIDE) : 0;
  }

  persistedFlags(block: number): number {
    const a = this.at(block);
    return a ? flagsOf(a, this.pe * STRIDE) : 0;
  }

  /**
   * Blocks from `block` on whose records follow each other in one chunk, as one
   * extent records them (0 if the block has no persisted location). The reader
   * fetches such a run with one ranged read.
   */
  runLength(block: number): number {
    const a = this.at(block);
    if (!a) return 0;
    const j = this.pe * STRIDE;
    return (a[j] as number) + run(a, j) - (block - this.phi * TWO32);
  }

  /** a and b (= a + 1) are adjacent records of the same chunk: one backend read covers both. */
  contiguous(a: number, b: number): boolean {
    if (!this.lookup(a)) return false;
    const w = (this.pb as Bucket).leaves[this.pl]?.a as Uint32Array;
    const j = this.pe * STRIDE;
    const lo = b - this.phi * TWO32;
    if (lo >= (w[j] as number) && lo < (w[j] as number) + run(w, j)) return true; // same extent
    const chunk = w[j + 1] as number;
    const end = (w[j + 2] as number) + (a - this.phi * TWO32 - (w[j] as number) + 1) * (this.recordHeader + lenOf(w, j));
    return this.lookup(b) && this.persistedChunk(b) === chunk && this.persistedOff(b) === end;
  }

  /**
   * Record a durable chunk location (after the map commit is durable). Stale
   * locations (seq not newer than the current one) are ignored, per block. If the
   * in-memory version is `slot`, it is now redundant: the block drops to Persisted
   * and true is returned so the caller frees the slot.
   */
  setPersisted(block: number, seq: number, chunk: number, off: number, len: number, flags: number, slot = -1): boolean {
    if (len > LEN_MASK || flags > 0xff || !(seq > 0 && seq < 2 ** 53) || block >= this.blockCount) {
      throw new VbfsError('VBFS_INVALID_ARGUMENT', `block index: location out of range (block ${block}, seq ${seq}, len ${len}, flags ${flags})`);
    }
    if (this.lookup(block)) {
      const a = (this.pb as Bucket).leaves[this.pl]?.a as Uint32Array;
      const j = this.pe * STRIDE;
      // An equal seq is the same version copied elsewhere (the compactor's copy,
      // committed after the original): the later location wins, the old chunk may go.
      const cur = seqOf(a, j) + (block - this.phi * TWO32 - (a[j] as number));
      if (cur > seq || (cur === seq && this.persistedChunk(block) === chunk)) return false;
      this.lookup(block);
      this.unmap(block);
      this.lookup(block);
    } else {
      this.persistedBlocks++;
    }
    this.put(block, seq, chunk, off, len, flags);
    this.ref(chunk, 1, this.recordHeader + len);
    if (this.cached.size > 0) this.cached.remove(block);
    const h = this.hot.size > 0 ? this.hot.find(block) : -1;
    if (h < 0) return false;
    const f = this.hot.v2[h] as number;
    if (slot >= 0 && this.hot.v1[h] === slot) {
      if (f & HAS_LOC) this.hotWithLoc--;
      this.countState(f & 7, -1);
      this.hot.removeAt(h);
      return true;
    }
    if (!(f & HAS_LOC)) {
      this.hot.v2[h] = f | HAS_LOC;
      this.hotWithLoc++;
    }
    return false;
  }

  // ------------------------------------------------------------- chunks

  private ref(chunk: number, blocks: number, bytes: number): void {
    const i = this.chunkRefs.insert(chunk);
    this.chunkRefs.v1[i] = (this.chunkRefs.v1[i] as number) + blocks;
    this.chunkRefs.v2[i] = (this.chunkRefs.v2[i] as number) + bytes;
    const k = this.chunkStored.insert(chunk);
    this.chunkStored.v1[k] = (this.chunkStored.v1[k] as number) + bytes;
    this.chunkStored.v2[k] = (this.chunkStored.v2[k] as number) + blocks;
    this.liveRecordBytes += bytes;
    this.storedRecordBytes += bytes;
  }

  private unref(chunk: number, blocks: number, bytes: number): void {
    const i = this.chunkRefs.find(chunk);
    if (i < 0) return;
    const left = (this.chunkRefs.v1[i] as number) - blocks;
    if (left > 0) {
      this.chunkRefs.v1[i] = left;
      this.chunkRefs.v2[i] = (this.chunkRefs.v2[i] as number) - bytes;
      this.liveRecordBytes -= bytes;
      return;
    }
    this.liveRecordBytes -= this.chunkRefs.v2[i] as number;
    this.chunkRefs.removeAt(i);
    const k = this.chunkStored.find(chunk);
    if (k >= 0) {
      this.storedRecordBytes -= this.chunkStored.v1[k] as number;
      this.chunkStored.removeAt(k);
    }
    this.dead.push(chunk);
  }

  /**
   * The chunk object holds `records` records taking `bytes` (its size less the
   * header): from the flusher and the compactor, which built it, or from a look at
   * its header after open (the map only names live records). Only ever raises what
   * is known; ignored for a chunk with no live block.
   */
  noteChunkRecords(chunk: number, records: number, bytes: number): void {
    const k = this.chunkStored.find(chunk);
    if (k < 0 || (this.chunkStored.v2[k] as number) >= records) return;
    const was = this.chunkStored.v1[k] as number;
    if (bytes > was) {
      this.storedRecordBytes += bytes - was;
      this.chunkStored.v1[k] = bytes;
    }
    this.chunkStored.v2[k] = records;
  }

  /** Records the index knows the chunk holds, and their bytes (0, 0 for a dead or unknown chunk). */
  chunkStoredRecords(id: number): { records: number; bytes: number } {
    const k = this.chunkStored.find(id);
    return k < 0 ? { records: 0, bytes: 0 } : { records: this.chunkStored.v2[k] as number, bytes: this.chunkStored.v1[k] as number };
  }

  /**
   * Bytes of the live records in chunks (header + stored payload), and bytes of the
   * chunk objects that hold them (headers and dead records too), kept as blocks
   * move (O(1)). A chunk whose every block is superseded no longer counts.
   */
  space(): { liveBytes: number; storedBytes: number; chunks: number } {
    const chunks = this.chunkRefs.size;
    return { liveBytes: this.liveRecordBytes, storedBytes: this.storedRecordBytes + chunks * SEGMENT_HEADER, chunks };
  }

  /**
   * The compactor's copy of a block (same seq) at a new place, taken only if the
   * block still has that version at `from` (a block overwritten or flushed since
   * keeps its newer location). Keeps the read-cache flag (the data is the same).
   */
  relocate(block: number, seq: number, from: number, chunk: number, off: number, len: number, flags: number): boolean {
    if (!this.lookup(block) || this.persistedChunk(block) !== from || this.persistedSeq(block) !== seq) return false;
    const wasCached = this.cached.size > 0 && this.cached.find(block) >= 0;
    this.setPersisted(block, seq, chunk, off, len, flags);
    if (wasCached) this.setCached(block, true);
    return true;
  }

  /** Chunk ids whose live block count dropped to 0 since the last call; the index forgets them. */
  takeDeadChunks(): number[] {
    const d = this.dead;
    this.dead = [];
    return d;
  }

  /** Live blocks in a chunk and the bytes their records take in it (0, 0 for a dead or unknown chunk). */
  chunkLive(id: number): { blocks: number; bytes: number } {
    const i = this.chunkRefs.find(id);
    return i < 0 ? { blocks: 0, bytes: 0 } : { blocks: this.chunkRefs.v1[i] as number, bytes: this.chunkRefs.v2[i] as number };
  }

  /** Live blocks in a chunk (0 for a dead or unknown one). */
  liveBlocks(chunk: number): number {
    const i = this.chunkRefs.find(chunk);
    return i < 0 ? 0 : (this.chunkRefs.v1[i] as number);
  }

  /** Every chunk that holds live blocks. */
  forEachLiveChunk(fn: (id: number, blocks: number, bytes: number) => void): void {
    this.chunkRefs.forEach(fn);
  }

  // ------------------------------------------------------------- visiting

  /**
   * Visit up to `max` extents in block order, starting with the first one that
   * starts at or after `from`. Returns where to resume (-1 when all were seen), so
   * the checkpoint streams the map in pieces with event-loop turns in between.
   */
  visitExtents(from: number, max: number, fn: ExtentVisitor): number {
    let seen = 0;
    for (const hi of this.his()) {
      if ((hi + 1) * TWO32 <= from) continue;
      const b = this.buckets.get(hi) as Bucket;
      const base = hi * TWO32;
      const lo = Math.max(0, from - base);
      let li = lo === 0 ? 0 : Math.max(0, this.leafFor(b, lo));
      for (; li < b.leaves.length; li++) {
        const leaf = b.leaves[li] as Leaf;
        const a = leaf.a;
        for (let e = 0; e < leaf.n; e++) {
          const j = e * STRIDE;
          if ((a[j] as number) < lo) continue;
          if (seen === max) return base + (a[j] as number);
          fn(base + (a[j] as number), run(a, j), seqOf(a, j), a[j + 1] as number, a[j + 2] as number, lenOf(a, j), flagsOf(a, j));
          seen++;
        }
      }
    }
    return -1;
  }

  /** Visit every block that has a persisted location, in block order. */
  forEachPersisted(fn: (block: number, seq: number, chunk: number, off: number, len: number, flags: number) => void): void {
    const stride = this.recordHeader;
    this.visitExtents(0, Infinity, (block, count, seq, chunk, off, len, flags) => {
      for (let k = 0; k < count; k++) fn(block + k, seq + k, chunk, off + k * (stride + len), len, flags);
    });
  }

  countPersisted(): number {
    return this.persistedBlocks;
  }

  get extentCount(): number {
    return this.extents;
  }

  /** Bytes this index holds (leaves with their headers, the three hash tables). */
  get memoryBytes(): number {
    return (
      this.leafBytes +
      this.leafCount * (LEAF_OVERHEAD + 8) +
      this.buckets.size * 64 +
      this.hot.memoryBytes +
      this.cached.memoryBytes +
      this.chunkRefs.memoryBytes +
      this.chunkStored.memoryBytes
    );
  }

  // ------------------------------------------------------------- the extent tree

  private his(): number[] {
    if (!this.sortedHis) this.sortedHis = [...this.buckets.keys()].sort((x, y) => x - y);
    return this.sortedHis;
  }

  /** Last leaf whose first extent starts at or before lo, or -1. */
  private leafFor(b: Bucket, lo: number): number {
    const leaves = b.leaves;
    let l = 0;
    let h = leaves.length - 1;
    if (h < 0 || ((leaves[0] as Leaf).a[0] as number) > lo) return -1;
    while (l < h) {
      const m = (l + h + 1) >> 1;
      if (((leaves[m] as Leaf).a[0] as number) <= lo) l = m;
      else h = m - 1;
    }
    return l;
  }

  /** Last extent of the leaf starting at or before lo (the leaf's first one starts at or before it). */
  private entryFor(leaf: Leaf, lo: number): number {
    const a = leaf.a;
    let l = 0;
    let h = leaf.n - 1;
    while (l < h) {
      const m = (l + h + 1) >> 1;
      if ((a[m * STRIDE] as number) <= lo) l = m;
      else h = m - 1;
    }
    return l;
  }

  /**
   * Find the extent holding `block`: true if there is one. Either way, leaves
   * pb/phi/pl/pe at the last extent starting at or before the block (pl = -1: the
   * block lies before every extent of its bucket; pb = null: no bucket).
   */
  private lookup(block: number): boolean {
    const hi = Math.floor(block / TWO32);
    const lo = block - hi * TWO32;
    if (this.pgen === this.gen && this.phi === hi && this.pl >= 0) {
      const leaf = (this.pb as Bucket).leaves[this.pl] as Leaf;
      const a = leaf.a;
      const j = this.pe * STRIDE;
      const s = a[j] as number;
      if (lo >= s) {
        if (lo < s + run(a, j)) return true;
        if (this.pe + 1 < leaf.n) {
          const s2 = a[j + STRIDE] as number;
          if (lo < s2) return false; // in the gap before the next extent
          if (lo < s2 + run(a, j + STRIDE)) {
            this.pe++;
            return true;
          }
        } else {
          // Past the leaf's last extent: in the gap before the next leaf (or after all).
          const next = (this.pb as Bucket).leaves[this.pl + 1];
          if (!next || lo < (next.a[0] as number)) return false;
        }
      }
    }
    this.pgen = this.gen;
    this.phi = hi;
    const b = this.buckets.get(hi) ?? null;
    this.pb = b;
    this.pl = -1;
    this.pe = -1;
    if (!b) return false;
    const li = this.leafFor(b, lo);
    if (li < 0) return false;
    const leaf = b.leaves[li] as Leaf;
    const e = this.entryFor(leaf, lo);
    this.pl = li;
    this.pe = e;
    const j = e * STRIDE;
    return lo < (leaf.a[j] as number) + run(leaf.a, j);
  }

  /** Take one block out of the extent holding it (lookup(block) just returned true). */
  private unmap(block: number): void {
    const b = this.pb as Bucket;
    const li = this.pl;
    const e = this.pe;
    const leaf = b.leaves[li] as Leaf;
    const a = leaf.a;
    const j = e * STRIDE;
    const lo = block - b.hi * TWO32;
    const s = a[j] as number;
    const n = run(a, j);
    const len = lenOf(a, j);
    const k = lo - s;
    const stride = this.recordHeader + len;
    this.unref(a[j + 1] as number, 1, stride);
    if (n === 1) {
      this.removeExtent(b, li, e);
      return;
    }
    if (k === 0) {
      this.write(a, j, s + 1, a[j + 1] as number, (a[j + 2] as number) + stride, len, n - 1, seqOf(a, j) + 1, flagsOf(a, j));
    } else if (k === n - 1) {
      a[j + 3] = (len | ((n - 2) << LEN_BITS)) >>> 0;
    } else {
      const chunk = a[j + 1] as number;
      const off = a[j + 2] as number;
      const seq = seqOf(a, j);
      const flags = flagsOf(a, j);
      a[j + 3] = (len | ((k - 1) << LEN_BITS)) >>> 0;
      this.insertExtent(b, li, e + 1, lo + 1, chunk, off + (k + 1) * stride, len, n - k - 1, seq + k + 1, flags);
    }
  }

  private write(a: Uint32Array, j: number, lo: number, chunk: number, off: number, len: number, n: number, seq: number, flags: number): void {
    a[j] = lo;
    a[j + 1] = chunk;
    a[j + 2] = off;
    a[j + 3] = (len | ((n - 1) << LEN_BITS)) >>> 0;
    a[j + 4] = seq % TWO32;
    a[j + 5] = (Math.floor(seq / TWO32) | (flags << 21)) >>> 0;
  }

  /** Can the extent at j take (lo, seq, chunk, off, len, flags) as its next block? */
  private follows(a: Uint32Array, j: number, lo: number, seq: number, chunk: number, off: number, len: number, flags: number): boolean {
    const n = run(a, j);
    return (
      (a[j] as number) + n === lo &&
      n < MAX_RUN &&
      a[j + 1] === chunk &&
      lenOf(a, j) === len &&
      flagsOf(a, j) === flags &&
      seqOf(a, j) + n === seq &&
      (a[j + 2] as number) + n * (this.recordHeader + len) === off
    );
  }

  /** Add an unmapped block (lookup(block) just returned false), joining the extents beside it where it continues them. */
  private put(block: number, seq: number, chunk: number, off: number, len: number, flags: number): void {
    const hi = Math.floor(block / TWO32);
    const lo = block - hi * TWO32;
    let b = this.pb;
    if (!b) {
      b = new Bucket(hi);
      this.buckets.set(hi, b);
      this.sortedHis = null;
      this.gen++;
    }
    const li = this.pl;
    const e = this.pe;
    // Append to the extent before it?
    if (li >= 0) {
      const leaf = b.leaves[li] as Leaf;
      const a = leaf.a;
      const j = e * STRIDE;
      if (this.follows(a, j, lo, seq, chunk, off, len, flags)) {
        const n = run(a, j) + 1;
        a[j + 3] = (len | ((n - 1) << LEN_BITS)) >>> 0;
        // ... and does the next extent now continue this one?
        const [nl, ne] = e + 1 < leaf.n ? [li, e + 1] : [li + 1, 0];
        const next = b.leaves[nl];
        if (next) {
          const nj = ne * STRIDE;
          const na = next.a;
          if (
            na[nj] === lo + 1 &&
            n + run(na, nj) <= MAX_RUN &&
            this.follows(a, j, lo + 1, seqOf(na, nj), na[nj + 1] as number, na[nj + 2] as number, lenOf(na, nj), flagsOf(na, nj))
          ) {
            a[j + 3] = (len | ((n + run(na, nj) - 1) << LEN_BITS)) >>> 0;
            this.removeExtent(b, nl, ne);
          }
        }
        return;
      }
    }
    // Prepend to the extent after it?
    const [nl, ne] = li < 0 ? [0, 0] : e + 1 < (b.leaves[li] as Leaf).n ? [li, e + 1] : [li + 1, 0];
    const next = b.leaves[nl];
    if (next) {
      const na = next.a;
      const nj = ne * STRIDE;
      const n = run(na, nj);
      if (
        na[nj] === lo + 1 &&
        n < MAX_RUN &&
        na[nj + 1] === chunk &&
        lenOf(na, nj) === len &&
        flagsOf(na, nj) === flags &&
        seqOf(na, nj) === seq + 1 &&
        na[nj + 2] === off + this.recordHeader + len
      ) {
        this.write(na, nj, lo, chunk, off, len, n + 1, seq, flags);
        return;
      }
    }
    if (b.leaves.length === 0) {
      const leaf = new Leaf(new Uint32Array(LEAF_MIN_CAP * STRIDE), 0);
      b.leaves.push(leaf);
      this.leafBytes += leaf.a.byteLength;
      this.leafCount++;
      this.insertExtent(b, 0, 0, lo, chunk, off, len, 1, seq, flags);
    } else {
      this.insertExtent(b, Math.max(0, li), li < 0 ? 0 : e + 1, lo, chunk, off, len, 1, seq, flags);
    }
  }

  private insertExtent(b: Bucket, li: number, e: number, lo: number, chunk: number, off: number, len: number, n: number, seq: number, flags: number): void {
    this.gen++;
    let leaf = b.leaves[li] as Leaf;
    if (leaf.n === LEAF_MAX) {
      // Split in two halves; each keeps a little room to grow.
      const half = LEAF_MAX >> 1;
      const cap = half + (half >> 3);
      const right = new Leaf(new Uint32Array(cap * STRIDE), LEAF_MAX - half);
      right.a.set(leaf.a.subarray(half * STRIDE, LEAF_MAX * STRIDE));
      const left = new Leaf(new Uint32Array(cap * STRIDE), half);
      left.a.set(leaf.a.subarray(0, half * STRIDE));
      this.leafBytes += left.a.byteLength + right.a.byteLength - leaf.a.byteLength;
      this.leafCount++;
      b.leaves.splice(li, 1, left, right);
      if (e > half) {
        leaf = right;
        e -= half;
      } else {
        leaf = left;
      }
    }
    if ((leaf.n + 1) * STRIDE > leaf.a.length) {
      const cap = Math.min(LEAF_MAX, leaf.n + Math.max(LEAF_MIN_CAP, leaf.n >> 3));
      const a = new Uint32Array(cap * STRIDE);
      a.set(leaf.a.subarray(0, leaf.n * STRIDE));
      this.leafBytes += a.byteLength - leaf.a.byteLength;
      leaf.a = a;
    }
    const a = leaf.a;
    a.copyWithin((e + 1) * STRIDE, e * STRIDE, leaf.n * STRIDE);
    this.write(a, e * STRIDE, lo, chunk, off, len, n, seq, flags);
    leaf.n++;
    this.extents++;
    // The cursor at the new extent: the next block in order is found in one step.
    this.pgen = this.gen;
    this.pb = b;
    this.phi = b.hi;
    this.pl = b.leaves.indexOf(leaf, Math.max(0, li));
    this.pe = e;
  }

  private removeExtent(b: Bucket, li: number, e: number): void {
    this.gen++;
    const leaf = b.leaves[li] as Leaf;
    const a = leaf.a;
    a.copyWithin(e * STRIDE, (e + 1) * STRIDE, leaf.n * STRIDE);
    leaf.n--;
    this.extents--;
    if (leaf.n === 0) {
      b.leaves.splice(li, 1);
      this.leafBytes -= a.byteLength;
      this.leafCount--;
      if (b.leaves.length === 0) {
        this.buckets.delete(b.hi);
        this.sortedHis = null;
      }
    } else if (a.length > LEAF_MIN_CAP * STRIDE && leaf.n * STRIDE * 2 < a.length) {
      const cap = leaf.n + Math.max(LEAF_MIN_CAP, leaf.n >> 3);
      const na = new Uint32Array(cap * STRIDE);
      na.set(a.subarray(0, leaf.n * STRIDE));
      this.leafBytes += na.byteLength - a.byteLength;
      leaf.a = na;
    }
  }
}
