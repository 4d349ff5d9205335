import { copyBytes } from '../format/bytes';

/**
 * The write buffer: fixed-size block slots carved from 4 MiB slabs. Hot and
 * Pending block versions live here until a chunk holding them is durable. Slots
 * are reused through a free list, so the steady-state write path allocates
 * nothing per block, and the slot count is the memory cap: when every slot is in
 * use, writers wait (backpressure) until the flusher frees some.
 *
 * A slot can be pinned by an in-progress flush, and held while its record is
 * being sealed in the crypto worker (writer.ts); releasing a pinned or held slot
 * defers the free until both are over.
 */
const SLAB_BYTES = 4 * 1024 * 1024;
/** Bits of `pinned`: an in-progress flush, a seal in the crypto worker. */
const PIN_FLUSH = 1;
const PIN_SEAL = 2;

export class Arena {
  private readonly slabs: Buffer[] = [];
  /**
   * Encrypted volumes: each slot also holds its record's sealed payload (block +
   * tag), in slabs beside the plaintext ones, so sealing allocates no long-lived
   * buffer per block (65,536 of them in a 256 MiB buffer would be garbage the
   * collector has to trace and free). Empty when sealedSize is 0.
   */
  private readonly sealedSlabs: Buffer[] = [];
  private sealedLens: Uint32Array;
  private readonly perSlab: number;
  private free: Int32Array;
  private freeTop = 0;
  private nextFresh = 0; // slots [nextFresh, allocated) were never handed out
  private allocated = 0; // slots backed by slabs
  private pinned: Uint8Array; // PIN_FLUSH | PIN_SEAL
  private released: Uint8Array; // released while pinned or held
  private waiters: Array<() => void> = [];
  /** Slots that may be in use at once (<= capacity): this volume's share of a store-wide memory budget. */
  private limit: number;
  /** Block number and sequence number of the version each slot holds (setMeta). */
  private blocks: Float64Array;
  private seqs: Float64Array;
  /** CRC of the WAL record of this version: the chunk record is the same bytes (setRecord). */
  private crcs: Uint32Array;
  /**
   * 1: the slot's plaintext was never written, only its sealed payload (an inline
   * seal straight from the caller's buffer, writer.ts); whoever needs the bytes
   * opens the sealed payload into the slot first (reader.ts, plainSlot). The
   * plaintext page is then never touched on the write path: a page touched for
   * the first time costs a page fault, several times the seal itself here.
   */
  private plainMissing: Uint8Array;
  /** Flags of this version's record (LZ4, sealed): the chunk record carries the same. */
  private recFlags: Uint8Array;
  /** The stored payload of this version's record (LZ4 and/or sealed), or undefined when it is the raw block. */
  private packed: (Buffer | undefined)[] = [];
  /** Bytes held by `packed` (not in the slabs; counted in the volume's memory). */
  packedBytes = 0;
  used = 0;

  constructor(
    readonly slotSize: number,
    readonly capSlots: number,
    /** Bytes of sealed payload room per slot (an encrypted volume: block size + tag), or 0. */
    readonly sealedSize = 0,
    /**
     * Slabs in shared memory (SharedArrayBuffer): the crypto worker reads a record's
     * plaintext from its slot and writes the sealed payload into the slot's sealed
     * room itself (writer.ts, cipher-worker.ts), so a batch is neither copied into a
     * message nor copied back.
     */
    readonly shared = false,
  ) {
    this.sealedLens = new Uint32Array(sealedSize > 0 ? capSlots : 0);
    this.perSlab = Math.max(1, Math.floor(SLAB_BYTES / slotSize));
    this.free = new Int32Array(capSlots);
    this.pinned = new Uint8Array(capSlots);
    this.released = new Uint8Array(capSlots);
    this.blocks = new Float64Array(capSlots);
    this.seqs = new Float64Array(capSlots);
    this.crcs = new Uint32Array(capSlots);
    this.recFlags = new Uint8Array(capSlots);
    this.plainMissing = new Uint8Array(capSlots);
    this.limit = capSlots;
  }

  /**
   * Lower (or raise, up to the capacity) the number of slots in use at once. Slabs
   * already allocated above it are kept until trim() (the arena empties, e.g. when idle).
   */
  setLimit(slots: number): void {
    // Whole slabs (what memory is allocated in), at least one slab's worth or two slots.
    const whole = Math.floor(slots / this.perSlab) * this.perSlab;
    this.limit = Math.max(2, Math.min(this.free.length, whole > 0 ? whole : Math.min(this.perSlab, Math.floor(slots))));
  }

  get limitSlots(): number {
    return this.limit;
  }

  /**
   * Give every slab back (to the garbage collector) when no slot is in use: an idle
   * volume holds no write buffer. False (nothing done) if a slot is in use.
   */
  trim(): boolean {
    if (this.used !== 0) return false;
    this.slabs.length = 0;
    this.sealedSlabs.length = 0;
    this.allocated = 0;
    this.nextFresh = 0;
    this.freeTop = 0;
    this.packed = [];
    this.packedBytes = 0;
    return true;
  }

  /** Slots ever handed out: every in-use slot is below this. */
  get highWater(): number {
    return this.nextFresh;
  }

  isPinned(slot: number): boolean {
    return ((this.pinned[slot] as number) & PIN_FLUSH) !== 0;
  }

  /** The slot's record is being sealed elsewhere: its sealed payload, CRC and flags are not set yet. */
  isSealing(slot: number): boolean {
    return ((this.pinned[slot] as number) & PIN_SEAL) !== 0;
  }

  /** Slots alloc() can hand out right now without waiting. */
  get available(): number {
    return Math.max(0, Math.min(this.freeTop + (this.free.length - this.nextFresh), this.limit - this.used));
  }

  get full(): boolean {
    return this.used >= this.limit || (this.freeTop === 0 && this.nextFresh >= this.free.length);
  }

  /** A free slot, or -1 at the cap (or the limit). */
  alloc(): number {
    if (this.used >= this.limit) return -1;
    return this.take();
  }

  private take(): number {
    let s: number;
    if (this.freeTop > 0) s = this.free[--this.freeTop] as number;
    else if (this.nextFresh < this.free.length) s = this.nextFresh++;
    else return -1;
    if (s >= this.allocated) this.grow(s);
    this.plainMissing[s] = 0;
    this.used++;
    return s;
  }

  /** Allocate even above the cap (recovery replays whatever the WAL holds). */
  allocForce(): number {
    const s = this.take();
    if (s >= 0) return s;
    const n = this.free.length * 2;
    const free = new Int32Array(n);
    free.set(this.free);
    this.free = free;
    this.pinned = widen(this.pinned, new Uint8Array(n));
    this.released = widen(this.released, new Uint8Array(n));
    this.blocks = widen(this.blocks, new Float64Array(n));
    this.seqs = widen(this.seqs, new Float64Array(n));
    this.crcs = widen(this.crcs, new Uint32Array(n));
    this.recFlags = widen(this.recFlags, new Uint8Array(n));
    this.plainMissing = widen(this.plainMissing, new Uint8Array(n));
    if (this.sealedSize > 0) this.sealedLens = widen(this.sealedLens, new Uint32Array(n));
    return this.take();
  }

  private grow(slot: number): void {
    while (this.allocated <= slot) {
      this.slabs.push(this.newSlab(this.perSlab * this.slotSize));
      if (this.sealedSize > 0) this.sealedSlabs.push(this.newSlab(this.perSlab * this.sealedSize));
      this.allocated += this.perSlab;
    }
  }

  private newSlab(bytes: number): Buffer {
    return this.shared ? Buffer.from(new SharedArrayBuffer(bytes)) : Buffer.allocUnsafeSlow(bytes);
  }

  /** The slot's slab (its offset(slot) is also the offset in the slab's memory, `.buffer`). */
  slab(slot: number): Buffer {
    return this.slabs[Math.floor(slot / this.perSlab)] as Buffer;
  }

  offset(slot: number): number {
    return (slot % this.perSlab) * this.slotSize;
  }

  /** A view of the slot's bytes (allocates a view object; the copy helpers below do not). */
  view(slot: number): Buffer {
    const o = this.offset(slot);
    return this.slab(slot).subarray(o, o + this.slotSize);
  }

  /** False when only the slot's sealed payload was written (see plainMissing). */
  hasPlain(slot: number): boolean {
    return this.plainMissing[slot] === 0;
  }

  /** The slot's plaintext is not written (missing: true) or now is (false). */
  setPlainMissing(slot: number, missing: boolean): void {
    this.plainMissing[slot] = missing ? 1 : 0;
  }

  copyIn(slot: number, src: Uint8Array, srcStart: number): void {
    copyBytes(src, this.slab(slot), this.offset(slot), srcStart, srcStart + this.slotSize);
  }

  copyOut(slot: number, dst: Uint8Array, dstStart: number, from = 0, to = this.slotSize): void {
    const o = this.offset(slot);
    copyBytes(this.slab(slot), dst, dstStart, o + from, o + to);
  }

  // ---- slot metadata: which version a slot holds, and its record

  /** The slot now holds version `seq` of `block` (its record is set by setRecord). */
  setMeta(slot: number, block: number, seq: number): void {
    this.blocks[slot] = block;
    this.seqs[slot] = seq;
  }

  blockOf(slot: number): number {
    return this.blocks[slot] as number;
  }

  seqOf(slot: number): number {
    return this.seqs[slot] as number;
  }

  /**
   * The record this version was logged as: its CRC, its flags, and its stored
   * payload when that is not the slot's bytes (LZ4-compressed and/or sealed; null:
   * raw). Keeping them lets the chunk record reuse all three instead of
   * checksumming, compressing or sealing again.
   */
  setRecord(slot: number, crc: number, packed: Buffer | null, flags: number): void {
    this.crcs[slot] = crc;
    this.recFlags[slot] = flags;
    this.dropPacked(slot);
    if (packed) {
      this.packed[slot] = packed;
      this.packedBytes += packed.length;
    }
  }

  recordCrc(slot: number): number {
    return this.crcs[slot] as number;
  }

  recordFlags(slot: number): number {
    return this.recFlags[slot] as number;
  }

  /** The slot's stored payload (LZ4 and/or sealed), or undefined when its record is raw. */
  packedOf(slot: number): Buffer | undefined {
    if (this.sealedSize > 0) {
      const len = this.sealedLens[slot] as number;
      if (len === 0) return undefined;
      const o = this.sealedOffset(slot);
      return this.sealedSlab(slot).subarray(o, o + len);
    }
    return this.packed[slot];
  }

  /** Where the slot's sealed payload goes (sealedSize > 0): this slab, at sealedOffset(slot). */
  sealedSlab(slot: number): Buffer {
    return this.sealedSlabs[Math.floor(slot / this.perSlab)] as Buffer;
  }

  sealedOffset(slot: number): number {
    return (slot % this.perSlab) * this.sealedSize;
  }

  /** The record of this version is the `len` sealed bytes written at sealedSlab/sealedOffset, with this CRC and flags. */
  setSealedRecord(slot: number, crc: number, len: number, flags: number): void {
    this.crcs[slot] = crc;
    this.recFlags[slot] = flags;
    this.sealedLens[slot] = len;
  }

  private dropPacked(slot: number): void {
    if (this.packedBytes === 0) return; // raw volumes never touch the array
    const p = this.packed[slot];
    if (p) {
      this.packedBytes -= p.length;
      this.packed[slot] = undefined;
    }
  }

  pin(slot: number): void {
    this.pinned[slot] = (this.pinned[slot] as number) | PIN_FLUSH;
  }

  unpin(slot: number): void {
    this.unpinBits(slot, PIN_FLUSH);
  }

  /** Keep the slot (its plaintext and its sealed room) until endSeal(), even if released. */
  holdForSeal(slot: number): void {
    this.pinned[slot] = (this.pinned[slot] as number) | PIN_SEAL;
  }

  endSeal(slot: number): void {
    this.unpinBits(slot, PIN_SEAL);
  }

  private unpinBits(slot: number, bits: number): void {
    const p = (this.pinned[slot] as number) & ~bits;
    this.pinned[slot] = p;
    if (p === 0 && this.released[slot]) {
      this.released[slot] = 0;
      this.pushFree(slot);
    }
  }

  release(slot: number): void {
    if (slot < 0) return;
    if (this.pinned[slot]) this.released[slot] = 1;
    else this.pushFree(slot);
  }

  private pushFree(slot: number): void {
    this.dropPacked(slot);
    this.free[this.freeTop++] = slot;
    this.used--;
    if (this.waiters.length > 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const fn of w) fn();
    }
  }

  /** Resolves when a slot may be free (callers re-check with alloc()). */
  waitFree(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Wake every waiter (used on close/failure so nobody hangs). */
  wakeAll(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
  }

  /** Memory one slot costs (its block, and its sealed payload on an encrypted volume). */
  get bytesPerSlot(): number {
    return this.slotSize + this.sealedSize;
  }

  get bytes(): number {
    return this.allocated * this.bytesPerSlot;
  }
}

function widen<T extends Uint8Array | Uint32Array | Float64Array>(from: T, to: T): T {
  to.set(from);
  return to;
}
