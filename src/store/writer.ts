import { VbfsError, ioError, isNoSpace } from '../errors';
import { compressBlock } from '../chunk/codec';
import { DOMAIN_RECORD, SEAL_OVERHEAD } from '../crypto/volume-cipher';
import { FLAG_LZ4, FLAG_SEALED, FLAG_ZERO, RECORD_HEADER } from '../format/block-record';
import { EMPTY } from '../map/block-index';
import { copyBytes } from '../format/bytes';
import { WalWriter } from '../wal/wal-writer';
import type { CipherPool } from '../crypto/cipher-pool';
import type { VolumeCipher } from '../crypto/volume-cipher';
import type { Reader } from './reader';
import { SeqReserve } from './seq-reserve';
import { isBackendDown } from './flusher';
import type { VolumeCore } from './volume-core';

const RESOLVED: Promise<void> = Promise.resolve();
const MiB = 1024 * 1024;
/** One batch buffer of the WAL: records accumulate here between write() calls. */
const WAL_BUFFER_BYTES = 1 * MiB;
/**
 * Zero versions (trimmed blocks) wait for the next flush's map tombstone in the
 * index and the zero list, 40 bytes each and no write-buffer slot: past ZERO_KICK a
 * flush starts, past ZERO_WAIT a trim or zero write waits for one (memory bound).
 */
const ZERO_KICK = 64 * 1024;
const ZERO_WAIT = 1024 * 1024;
const NO_BYTES = new Uint8Array(0);

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
  /** remote durability: everything written so far is in the backend's chunks and map (concurrent callers share flushes). */
  persist(): Promise<void>;
}

/**
 * Records sealed together in the crypto worker (of one or several writes), then
 * appended to the WAL in seq order. Their slots are held (arena.holdForSeal)
 * until then, so neither their plaintext nor their sealed room is reused. The
 * worker seals them in place: it reads each payload from the write buffer's
 * shared slabs and writes the sealed payload into the slot's sealed room, so a
 * batch costs no copy into a message and none back, and no batch buffer (a
 * fresh one costs a page fault per 4 KiB on first touch here).
 */
class SealBatch {
  n = 0;
  readonly slots: Int32Array;
  /** block, seq, flags of each record (the worker's request format) */
  readonly meta: Float64Array;
  /** payload length of each record before sealing */
  readonly lens: Uint32Array;
  /** Where each payload is and where its sealed payload goes: (index in `mem`, offset) pairs. */
  readonly src: Uint32Array;
  readonly dst: Uint32Array;
  /** The write-buffer slabs those are in. */
  readonly mem: SharedArrayBuffer[] = [];
  /** The worker sealed every record in place (otherwise they are sealed inline: appendSealed). */
  sealed = false;
  ready = false;
  /** Resolves (never rejects) once the batch is in the WAL or dropped with the volume's failure. */
  readonly appended: Promise<void>;
  resolve!: () => void;

  constructor(cap: number) {
    this.slots = new Int32Array(cap);
    this.meta = new Float64Array(3 * cap);
    this.lens = new Uint32Array(cap);
    this.src = new Uint32Array(2 * cap);
    this.dst = new Uint32Array(2 * cap);
    this.appended = new Promise((r) => (this.resolve = r));
  }

  add(slot: number, block: number, seq: number, flags: number, len: number, src: Buffer, srcOff: number, dst: Buffer, dstOff: number): void {
    const k = this.n++;
    this.slots[k] = slot;
    this.meta[3 * k] = block;
    this.meta[3 * k + 1] = seq;
    this.meta[3 * k + 2] = flags;
    this.lens[k] = len;
    this.src[2 * k] = this.memIndex(src);
    this.src[2 * k + 1] = src.byteOffset + srcOff;
    this.dst[2 * k] = this.memIndex(dst);
    this.dst[2 * k + 1] = dst.byteOffset + dstOff;
  }

  private memIndex(b: Buffer): number {
    const sab = b.buffer as SharedArrayBuffer;
    let i = this.mem.indexOf(sab);
    if (i < 0) i = this.mem.push(sab) - 1;
    return i;
  }

  get full(): boolean {
    return this.n === this.slots.length;
  }
}

/** Records per batch sent to the crypto worker (one 256 KiB message of 4 KiB blocks). */
const SEAL_BATCH_RECORDS = 64;

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
 *     sync (strict), a group commit (batched), or only WAL backpressure (relaxed,
 *     async, remote; a remote fsync waits for a flush to the backend instead).
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

  /**
   * Encrypted volumes (not strict): a write of cryptoSealBlocks blocks or more is
   * sealed in the crypto worker (cipher-pool.ts), and acknowledged before; so is a
   * smaller one while records are in the worker (the WAL takes records in seq
   * order). A smaller write otherwise is sealed inline: with FUSE sending one
   * write at a time, batching 4 KiB writes gave batches of one or two records,
   * whose trip cost more than the seals (measured). `sealOpen` collects records
   * until it holds SEAL_BATCH_RECORDS or `sealTimer` fires (1 ms); `sealQueue`
   * holds the batches sent, waiting for the WAL, oldest first.
   */
  private readonly sealBatched: boolean;
  /** The write being applied goes to the worker (set at its start). */
  private toWorker = false;
  private sealOpen: SealBatch | null = null;
  private sealTimer: NodeJS.Timeout | null = null;
  private readonly sealQueue: SealBatch[] = [];
  private sealingBlocks = 0;

  /** Zeros to overlay a partial block with (a partial trim), and the room a sealed zero record's tag is made in. */
  private readonly zeroBlock: Buffer;
  private readonly zeroTag = Buffer.alloc(32);

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
    // Strict writes wait for the disk anyway: a trip to the worker would only add to it.
    this.sealBatched = core.cipherPool !== null && core.tunables.cryptoSealBlocks > 0 && core.durability !== 'strict';
    this.zeroBlock = Buffer.alloc(blockSize);
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
    return this.enqueue(offset, data, data.length);
  }

  /**
   * Trim `length` bytes at `offset` (already checked by Volume): a write of zeros,
   * in the same queue, that logs whole blocks as zero records (commitZero).
   */
  trim(offset: number, length: number): Promise<void> {
    this.core.lastIo = performance.now();
    this.core.counters.trims++;
    return this.enqueue(offset, null, length);
  }

  /** data === null: zeros (a trim). */
  private enqueue(offset: number, data: Uint8Array | null, length: number): Promise<void> {
    // Fast path (the usual case behind FUSE, which sends one write at a time): no
    // write queued, room in the arena, no partial block that needs a backend read.
    // Then the whole write is applied synchronously, with no promise in between.
    if (!this.writeTail && this.applySync(offset, data, length)) return this.sealBatched ? this.afterSealApply() : this.afterApply();
    const prev = this.writeTail;
    const run = (): Promise<void> => this.apply(offset, data, length);
    // A failed earlier write must not fail this one: chain on settle, not on success.
    const mine = (prev ? prev.then(run, run) : run()).finally(() => {
      if (this.writeTail === mine) this.writeTail = null;
    });
    this.writeTail = mine;
    return mine.then(() => (this.sealBatched ? this.afterSealApply() : this.afterApply()));
  }

  private sealInWorker(blocks: number): boolean {
    return this.sealBatched && (blocks >= this.core.tunables.cryptoSealBlocks || this.sealingBlocks > 0);
  }

  /** Apply the write now if nothing can make it wait; false (and nothing done) otherwise. */
  private applySync(offset: number, data: Uint8Array | null, length: number): boolean {
    const { arena, index, blockSize: bs } = this.core;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    if (last - first + 1 > arena.available) return false;
    if (!this.seqs.covers(last - first + 1)) return false;
    if (index.pendingZeros >= ZERO_WAIT) return false;
    if (offset % bs !== 0 && this.reader.inMemoryBlock(first) === undefined) return false;
    if ((offset + length) % bs !== 0 && this.reader.inMemoryBlock(last) === undefined) return false;
    this.toWorker = this.sealInWorker(last - first + 1);
    // A zero record goes straight to the WAL, which takes records in seq order: with
    // records in (or bound for) the crypto worker it must wait for them (apply()).
    if ((this.toWorker || this.sealingBlocks > 0) && hasZeroBlock(data, offset, length, bs)) return false;
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const inOff = pos - block * bs;
      const n = Math.min(bs - inOff, end - pos);
      if (n === bs && (data === null || isZeroBlock(data, pos - offset, bs))) {
        this.commitZero(block);
      } else {
        const slot = arena.alloc();
        if (n === bs) {
          this.commitSlot(block, slot, data as Uint8Array, pos - offset);
        } else {
          this.fillPartial(slot, this.reader.inMemoryBlock(block) as Buffer | null, data ?? this.zeroBlock, data ? pos - offset : 0, inOff, n);
          this.commitSlot(block, slot);
        }
      }
      pos += n;
    }
    if (arena.used * bs >= this.core.tunables.flushBytes || index.pendingZeros >= ZERO_KICK) this.flusher.kick();
    return true;
  }

  /** The slow path: may wait for room in the arena, or read a partial block's current bytes. */
  private async apply(offset: number, data: Uint8Array | null, length: number): Promise<void> {
    this.check();
    const { arena, index, blockSize: bs } = this.core;
    const end = offset + length;
    this.toWorker = this.sealInWorker(Math.floor((end - 1) / bs) - Math.floor(offset / bs) + 1);
    let pos = offset;
    try {
      while (pos < end) {
        const block = Math.floor(pos / bs);
        const inOff = pos - block * bs;
        const n = Math.min(bs - inOff, end - pos);
        // Before any wait, the records collected so far go to the worker (the flusher
        // may wait for their seals). Writes are applied one at a time: nothing takes a
        // seq between here and commitSlot.
        if (!this.seqs.covers(1)) {
          this.sendSeals();
          await this.seqs.wait(1);
        }
        if (n === bs && (data === null || isZeroBlock(data, pos - offset, bs))) {
          if (index.pendingZeros >= ZERO_WAIT) {
            this.sendSeals();
            await this.flusher.flush();
            if (!this.seqs.covers(1)) await this.seqs.wait(1);
          }
          // The zero record is appended now: the sealed records before it land first (seq order).
          if (this.sealingBlocks > 0) {
            await this.sealsSettled();
            if (!this.seqs.covers(1)) await this.seqs.wait(1);
          }
          this.commitZero(block);
          pos += n;
          continue;
        }
        let slot = arena.alloc();
        while (slot < 0) {
          this.sendSeals();
          slot = await this.waitForSlot();
        }
        if (n === bs) {
          this.commitSlot(block, slot, data as Uint8Array, pos - offset);
        } else {
          // Partial block: start from the current version of the block.
          let base = this.reader.inMemoryBlock(block);
          if (base === undefined) {
            this.sendSeals();
            base = await this.reader.fetchBlock(block);
          }
          this.fillPartial(slot, base, data ?? this.zeroBlock, data ? pos - offset : 0, inOff, n);
          this.commitSlot(block, slot);
        }
        pos += n;
      }
    } finally {
      this.sendSeals();
    }
    if (arena.used * bs >= this.core.tunables.flushBytes || index.pendingZeros >= ZERO_KICK) this.flusher.kick();
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
   *
   * A whole block comes as `src` at `srcOff` (otherwise the slot holds it already).
   * A block sealed inline is sealed straight from there and its plaintext is not
   * copied into the slot (arena.ts, plainMissing): a read of it opens the sealed
   * payload (reader.ts), which is rare next to the copy every write would pay.
   */
  private commitSlot(block: number, slot: number, src?: Uint8Array, srcOff = 0): void {
    const { arena, index, blockSize: bs } = this.core;
    const cipher = this.core.cipher;
    const inlineSeal = cipher !== null && !this.toWorker && this.sealingBlocks === 0;
    if (src && !inlineSeal) {
      arena.copyIn(slot, src, srcOff);
      src = undefined;
    }
    const seq = ++this.core.seq;
    arena.setMeta(slot, block, seq);
    arena.release(index.setHot(block, slot));
    this.core.cache.delete(block);
    const slab = arena.slab(slot);
    const o = arena.offset(slot);
    const raw = src ? Buffer.from(src.buffer, src.byteOffset + srcOff, bs) : slab.subarray(o, o + bs);
    const packed = this.core.info.compression === 'lz4' ? compressBlock(raw) : null;
    if (cipher) {
      const flags = (packed ? FLAG_LZ4 : 0) | FLAG_SEALED;
      const payload = packed ?? raw;
      if (this.toWorker || this.sealingBlocks > 0) {
        // Sealed in the worker; appended to the WAL (and pushUnsynced) when it comes back.
        cipher.announceSeal(DOMAIN_RECORD, { block, seq, flags }, payload);
        const dst = arena.sealedSlab(slot);
        const at = arena.sealedOffset(slot);
        // A compressed payload is not in the slab: it goes to the sealed room and is sealed there.
        if (packed) packed.copy(dst, at);
        this.sealBatch().add(slot, block, seq, flags, payload.length, packed ? dst : slab, packed ? at : o, dst, at);
        this.sealingBlocks++;
        arena.holdForSeal(slot);
        if ((this.sealOpen as SealBatch).full) this.sendSeals();
        return;
      }
      // Sealed into the slot's own sealed room (arena.ts): nothing per block outlives this call.
      const dst = arena.sealedSlab(slot);
      const at = arena.sealedOffset(slot);
      const len = cipher.sealInto(DOMAIN_RECORD, { block, seq, flags }, payload, dst, at);
      arena.setSealedRecord(slot, this.wal.append(seq, block, flags, bs, dst, at, at + len), len, flags);
      if (src) arena.setPlainMissing(slot, true);
    } else {
      const crc = packed ? this.wal.append(seq, block, FLAG_LZ4, bs, packed, 0, packed.length) : this.wal.append(seq, block, 0, bs, slab, o, o + bs);
      arena.setRecord(slot, crc, packed, packed ? FLAG_LZ4 : 0);
    }
    this.pushUnsynced(slot, seq);
  }

  /**
   * The block is all zeros from a new seq on: a zero record (header only; on an
   * encrypted volume the tag of an empty plaintext, so the record is authenticated
   * like any other) instead of a block record, and the block goes Empty without a
   * slot (BlockIndex.setZero). A block that is Empty already logs nothing. The
   * flusher turns the record into a map tombstone (flusher.ts).
   */
  private commitZero(block: number): void {
    const { arena, index, blockSize: bs } = this.core;
    if (index.state(block) === EMPTY) return;
    const seq = ++this.core.seq;
    arena.release(index.setZero(block, seq));
    this.core.cache.delete(block);
    const cipher = this.core.cipher;
    if (cipher) {
      const flags = FLAG_ZERO | FLAG_SEALED;
      const len = cipher.sealInto(DOMAIN_RECORD, { block, seq, flags }, NO_BYTES, this.zeroTag, 0);
      this.wal.append(seq, block, flags, bs, this.zeroTag, 0, len);
    } else {
      this.wal.append(seq, block, FLAG_ZERO, bs, NO_BYTES, 0, 0);
    }
    this.core.zeros.push(block, seq);
    this.core.counters.zeroBlocks++;
  }

  // ------------------------------------------------------------ sealing in the worker

  /** The batch collecting records; a new one is sent at the latest 1 ms after its first record. */
  private sealBatch(): SealBatch {
    if (this.sealOpen) return this.sealOpen;
    this.sealOpen = new SealBatch(SEAL_BATCH_RECORDS);
    this.sealTimer = setTimeout(() => {
      this.sealTimer = null;
      this.sendSeals();
    }, 1);
    return this.sealOpen;
  }

  /** Send the collecting batch (if any) to the crypto worker; its records go to the WAL when it is back. */
  private sendSeals(): void {
    if (this.sealTimer) clearTimeout(this.sealTimer);
    this.sealTimer = null;
    const b = this.sealOpen;
    if (!b) return;
    this.sealOpen = null;
    if (b.n === 0) return;
    this.sealQueue.push(b);
    const n = b.n;
    (this.core.cipherPool as CipherPool).seal(b.mem, b.meta.subarray(0, 3 * n), b.lens.subarray(0, n), b.src.subarray(0, 2 * n), b.dst.subarray(0, 2 * n)).then(
      () => {
        b.sealed = true;
        this.sealDone(b);
      },
      () => this.sealDone(b), // the worker failed or closed: sealed inline instead (appendSealed)
    );
  }

  private sealDone(b: SealBatch): void {
    b.ready = true;
    while (this.sealQueue.length > 0 && (this.sealQueue[0] as SealBatch).ready) {
      const head = this.sealQueue.shift() as SealBatch;
      this.sealingBlocks -= head.n;
      this.appendSealed(head);
      head.resolve();
    }
    this.scheduleSync();
  }

  /**
   * Append a batch's sealed records to the WAL, in seq order, as commitSlot does
   * for a record sealed inline. A batch the worker did not seal (all of it) is
   * sealed here, with the same nonce, AAD and payload (LZ4 is deterministic; a
   * compressed payload is compressed again, since its sealed room may hold part of
   * the worker's output), so the bytes are the ones the worker would have made:
   * one seq still has one content.
   */
  private appendSealed(b: SealBatch): void {
    const { arena, blockSize: bs } = this.core;
    const cipher = this.core.cipher as VolumeCipher;
    for (let k = 0; k < b.n; k++) {
      const slot = b.slots[k] as number;
      const block = b.meta[3 * k] as number;
      const seq = b.meta[3 * k + 1] as number;
      const flags = b.meta[3 * k + 2] as number;
      const len = (b.lens[k] as number) + SEAL_OVERHEAD;
      const dst = arena.sealedSlab(slot);
      const at = arena.sealedOffset(slot);
      try {
        if (!b.sealed) {
          const o = arena.offset(slot);
          const raw = arena.slab(slot).subarray(o, o + bs);
          const payload = (flags & FLAG_LZ4) !== 0 ? (compressBlock(raw) as Buffer) : raw;
          cipher.sealInto(DOMAIN_RECORD, { block, seq, flags }, payload, dst, at, true);
        }
        if (!this.core.failed) {
          arena.setSealedRecord(slot, this.wal.append(seq, block, flags, bs, dst, at, at + len), len, flags);
          this.pushUnsynced(slot, seq);
        }
      } catch (err) {
        // The WAL failed (the volume is poisoned by it): the record is dropped, never
        // acknowledged as durable; the next write or fsync reports the failure.
        this.failUnlessNoSpace(err);
      }
      arena.endSeal(slot);
    }
  }

  /** The records not yet durable (in the worker or the WAL) at which a writer waits for the seals (afterSealApply). */
  private sealLimitBytes(): number {
    const rec = RECORD_HEADER + this.core.blockSize;
    return this.core.durability === 'batched' ? 2 * this.core.tunables.batchBlocks * rec : this.flusher.waveRecords * rec;
  }

  /** Resolves when every record sealed so far (or being sealed) is in the WAL. */
  async sealsSettled(): Promise<void> {
    this.sendSeals();
    while (this.sealQueue.length > 0) await (this.sealQueue[this.sealQueue.length - 1] as SealBatch).appended;
  }

  /**
   * A write whose records are (partly) still in the worker: when it must wait for
   * the disk (strict), or the records not yet durable (in the worker or the WAL)
   * reach the amount at which afterApply() makes a writer wait, it waits for the
   * seals, then as afterApply() says; otherwise it is acknowledged now, and the
   * sync is scheduled when the records land (scheduleSync).
   */
  private afterSealApply(): Promise<void> {
    if (this.sealingBlocks === 0) return this.afterApply();
    const mode = this.core.durability;
    const rec = RECORD_HEADER + this.core.blockSize;
    const behind = this.wal.unsyncedBytes + this.sealingBlocks * rec;
    if (mode === 'strict' || behind >= this.sealLimitBytes()) return this.sealsSettled().then(() => this.afterApply());
    return RESOLVED;
  }

  /** Records appended from the worker's batches start the group commit afterApply() would have started for them. */
  private scheduleSync(): void {
    const mode = this.core.durability;
    if (mode === 'batched') {
      this.batchedCommitNoWait();
    } else if (mode !== 'strict') {
      const cap = this.flusher.waveRecords * (RECORD_HEADER + this.core.blockSize);
      if (this.wal.unsyncedBytes >= cap / 2) this.wal.kickSync();
    }
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
    this.batchedCommitNoWait();
    return RESOLVED;
  }

  private batchedCommitNoWait(): void {
    const t = this.core.tunables;
    if (this.wal.unsyncedBlocks >= t.batchBlocks) {
      this.backgroundSync();
    } else if (!this.batchTimer && this.wal.hasUnsynced) {
      this.batchTimer = setTimeout(() => {
        this.batchTimer = null;
        this.backgroundSync();
      }, t.batchMs);
    }
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
   * batched, relaxed). In async mode a sync is started and not awaited. In remote
   * mode it is durable in the backend (chunk objects and map delta), not only in
   * the local WAL: the local disk may be gone at the next open.
   */
  async fsync(): Promise<void> {
    await this.drain();
    await this.sealsSettled();
    this.checkNoneDropped();
    if (this.core.durability === 'async') {
      this.backgroundSync();
      return;
    }
    if (this.core.durability === 'remote') {
      this.check();
      await this.flusher.persist();
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
    // Everything means every write acknowledged so far, also those still being sealed.
    if (upTo === undefined && this.sealQueue.length + (this.sealOpen ? 1 : 0) > 0) await this.sealsSettled();
    this.checkNoneDropped();
    try {
      await this.wal.sync(upTo);
    } catch (err) {
      throw this.failUnlessNoSpace(err);
    }
  }

  /**
   * Records that come back from the worker after the volume failed are dropped, not
   * appended (appendSealed), and the WAL itself may be fine: its sync would then
   * cover everything it holds and resolve, and an fsync would report writes durable
   * that are in no WAL. So once the volume has failed, no sync reports anything
   * durable (seen in the crash sweeps: a flush cut by the power failed the volume
   * while an fsync waited for a batch in the worker; the fsync returned, the batch
   * was gone).
   */
  private checkNoneDropped(): void {
    if (this.core.failed) throw this.core.failed;
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
    this.sendSeals(); // its timer would have sent it
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

/**
 * A full block of zeros (a zero write becomes a zero record). Almost every data
 * block fails on its first or last byte, so the 4 KiB write path pays two byte
 * reads; only (nearly) zero blocks get the full compare, which is a native memcmp.
 */
/** Whether any whole block of the write [offset, offset + length) is all zeros (data === null: a trim, all zeros). */
function hasZeroBlock(data: Uint8Array | null, offset: number, length: number, bs: number): boolean {
  if (data === null) return true;
  const end = offset + length;
  for (let pos = Math.ceil(offset / bs) * bs; pos + bs <= end; pos += bs) if (isZeroBlock(data, pos - offset, bs)) return true;
  return false;
}

function isZeroBlock(data: Uint8Array, at: number, bs: number): boolean {
  if (data[at] !== 0 || data[at + bs - 1] !== 0) return false;
  const view = Buffer.from(data.buffer, data.byteOffset + at, bs);
  if (!zeros || zeros.length !== bs) zeros = Buffer.alloc(bs);
  return view.equals(zeros);
}
let zeros: Buffer | null = null;
