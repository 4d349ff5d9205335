import { VbfsError, ioError, isNoSpace } from '../errors';
import { compressBlock } from '../chunk/codec';
import { DOMAIN_RECORD } from '../crypto/volume-cipher';
import { FLAG_LZ4, FLAG_SEALED, RECORD_HEADER } from '../format/block-record';
import { copyBytes } from '../format/bytes';
import { WalWriter } from '../wal/wal-writer';
import type { Reader } from './reader';
import { SeqReserve } from './seq-reserve';
import { isBackendDown } from './flusher';
import type { VolumeCore } from './volume-core';

const RESOLVED: Promise<void> = Promise.resolve();
const MiB = 1024 * 1024;
/** One batch buffer of the WAL: records accumulate here between write() calls. */
const WAL_BUFFER_BYTES = 1 * MiB;

/** What the writer needs from the flusher (which needs the writer's WAL). */
export interface FlushControl {
  /** Start a background flush (the write buffer filled up, or a writer needs room). */
  kick(): void;
  /** Set while flushes fail for lack of space: writers that need room get it instead of waiting. */
  readonly diskFull: VbfsError | null;
  /** Slots one flush wave pins (how far relaxed writers may run ahead of the WAL). */
  readonly waveRecords: number;
  /** Volume.flush(): pack everything written so far into chunks. */
  flush(): Promise<void>;
}

/** Where the WAL continues after recovery. */
export interface WalStart {
  lastSegment: number;
  segments: number[];
}

/**
 * The write path, top to bottom:
 *
 *  1. write(offset, data): checks (in Volume), then apply it, in arrival order.
 *  2. apply: per block, take a write-buffer (arena) slot, waiting for the flusher
 *     to free one if the buffer is full (backpressure); a partial block is first
 *     filled with the block's current bytes (read-modify-write).
 *  3. commitSlot: the slot becomes the block's current version (Hot) and is
 *     appended to the WAL's batch buffer, compressed once if the volume is lz4.
 *  4. afterApply: the durability mode decides what the caller waits for: the WAL
 *     sync (strict), a group commit (batched), or only WAL backpressure (relaxed, async).
 *  5. onDurable: when a WAL sync completes, the blocks it covered become Pending.
 *
 * The flusher takes it from there (flusher.ts). The WAL exists only here, and the
 * writer only in writable mode.
 */
export class Writer {
  readonly wal: WalWriter;
  /** No seq is handed out above a durable reservation (seq-reserve.ts). */
  readonly seqs: SeqReserve;
  private writeTail: Promise<void> | null = null;
  private batchTimer: NodeJS.Timeout | null = null;
  /**
   * Slots appended to the WAL and not yet covered by a sync, with their seqs, in
   * seq order (a ring of typed arrays: no allocation per block). A completed sync
   * pops the ones it covered and marks them Pending; scanning the arena instead
   * would cost the whole write buffer per sync.
   */
  private unsyncedSlots = new Int32Array(1024);
  private unsyncedSeqs = new Float64Array(1024);
  private head = 0; // next to pop
  private tail = 0; // next free (head === tail: empty)

  /** Set by connect(): the flusher is built on this writer's WAL, so it comes second. */
  flusher!: FlushControl;

  constructor(
    private readonly core: VolumeCore,
    private readonly reader: Reader,
    start: WalStart,
  ) {
    const { ctx, blockSize } = core;
    this.wal = new WalWriter({
      dir: `${ctx.dir}/wal`,
      fileIO: ctx.fileIO,
      volumeId: core.info.id,
      blockSize,
      segmentBytes: core.tunables.walSegmentBytes,
      preallocate: core.tunables.walPreallocate,
      bufferBytes: Math.max(WAL_BUFFER_BYTES, 2 * (RECORD_HEADER + blockSize)),
      nextSegment: start.lastSegment + 1,
      existingSegments: start.segments,
      logger: ctx.logger,
      noSpaceRetryMs: core.tunables.noSpaceRetryMs,
      durableSeq: core.seq,
      onDurable: (seq) => this.markDurable(seq),
    });
    this.seqs = new SeqReserve(core, (err) => this.failUnlessNoSpace(err));
  }

  connect(flusher: FlushControl): void {
    this.flusher = flusher;
  }

  /**
   * Apply a write (already checked by Volume). Writes are applied in arrival order
   * (one queue), so overlapping writes keep their order even when one of them needs
   * a read-modify-write of a partial block. `data` is read only until the returned
   * promise settles.
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    const c = this.core.counters;
    this.core.lastIo = performance.now();
    c.writes++;
    c.writeBytes += data.length;
    // Fast path (the usual case behind FUSE, which sends one write at a time): no
    // write queued, room in the arena, no partial block that needs a backend read.
    // Then the whole write is applied synchronously, with no promise in between.
    if (!this.writeTail && this.applySync(offset, data)) return this.afterApply();
    const prev = this.writeTail;
    const run = (): Promise<void> => this.apply(offset, data);
    // A failed earlier write must not fail this one: chain on settle, not on success.
    const mine = (prev ? prev.then(run, run) : run()).finally(() => {
      if (this.writeTail === mine) this.writeTail = null;
    });
    this.writeTail = mine;
    return mine.then(() => this.afterApply());
  }

  /** Apply the write now if nothing can make it wait; false (and nothing done) otherwise. */
  private applySync(offset: number, data: Uint8Array): boolean {
    const { arena, blockSize: bs } = this.core;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + data.length - 1) / bs);
    if (last - first + 1 > arena.available) return false;
    if (!this.seqs.covers(last - first + 1)) return false;
    if (offset % bs !== 0 && this.reader.inMemoryBlock(first) === undefined) return false;
    if ((offset + data.length) % bs !== 0 && this.reader.inMemoryBlock(last) === undefined) return false;
    let pos = offset;
    const end = offset + data.length;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const inOff = pos - block * bs;
      const n = Math.min(bs - inOff, end - pos);
      const slot = arena.alloc();
      if (n === bs) arena.copyIn(slot, data, pos - offset);
      else this.fillPartial(slot, this.reader.inMemoryBlock(block) as Buffer | null, data, pos - offset, inOff, n);
      this.commitSlot(block, slot);
      pos += n;
    }
    if (arena.used * bs >= this.core.tunables.flushBytes) this.flusher.kick();
    return true;
  }

  /** The slow path: may wait for room in the arena, or read a partial block's current bytes. */
  private async apply(offset: number, data: Uint8Array): Promise<void> {
    this.check();
    const { arena, blockSize: bs } = this.core;
    const end = offset + data.length;
    let pos = offset;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const inOff = pos - block * bs;
      const n = Math.min(bs - inOff, end - pos);
      // Writes are applied one at a time: nothing takes a seq between here and commitSlot.
      if (!this.seqs.covers(1)) await this.seqs.wait(1);
      let slot = arena.alloc();
      while (slot < 0) slot = await this.waitForSlot();
      if (n === bs) {
        arena.copyIn(slot, data, pos - offset);
      } else {
        // Partial block: start from the current version of the block.
        let base = this.reader.inMemoryBlock(block);
        if (base === undefined) base = await this.reader.fetchBlock(block);
        this.fillPartial(slot, base, data, pos - offset, inOff, n);
      }
      this.commitSlot(block, slot);
      pos += n;
    }
    if (arena.used * bs >= this.core.tunables.flushBytes) this.flusher.kick();
  }

  private async waitForSlot(): Promise<number> {
    // The flusher cannot make room while the store disk is full: refuse, do not hang.
    const full = this.flusher.diskFull;
    if (full) throw full;
    this.flusher.kick();
    await this.core.arena.waitFree();
    this.check();
    return this.core.arena.alloc();
  }

  /** A partial block: the block's current bytes (or zeros), overlaid with data[src, src + n) at inOff. */
  private fillPartial(slot: number, base: Buffer | null, data: Uint8Array, src: number, inOff: number, n: number): void {
    const arena = this.core.arena;
    const slab = arena.slab(slot);
    const o = arena.offset(slot);
    if (base === null) slab.fill(0, o, o + this.core.blockSize);
    else arena.copyIn(slot, base, 0);
    copyBytes(data, slab, o + inOff, src, src + n);
  }

  /**
   * Make `slot` the block's current version (Hot) and log it. On an lz4 volume the
   * block is compressed here, once; on an encrypted one the payload (compressed or
   * not) is then sealed here, once, under the nonce of this seq. The slot keeps the
   * plaintext block for reads, plus the stored payload, the record's flags and CRC,
   * and the chunk record of this version reuses them byte for byte (chunk-builder.ts),
   * so one seq is sealed exactly once and the flusher does no crypto.
   */
  private commitSlot(block: number, slot: number): void {
    const { arena, index, blockSize: bs } = this.core;
    const seq = ++this.core.seq;
    arena.setMeta(slot, block, seq);
    arena.release(index.setHot(block, slot));
    this.core.cache.delete(block);
    const slab = arena.slab(slot);
    const o = arena.offset(slot);
    const packed = this.core.info.compression === 'lz4' ? compressBlock(slab.subarray(o, o + bs)) : null;
    const cipher = this.core.cipher;
    if (cipher) {
      // Sealed into the slot's own sealed room (arena.ts): nothing per block outlives this call.
      const flags = (packed ? FLAG_LZ4 : 0) | FLAG_SEALED;
      const dst = arena.sealedSlab(slot);
      const at = arena.sealedOffset(slot);
      const len = cipher.sealInto(DOMAIN_RECORD, { block, seq, flags }, packed ?? slab.subarray(o, o + bs), dst, at);
      arena.setSealedRecord(slot, this.wal.append(seq, block, flags, bs, dst, at, at + len), len, flags);
    } else {
      const crc = packed ? this.wal.append(seq, block, FLAG_LZ4, bs, packed, 0, packed.length) : this.wal.append(seq, block, 0, bs, slab, o, o + bs);
      arena.setRecord(slot, crc, packed, packed ? FLAG_LZ4 : 0);
    }
    this.pushUnsynced(slot, seq);
  }

  // ------------------------------------------------------------ durability

  /** What a write waits for once its blocks are in the arena and the WAL buffer. */
  private afterApply(): Promise<void> {
    const mode = this.core.durability;
    if (mode === 'strict') return this.syncWal();
    if (mode === 'batched') return this.batchedCommit();
    return this.walBackpressure();
  }

  /**
   * Batched mode: a group commit starts every `batchBlocks` blocks or `batchMs`
   * after a write, and the writer does not wait for it. But a writer that runs
   * ahead of the disk by twice the batch waits for the commit in flight, so the
   * loss window stays bounded by blocks even when timers cannot fire (a busy event
   * loop) and by time when they can.
   */
  private batchedCommit(): Promise<void> {
    const t = this.core.tunables;
    if (this.wal.unsyncedBytes >= 2 * t.batchBlocks * (RECORD_HEADER + this.core.blockSize)) return this.syncWal();
    if (this.wal.unsyncedBlocks >= t.batchBlocks) {
      this.backgroundSync();
    } else if (!this.batchTimer && this.wal.hasUnsynced) {
      this.batchTimer = setTimeout(() => {
        this.batchTimer = null;
        this.backgroundSync();
      }, t.batchMs);
    }
    return RESOLVED;
  }

  /**
   * Relaxed and async modes do not wait for the disk, but they must not run
   * ahead of it without bound either: the WAL writes queued behind a slow disk
   * are all waited for at the start of the next flush (its WAL sync), which
   * stalls every writer for as long as the backlog takes. So a background sync
   * starts at half of the backlog cap, and a writer waits for one at the full
   * amount (one flush wave's worth of records).
   */
  private walBackpressure(): Promise<void> {
    const cap = this.flusher.waveRecords * (RECORD_HEADER + this.core.blockSize);
    const behind = this.wal.unsyncedBytes;
    // Proportional: wait only until the older half of the backlog is durable
    // (usually the background sync started at half the cap), not all of it.
    if (behind >= cap) return this.syncWal(this.wal.position - cap / 2);
    if (behind >= cap / 2) this.wal.kickSync();
    return RESOLVED;
  }

  /**
   * Everything written before this call is durable when it resolves (strict,
   * batched, relaxed). In async mode a sync is started and not awaited.
   */
  async fsync(): Promise<void> {
    await this.drain();
    if (this.core.durability === 'async') {
      this.backgroundSync();
      return;
    }
    await this.syncWal();
  }

  private backgroundSync(): void {
    // A failure poisons the WAL; the next write or fsync reports it.
    this.wal.kickSync();
  }

  /** Sync the WAL (everything, or up to a position); an out-of-space error does not poison the volume. */
  async syncWal(upTo?: number): Promise<void> {
    try {
      await this.wal.sync(upTo);
    } catch (err) {
      throw this.failUnlessNoSpace(err);
    }
  }

  /** Remember an appended record until a sync covers it (the ring doubles when full; its length is a power of two). */
  private pushUnsynced(slot: number, seq: number): void {
    if (((this.tail + 1) & (this.unsyncedSlots.length - 1)) === this.head) this.growUnsynced();
    this.unsyncedSlots[this.tail] = slot;
    this.unsyncedSeqs[this.tail] = seq;
    this.tail = (this.tail + 1) & (this.unsyncedSlots.length - 1);
  }

  private growUnsynced(): void {
    const n = this.unsyncedSlots.length;
    const slots = new Int32Array(n * 2);
    const seqs = new Float64Array(n * 2);
    let k = 0;
    for (let i = this.head; i !== this.tail; i = (i + 1) & (n - 1), k++) {
      slots[k] = this.unsyncedSlots[i] as number;
      seqs[k] = this.unsyncedSeqs[i] as number;
    }
    this.unsyncedSlots = slots;
    this.unsyncedSeqs = seqs;
    this.head = 0;
    this.tail = k;
  }

  /**
   * A WAL sync made every record up to `seq` durable: their blocks go Hot ->
   * Pending, unless the slot holds another version by now (superseded, or already
   * freed and reused: its own entry comes later).
   */
  private markDurable(seq: number): void {
    const { arena, index } = this.core;
    const m = this.unsyncedSlots.length - 1;
    while (this.head !== this.tail && (this.unsyncedSeqs[this.head] as number) <= seq) {
      const slot = this.unsyncedSlots[this.head] as number;
      if (arena.seqOf(slot) === this.unsyncedSeqs[this.head]) index.markPending(arena.blockOf(slot), slot);
      this.head = (this.head + 1) & m;
    }
  }

  // ------------------------------------------------------------ state

  /** Resolves once every write queued so far has been applied (failed or not). */
  async drain(): Promise<void> {
    if (this.writeTail) await this.writeTail.catch(() => undefined);
  }

  stopTimers(): void {
    if (this.batchTimer) clearTimeout(this.batchTimer);
    this.batchTimer = null;
  }

  /** Refuse a write: closed, poisoned (by the volume or the WAL), or the WAL waits for space. */
  check(): void {
    this.core.checkOpen();
    if (this.core.failed) throw this.core.failed;
    const walError = this.wal.error;
    if (walError) throw this.core.fail(walError);
    // The store disk is full and the WAL waits to rewrite a batch: refuse (the
    // caller sees ENOSPC) rather than pile up more, and retry the WAL write now.
    const noSpace = this.wal.noSpace;
    if (noSpace) {
      this.wal.retryNow();
      throw noSpace;
    }
  }

  /** An out-of-space error that leaves the volume writable once space returns, or poison the volume. */
  failUnlessNoSpace(err: unknown): VbfsError {
    // A backend outage is not the volume's failure either: its data waits in the WAL (flusher.ts).
    if ((isNoSpace(err) || isBackendDown(err)) && !this.core.failed && !this.wal.error) return ioError(`volume '${this.core.name}'`, err);
    return this.core.fail(err);
  }
}
