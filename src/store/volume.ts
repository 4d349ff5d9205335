import { VbfsError } from '../errors';
import type { BackendCounters } from '../backend/backend';
import type { BlockState } from '../map/block-index';
import { VolumeLock } from './lock';
import { LatencyWindow } from './latency';
import { collectIdleGarbage } from './idle-gc';
import { Flusher } from './flusher';
import { Compactor, surveyChunks, type CompactNowOptions, type CompactionResult } from './compactor';
import { Reader } from './reader';
import { recover } from './recovery';
import type { Durability, VolumeInfo } from '../types';
import type { VolumeOpenOptions, VolumeStats } from './types';
import { VolumeCore, type VolumeContext } from './volume-core';
import { Writer } from './writer';

/** The backend's counters as VolumeStats fields (0 where the backend does not count). */
function backendStats(
  c: BackendCounters,
): Pick<VolumeStats, 'backendRequests' | 'backendRetries' | 'backendErrors' | 'diskCacheHits' | 'diskCacheMisses' | 'diskCacheBytes'> {
  return {
    backendRequests: c.requests ?? 0,
    backendRetries: c.retries ?? 0,
    backendErrors: c.errors ?? 0,
    diskCacheHits: c.diskCacheHits ?? 0,
    diskCacheMisses: c.diskCacheMisses ?? 0,
    diskCacheBytes: c.diskCacheBytes ?? 0,
  };
}

export { DEFAULT_TUNABLES, type VolumeContext } from './volume-core';

const RESOLVED: Promise<void> = Promise.resolve();

/**
 * A volume: a fixed-size array of blocks. This is the facade: it checks
 * arguments and state, and hands the work to its parts, each in its own file:
 *
 *   writer.ts    write -> arena + WAL -> group commit (the durability modes)
 *   reader.ts    one index lookup per block, chunk runs, readahead, damaged records
 *   flusher.ts   arena -> chunk objects -> map commit -> WAL reclaim, dead chunks
 *   recovery.ts  open(): map load, orphan chunks, WAL replay, format upgrade
 *   compactor.ts mostly-dead chunks -> new chunks -> map commit -> old chunks deleted
 *
 * They share a VolumeCore (index, arena, cache, map store, seq, failure state).
 * The writer and the flusher exist only in writable mode.
 */
export class Volume {
  private readonly core: VolumeCore;
  private readonly reader: Reader;
  /** The writer and the flusher: writable mode only. */
  private writer: Writer | null = null;
  private flusher: Flusher | null = null;
  private compactor: Compactor | null = null;
  private lock: VolumeLock | null = null;
  private closing: Promise<void> | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private readonly fsyncLatency = new LatencyWindow(1024);

  private constructor(info: VolumeInfo, ctx: VolumeContext, opts: VolumeOpenOptions) {
    this.core = new VolumeCore(info, ctx, opts);
    this.reader = new Reader(this.core, () => this.flusher?.processDeadChunks());
  }

  /** Open = recover (recovery.ts), then start the writer and the flusher unless read-only. */
  static async open(info: VolumeInfo, ctx: VolumeContext, opts: VolumeOpenOptions = {}): Promise<Volume> {
    const v = new Volume(info, ctx, opts);
    const core = v.core;
    v.idleTimer = setInterval(() => v.trimIfIdle(), Math.max(10, Math.min(core.tunables.idleTrimMs, 5000)));
    v.idleTimer.unref();
    if (!core.readOnly) v.lock = await VolumeLock.acquire(ctx.fileIO, `${ctx.dir}/LOCK`, `volume '${info.name}'`);
    try {
      const walStart = await recover(core);
      if (!core.readOnly) {
        // The writer creates the WAL; the flusher drains it, and the writer kicks the flusher.
        const writer = new Writer(core, v.reader, walStart);
        const flusher = new Flusher(core, writer);
        writer.connect(flusher);
        v.writer = writer;
        v.flusher = flusher;
        v.compactor = new Compactor(core, flusher);
      }
    } catch (err) {
      if (v.idleTimer) clearInterval(v.idleTimer);
      await v.lock?.release().catch(() => undefined);
      throw err;
    }
    return v;
  }

  /** Fail the volume from outside, as a fatal engine error would (a lost lease). */
  failWith(err: VbfsError): void {
    this.core.fail(err);
  }

  get name(): string {
    return this.core.name;
  }
  get size(): number {
    return this.core.size;
  }
  get blockSize(): number {
    return this.core.blockSize;
  }
  get durability(): Durability {
    return this.core.durability;
  }
  get readOnly(): boolean {
    return this.core.readOnly;
  }
  /** The volume's metadata (volume.json) as of open; only the format upgrade changes it. */
  get info(): VolumeInfo {
    return this.core.info;
  }
  get isClosed(): boolean {
    return this.core.closed;
  }

  /**
   * This volume's share of the store's memory budget: its write buffer and read
   * cache hold at most this much (and at most their own tunables) from now on.
   */
  setMemoryShare(bytes: number): void {
    const { tunables, arena, cache } = this.core;
    const write = Math.min(tunables.writeBufferBytes, Math.floor(bytes * 0.8));
    arena.setLimit(Math.floor(write / arena.bytesPerSlot));
    cache.setLimit(Math.min(tunables.cacheBytes, bytes - write));
  }

  /** Bytes held by the write buffer (with the LZ4 payloads it keeps) and the read cache (what the memory budget counts). */
  get memoryBytes(): number {
    const { arena, cache } = this.core;
    return arena.bytes + arena.packedBytes + cache.slabBytes;
  }

  /** No I/O for idleTrimMs and nothing left to flush: give the buffers back. */
  private trimIfIdle(): void {
    const { closed, lastIo, tunables, readsInFlight, arena, cache } = this.core;
    if (closed || performance.now() - lastIo < tunables.idleTrimMs || this.flusher?.running || readsInFlight > 0) return;
    const before = this.memoryBytes + (this.flusher?.pooledBuffers ?? 0);
    if (arena.used === 0) arena.trim();
    cache.trim();
    this.reader.runBuffers.trim();
    this.flusher?.trimBuffers();
    if (before > this.memoryBytes) collectIdleGarbage();
  }

  /**
   * Write `data` at byte `offset` (writer.ts). `data` is read only until the
   * returned promise settles (callers may reuse it after that); what the settled
   * promise guarantees about durability depends on the mode.
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    let writer: Writer;
    try {
      writer = this.checkWritable();
      this.checkRange(offset, data.length);
    } catch (err) {
      return Promise.reject(err);
    }
    if (data.length === 0) return RESOLVED;
    return writer.write(offset, data);
  }

  /**
   * Trim (discard) `length` bytes at `offset`: they read as zeros from now on.
   * Whole blocks become Empty through a zero record in the WAL (no payload, no
   * write-buffer slot, and once flushed no chunk space: their old chunk copies stop
   * counting as live); the partial blocks at either end are zeroed by a
   * read-modify-write, like a write. Ordered with writes, and durable like one:
   * at the next fsync, or as the durability mode says.
   */
  trim(offset: number, length: number): Promise<void> {
    let writer: Writer;
    try {
      writer = this.checkWritable();
      this.checkRange(offset, length);
    } catch (err) {
      return Promise.reject(err);
    }
    if (length === 0) return RESOLVED;
    return writer.trim(offset, length);
  }

  /**
   * Everything written before this call is durable when it resolves (strict,
   * batched, relaxed). In async mode a sync is started and not awaited.
   */
  async fsync(): Promise<void> {
    const writer = this.checkWritable();
    const t0 = performance.now();
    this.core.counters.fsyncs++;
    await writer.fsync();
    // Checked again once synced: a lease that ran out during the WAL sync fences this
    // writer (another machine may take over without this WAL), so nothing is acknowledged.
    this.core.ctx.beforeWrite?.();
    if (this.durability !== 'async') this.fsyncLatency.add(performance.now() - t0);
  }

  /** Pack everything written so far into chunk objects (waits for a running flush first). */
  async flush(): Promise<void> {
    const writer = this.checkWritable();
    await writer.drain();
    await writer.flusher.flush();
  }

  /**
   * Compact now (store/compactor.ts), whatever the start threshold says: down to
   * compactTargetRatio and no chunk below compactChunkLive, or (`full`) every chunk
   * that holds dead records. Not rate limited. Waits for a running compaction first.
   */
  async compact(opts: CompactNowOptions = {}): Promise<CompactionResult> {
    this.checkWritable();
    return (this.compactor as Compactor).compactNow(opts);
  }

  /**
   * Pause or resume background compaction (a running one ends after its current
   * round); compact() still runs. For a program that wants its I/O alone for a while.
   */
  setBackgroundCompaction(on: boolean): void {
    this.compactor?.setPaused(!on);
  }

  /**
   * Live and stored bytes, as stats() has them, after the chunks that existed at
   * open have had their headers read (the map names only their live records).
   */
  async space(): Promise<{ liveBytes: number; storedBytes: number; chunks: number }> {
    this.core.checkOpen();
    if (this.compactor) await this.compactor.surveyed();
    else await surveyChunks(this.core);
    return this.core.index.space();
  }

  /** Read `length` bytes at `offset`; never-written ranges read as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const out = Buffer.allocUnsafe(length);
    await this.readInto(offset, out);
    return out;
  }

  /**
   * Read `out.length` bytes at `offset` straight into `out` (the FUSE layer passes
   * the kernel's buffer: no intermediate allocation or copy).
   */
  async readInto(offset: number, out: Buffer): Promise<void> {
    this.core.checkOpen();
    this.checkRange(offset, out.length);
    await this.reader.readInto(offset, out);
  }

  /** The state of one block (for tests, tools and the .stats file). */
  blockState(block: number): BlockState {
    return this.core.index.state(block);
  }

  /** Flush, sync, checkpoint, release the lock. Idempotent. */
  close(): Promise<void> {
    if (!this.closing) {
      this.core.closing = true;
      this.closing = this.doClose();
    }
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const core = this.core;
    this.flusher?.stopTimers();
    await this.compactor?.stop();
    this.writer?.stopTimers();
    if (this.idleTimer) clearInterval(this.idleTimer);
    // Writers waiting for room while the backend is down would wait for good (no
    // flush is retried from here on): they fail with VBFS_CLOSED; none of them was
    // acknowledged, and what was is in the WAL.
    if (this.flusher?.backendDown) core.arena.wakeAll();
    let unflushedBytes: number;
    try {
      if (this.writer && this.flusher && !core.failed) {
        // Writers still queued may need background flushes to make room.
        await this.writer.drain();
        await this.flusher.finish();
      }
      // Taken before the WAL closes: blocks still in the write buffer were never flushed.
      unflushedBytes = core.arena.used * core.blockSize;
    } finally {
      core.closed = true;
      core.arena.wakeAll();
      await this.writer?.wal.close();
      await core.map.close().catch(() => undefined);
      await this.lock?.release().catch(() => undefined);
      await core.cipherPool?.close().catch(() => undefined);
      await core.ctx.afterClose?.().catch(() => undefined);
      core.ctx.onClose?.();
    }
    // A fenced writer (lease lost) flushed nothing: what it had acknowledged but not
    // flushed is only in its local WAL, and a takeover that changed the volume sets
    // that aside. A close that returned normally would tell an unmount all went well.
    const lost = core.failed;
    if (lost?.code === 'VBFS_LEASE_LOST' && (unflushedBytes > 0 || core.zeros.length > 0)) {
      throw new VbfsError(
        'VBFS_LEASE_LOST',
        `volume '${core.name}': lease lost, ${unflushedBytes} bytes of writes (and ${core.zeros.length} trims) were not flushed to the bucket; ` +
          'they stay in the local WAL (replayed by the next mount from this store directory unless another writer has changed the volume since)',
        { ...lost.details, volume: core.name, unflushedBytes, unflushedTrims: core.zeros.length },
        { cause: lost },
      );
    }
  }

  stats(): VolumeStats {
    const { counters, arena, cache, map, index, blockSize, seq } = this.core;
    const wal = this.writer?.wal;
    const states = index.stateCounts();
    return {
      ...counters,
      walWrites: wal?.writes ?? 0,
      walSyncs: wal?.syncs ?? 0,
      walBytes: wal?.bytes ?? 0,
      fsyncP50Ms: this.fsyncLatency.quantile(0.5),
      fsyncP99Ms: this.fsyncLatency.quantile(0.99),
      pendingBytes: arena.used * blockSize,
      blocksHot: states.hot,
      blocksPending: states.pending,
      blocksPersisted: states.persisted,
      blocksCached: states.cached,
      zeroBlocksUnflushed: index.pendingZeros,
      cacheHits: cache.hits,
      cacheMisses: cache.misses,
      cacheBytes: cache.bytes,
      checkpoints: map.checkpoints,
      errors: counters.errors,
      seq,
      seqReserved: this.writer?.seqs.reserved ?? 0,
      seqReservations: this.writer?.seqs.reservations ?? 0,
      seqReserveWaits: this.writer?.seqs.waits ?? 0,
      ...backendStats(this.core.ctx.backend.counters?.() ?? {}),
      backendDown: this.flusher?.backendDown ? 1 : 0,
      ...this.spaceStats(),
    };
  }

  private spaceStats(): Pick<
    VolumeStats,
    | 'liveBytes'
    | 'storedBytes'
    | 'spaceAmplification'
    | 'compacting'
    | 'compactProgress'
    | 'compactRounds'
    | 'compactedChunks'
    | 'compactBytesMoved'
    | 'compactBytesReclaimed'
  > {
    const { liveBytes, storedBytes } = this.core.index.space();
    const c = this.compactor;
    return {
      liveBytes,
      storedBytes,
      spaceAmplification: liveBytes > 0 ? storedBytes / liveBytes : 0,
      compacting: c?.running ? 1 : 0,
      compactProgress: c?.running && c.runReclaimable > 0 ? Math.min(1, c.runReclaimed / c.runReclaimable) : 0,
      compactRounds: c?.rounds ?? 0,
      compactedChunks: c?.chunksCompacted ?? 0,
      compactBytesMoved: c?.bytesMoved ?? 0,
      compactBytesReclaimed: c?.bytesReclaimed ?? 0,
    };
  }

  /** The writer, if writes are allowed now (open, writable, not poisoned, the WAL not waiting for space). */
  private checkWritable(): Writer {
    this.core.checkOpen();
    if (!this.writer) throw new VbfsError('VBFS_READ_ONLY', `volume '${this.name}' is open read-only`);
    this.core.ctx.beforeWrite?.();
    this.writer.check();
    return this.writer;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid offset ${String(offset)}`, { offset });
    if (!Number.isSafeInteger(length) || length < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid length ${String(length)}`, { length });
    if (offset + length > this.size) {
      throw new VbfsError('VBFS_OUT_OF_RANGE', `range ${offset}+${length} is past the end of volume '${this.name}' (${this.size} bytes)`, { offset, length });
    }
  }
}
