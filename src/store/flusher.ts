import { VbfsError, ioError, isNoSpace, isVbfsError } from '../errors';
import { ChunkBuilder, type BuiltChunk } from '../chunk/chunk-builder';
import { chunkKey } from '../chunk/chunk';
import { SEGMENT_HEADER } from '../format/segment-header';
import type { WalWriter } from '../wal/wal-writer';
import type { FlushControl, Writer } from './writer';
import type { VolumeCore } from './volume-core';

/** Zero records one flush turns into map tombstones at most (a 'Z' frame stays far below MAX_FRAME). */
const MAX_TRIMS_PER_FLUSH = 1024 * 1024;
/** Longest wait between flush attempts while the backend is down. */
const BACKEND_RETRY_MAX_MS = 30_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A remote fsync waiting for flush number `gen` (or a later one) to end. */
interface FlushWaiter {
  gen: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * A flush failed because the backend did not take a chunk object (S3 unreachable,
 * 5xx past the retries, ...): the data is still in the write buffer and the WAL,
 * so the volume is not failed; flushes are retried until the backend answers.
 */
export function isBackendDown(err: unknown): err is VbfsError {
  return isVbfsError(err) && err.details['backendDown'] === true;
}

/**
 * The flush path: write-buffer slots -> chunk objects -> map commit -> WAL reclaim.
 *
 * Scheduling: a flush starts by size (the writer kicks it when flushBytes are in
 * the buffer), by time (every flushIntervalMs), by backpressure (a writer waits
 * for room), on flush() and on close(). One runs at a time; a request that
 * arrives meanwhile makes it go again when it ends.
 *
 * One flush: snapshot the current version of every in-memory block (pinning the
 * slots), sync the WAL and seal its segment, then wave by wave (waveChunks chunks
 * written in parallel): build the chunks, put them, commit their locations to the
 * map log with one fdatasync, point the index at them and free the slots. Up to
 * flushWaves waves are in flight: the next wave's chunks are built and put while a
 * wave's map delta commits (over S3 that commit is a PUT of its own, and the bucket
 * took no chunk meanwhile). Then drop the WAL segments the snapshot covered, write a
 * checkpoint when the map log has grown, and delete the chunk objects no block
 * points at any more.
 *
 * The rules that make overlapping waves safe (each holds for one wave too):
 *  - a wave's map delta names only chunks whose put resolved: it is committed after
 *    its own puts, never before;
 *  - deltas are committed in wave order (a wave waits for the one before it), so a
 *    crash leaves a prefix of the waves in the map and the rest as orphans; chunk ids
 *    are taken per wave before any await, so those orphans hold the highest flusher
 *    ids (recovery deletes every chunk the map does not reference, whatever its id);
 *  - a wave after one that was not committed is not committed either (the error of
 *    the first goes to the caller); whatever it wrote is deleted as dead;
 *  - the WAL segments are reclaimed only after every wave and the trim commit of
 *    the flush are durable, and the checkpoint comes after that (the compactor does
 *    not checkpoint while a flush runs);
 *  - a chunk goes to the dead list only from index.takeDeadChunks() after a durable
 *    commit superseded its last block, or when no delta named it;
 *  - fencing is the backend's: a fenced writer's puts and deltas fail, and a wave
 *    after one that failed is not committed.
 */
export class Flusher implements FlushControl {
  /** The last flush failed for lack of space; retried every noSpaceRetryMs (not a failure). */
  diskFull: VbfsError | null = null;
  /** Flushes fail because the backend does not take chunk objects; retried with backoff, writers wait meanwhile. */
  backendDown: VbfsError | null = null;
  private backendRetries = 0;
  private backendTimer: NodeJS.Timeout | null = null;
  private run: Promise<void> | null = null;
  /** Flushes started so far (the number of the running one); remote fsyncs wait for a number (persist). */
  private flushesStarted = 0;
  private waiters: FlushWaiter[] = [];
  private again = false;
  private noMoreKicks = false;
  private intervalTimer: NodeJS.Timeout | null = null;
  private diskFullTimer: NodeJS.Timeout | null = null;
  private deadChunks: number[] = [];
  private readonly builder: ChunkBuilder;
  private readonly wal: WalWriter;
  /** Chunk objects written in parallel per wave (one map commit per wave). */
  private readonly waveChunks: number;
  /** Waves being written or waiting for their map commit at once. */
  private readonly wavesInFlight: number;

  constructor(
    private readonly core: VolumeCore,
    private readonly writer: Writer,
  ) {
    this.wal = writer.wal;
    this.waveChunks = core.tunables.flushWaveChunks;
    this.wavesInFlight = core.tunables.flushWaves;
    // One buffer per chunk object in flight, reused across waves.
    this.builder = new ChunkBuilder(core.info.id, core.blockSize, core.tunables.chunkBytes, this.waveChunks * this.wavesInFlight);
    // Chunks the index dropped while loading the map are orphans, which recovery deleted.
    core.index.takeDeadChunks();
    this.intervalTimer = setInterval(() => {
      if (this.hasWork) this.kick();
    }, core.tunables.flushIntervalMs);
    this.intervalTimer.unref();
    if (core.arena.used * core.blockSize >= core.tunables.flushBytes) this.kick();
  }

  /** Something to flush: blocks in the write buffer, or zero records without a map tombstone. */
  private get hasWork(): boolean {
    return this.core.arena.used > 0 || this.core.zeros.length > 0;
  }

  /** A flush is running. */
  get running(): boolean {
    return this.run !== null;
  }

  /** Chunk buffers held for reuse (an idle volume drops them). */
  get pooledBuffers(): number {
    return this.builder.pooled;
  }

  trimBuffers(): void {
    this.builder.trim();
  }

  /**
   * Records one flush wave writes: waveChunks chunks, but a wave never pins more
   * than a quarter of the write buffer, so with a small buffer writers still find
   * room while a wave is being written, and the wait for room stays one (small) wave.
   */
  get waveRecords(): number {
    const perChunk = this.core.recordsPerChunk;
    return perChunk * Math.max(1, Math.min(this.waveChunks, Math.floor(this.core.arena.limitSlots / 4 / perChunk)));
  }

  /**
   * Start a background flush, or ask the running one to go again when it ends.
   * While the backend is down only the retry timer starts one (`retry`): writers
   * waiting for room kick on every wake-up, and must not turn an outage into a
   * storm of doomed PUTs.
   */
  kick(retry = false): void {
    if (this.core.closed || this.noMoreKicks || this.core.failed) return;
    if (this.backendDown && !retry) return;
    if (this.run) {
      this.again = true;
      return;
    }
    this.start().catch((err) => {
      this.writer.failUnlessNoSpace(err);
    });
  }

  /** Pack everything written so far into chunk objects (waits for a running flush first). */
  async flush(): Promise<void> {
    await this.idle();
    this.writer.check();
    try {
      await this.start();
    } catch (err) {
      throw this.writer.failUnlessNoSpace(err);
    }
  }

  /**
   * remote durability (fsync): resolves once everything written before the call is
   * in chunk objects on the backend and its map delta committed there. Callers that
   * arrive while a flush runs share the next one (group commit): that flush's
   * snapshot is taken after all of them, so it covers them all. While the backend is
   * down the fsync waits for it, like a writer waiting for room (no error: a loop
   * device would pass an EIO on to its filesystem), until the volume fails or closes.
   */
  async persist(): Promise<void> {
    for (;;) {
      this.writer.check();
      if (this.backendDown) {
        await sleep(Math.min(1000, this.core.tunables.backendRetryMs));
        continue;
      }
      try {
        await this.nextFlush();
        return;
      } catch (err) {
        if (isVbfsError(err, 'VBFS_CLOSED')) throw err;
        if (!isBackendDown(err) || this.core.closing) throw this.writer.failUnlessNoSpace(err);
      }
    }
  }

  /**
   * A promise for the first flush that starts after this call (its snapshot then
   * holds everything written so far): one is started now, or, while one runs, the
   * running one goes again when it ends (start()).
   */
  private nextFlush(): Promise<void> {
    const gen = this.flushesStarted + 1;
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ gen, resolve, reject }));
    if (this.run) this.again = true;
    else this.start().catch(() => undefined); // its outcome reaches the waiters
    return done;
  }

  /** Flush number `gen` ended: settle the waiters it covers. */
  private settleWaiters(gen: number, err?: unknown): void {
    if (this.waiters.length === 0) return;
    const later: FlushWaiter[] = [];
    for (const w of this.waiters) {
      if (w.gen > gen) later.push(w);
      else if (err === undefined) w.resolve();
      else w.reject(err);
    }
    this.waiters = later;
  }

  /** No flush runs and none was kicked: waiters that arrived during the last one still need theirs. */
  private serveWaiters(): void {
    if (this.run || this.waiters.length === 0) return;
    const core = this.core;
    const refuse = core.failed ?? this.backendDown ?? (core.closed ? new VbfsError('VBFS_CLOSED', `volume '${core.name}' is closed`) : null);
    if (refuse) this.settleWaiters(Infinity, refuse);
    else this.start().catch(() => undefined);
  }

  /**
   * close(): no flush starts after this but the final one, which packs whatever
   * is left; then the WAL is synced and a checkpoint written if the map log holds
   * anything, so the next open loads one file.
   */
  async finish(): Promise<void> {
    this.stopTimers();
    this.noMoreKicks = true;
    await this.idle();
    if (this.core.failed) throw this.core.failed;
    try {
      await this.start();
    } catch (err) {
      if (!isBackendDown(err)) throw err;
      // The data is in the WAL, synced below: the next open replays it and flushes
      // it then. Closing must not wait for a backend that may be gone for hours.
      await this.writer.syncWal();
      this.core.ctx.logger.warn('closed while the backend is down: unflushed writes stay in the WAL until the volume is opened again', {
        volume: this.core.name,
        pendingBytes: this.core.arena.used * this.core.blockSize,
        error: err.message,
      });
      return;
    }
    await this.writer.syncWal();
    if (this.core.map.logBytes > 0) await this.checkpoint();
    this.processDeadChunks();
  }

  stopTimers(): void {
    if (this.intervalTimer) clearInterval(this.intervalTimer);
    if (this.diskFullTimer) clearTimeout(this.diskFullTimer);
    if (this.backendTimer) clearTimeout(this.backendTimer);
    this.intervalTimer = null;
    this.diskFullTimer = null;
    this.backendTimer = null;
  }

  private async idle(): Promise<void> {
    while (this.run) await this.run.catch(() => undefined);
  }

  /**
   * Every flush goes through here, whoever started it (size, timer, backpressure,
   * flush(), close()), so a request that arrived while one was running is never
   * dropped: when it ends, it goes again if asked or if enough is pending.
   */
  private start(): Promise<void> {
    const { arena, blockSize, tunables } = this.core;
    let progress = false;
    let noSpace = false;
    const gen = ++this.flushesStarted;
    const run = this.flushOnce()
      .then(
        (n) => {
          progress = n > 0;
          this.settleWaiters(gen);
          if (this.diskFull) {
            this.diskFull = null;
            this.core.ctx.logger.info('flush succeeded again after running out of space', { volume: this.core.name });
          }
          if (this.backendDown) {
            this.backendDown = null;
            this.backendRetries = 0;
            this.core.ctx.logger.info('the backend answers again: flushing resumed', { volume: this.core.name });
          }
        },
        (err: unknown) => {
          noSpace = this.noteDiskFull(err) || this.noteBackendDown(err);
          this.settleWaiters(gen, err);
          throw err;
        },
      )
      .finally(() => {
        this.run = null;
        // Go again if asked while running, or if this one made progress and enough
        // is still pending. Never after an empty snapshot on its own: slots held by
        // a write still in progress (a read-modify-write) count as used but cannot
        // be flushed, and re-kicking on them spins forever. Nor after running out
        // of space: the retry timer goes again.
        const again = !noSpace && (this.again || (progress && (arena.used * blockSize >= tunables.flushBytes || arena.full)));
        this.again = false;
        if (again && this.hasWork) this.kick();
        this.serveWaiters();
      });
    this.run = run;
    return run;
  }

  /**
   * A flush that failed for lack of space is not a failure of the volume: its
   * data is still in the write buffer and the WAL, the chunk objects of the failed
   * wave were not committed, and the map log rewrites a failed append in place. So
   * it is retried every noSpaceRetryMs; meanwhile writers that need room get the
   * error instead of waiting. True if err was such a case.
   */
  private noteDiskFull(err: unknown): boolean {
    const core = this.core;
    if (!isNoSpace(err) || core.failed || this.wal.error) return false;
    if (!this.diskFull) core.ctx.logger.warn('store disk full: flush failed; retrying until space returns', { volume: core.name, error: String(err) });
    this.diskFull = ioError(`volume '${core.name}': store disk full`, err);
    if (!this.diskFullTimer && !core.closed && !core.closing) {
      this.diskFullTimer = setTimeout(() => {
        this.diskFullTimer = null;
        if (this.hasWork) this.kick();
      }, core.tunables.noSpaceRetryMs);
      this.diskFullTimer.unref();
    }
    core.arena.wakeAll(); // writers waiting for room: refused now (Writer.waitForSlot)
    this.processDeadChunks(); // the failed wave's written chunks: their space back
    return true;
  }

  /**
   * The backend did not take a wave's chunk objects: keep the data where it is
   * (write buffer + WAL), try again after backendRetryMs, doubling up to 30 s,
   * and let writers wait for room meanwhile (they are woken when a flush
   * succeeds). True if err was such a case.
   */
  private noteBackendDown(err: unknown): boolean {
    const core = this.core;
    if (!isBackendDown(err) || core.failed || this.wal.error) return false;
    if (!this.backendDown) {
      core.ctx.logger.warn('backend down: flush failed; writes stay in the WAL, retrying until the backend answers', { volume: core.name, error: err.message });
    }
    this.backendDown = err;
    if (core.closing) core.arena.wakeAll(); // closing: writers waiting for room give up (Volume.doClose)
    if (!this.backendTimer && !core.closed && !core.closing) {
      const delay = Math.min(BACKEND_RETRY_MAX_MS, core.tunables.backendRetryMs * 2 ** Math.min(this.backendRetries++, 20));
      this.backendTimer = setTimeout(() => {
        this.backendTimer = null;
        if (this.hasWork) this.kick(true);
      }, delay);
      this.backendTimer.unref();
    }
    this.processDeadChunks(); // chunks of the failed wave that did land: nothing points at them
    return true;
  }

  /**
   * One flush. Everything in a sealed WAL segment is either in the snapshot or
   * superseded by something that is, so after the commits the segment is redundant.
   */
  private async flushOnce(): Promise<number> {
    const { arena } = this.core;
    const wal = this.wal;
    const entries = this.snapshot();
    // Zero records logged so far, taken in the same tick as the snapshot and the
    // seal below: each is in the sealed segments, so its tombstone must be
    // committed before they are reclaimed.
    const zeros = this.takeZeros();
    if (entries.length === 0 && zeros.count === 0) {
      // Nothing in memory: every WAL record left (e.g. replayed ones already in
      // chunks) is redundant. Seal and drop them so they are not replayed forever.
      if (wal.segmentCount > 0 && arena.used === 0) await wal.reclaim(await wal.rotate());
      return 0;
    }
    let sealed: number;
    try {
      // Both started in this same tick (the snapshot and the seal must agree), and
      // both awaited together so a failing WAL leaves no unobserved rejection.
      [, sealed] = await Promise.all([wal.sync(), wal.rotate()]);
      // Records still in the crypto worker (writer.ts) land in the new segment; the
      // chunks need their sealed payloads.
      await this.writer.sealsSettled();
      if (this.core.failed) throw this.core.failed; // a record the WAL refused has no sealed payload
      for (const slot of entries) if (arena.isSealing(slot)) throw new VbfsError('VBFS_IO', `internal: slot ${slot} is still being sealed`);
    } catch (err) {
      for (const slot of entries) arena.unpin(slot);
      this.core.zeros.restore(zeros.blocks, zeros.seqs, zeros.count);
      throw err;
    }
    // Slots are unpinned wave by wave: a slot whose block the wave persisted (or
    // that a newer write superseded meanwhile) is free as soon as its wave is
    // committed, so a writer waiting for room waits for one wave, not for the
    // whole snapshot (up to the whole write buffer) to reach the backend.
    let unpinned = 0;
    // Waves being written or waiting for their commit, oldest first (at most wavesInFlight).
    const waves: Promise<void>[] = [];
    try {
      // Grouped by raw size: compressed records are never larger, so a group never overflows a chunk.
      const perChunk = this.core.recordsPerChunk;
      const perWave = this.waveRecords;
      let committed: Promise<void> = Promise.resolve();
      for (let i = 0; i < entries.length; i += perWave) {
        if (waves.length >= this.wavesInFlight) await waves.shift();
        // The WAL's queued writes go to the disk before the next wave's chunks: on a
        // slow disk a writer waiting for WAL room (walBackpressure) then waits for
        // at most one wave, instead of for every wave the flusher queues ahead of it.
        if (i > 0) await wal.sync();
        const end = Math.min(entries.length, i + perWave);
        const wave: number[][] = [];
        for (let k = i; k < end; k += perChunk) wave.push(entries.slice(k, Math.min(k + perChunk, end)));
        committed = this.writeWave(wave, committed).then(() => {
          // Waves end in order, so the slots before `end` are all committed.
          for (; unpinned < end; unpinned++) arena.unpin(entries[unpinned] as number);
        });
        committed.catch(() => undefined); // awaited in order (waves); the next wave fails with this one's error
        waves.push(committed);
      }
      while (waves.length > 0) await waves.shift();
      if (zeros.count > 0) await this.commitTrims(zeros);
      zeros.count = 0;
    } finally {
      // No wave may still read the slots (a chunk being built) or commit them.
      await Promise.allSettled(waves);
      for (; unpinned < entries.length; unpinned++) arena.unpin(entries[unpinned] as number);
      // Not committed (a wave or the trim commit failed): the next flush takes them again.
      this.core.zeros.restore(zeros.blocks, zeros.seqs, zeros.count);
    }
    const { ctx, map, tunables } = this.core;
    await ctx.failpoint('flush:beforeWalReclaim');
    await wal.reclaim(sealed);
    await ctx.failpoint('flush:afterWalReclaim');
    if (map.logBytes >= tunables.checkpointBytes || map.checkpointDue) await this.checkpoint();
    this.processDeadChunks();
    return entries.length + zeros.taken;
  }

  /**
   * The zero records to commit, all of them: those still the current version of
   * their block (one superseded by a newer write or trim needs no tombstone: the
   * newer version is in this snapshot or a later one), in block order.
   */
  private takeZeros(): { blocks: Float64Array; seqs: Float64Array; count: number; taken: number } {
    const { index, zeros } = this.core;
    const t = zeros.take(zeros.length);
    let n = 0;
    for (let k = 0; k < t.count; k++) {
      const b = t.blocks[k] as number;
      const q = t.seqs[k] as number;
      if (!index.isZeroVersion(b, q)) continue;
      t.blocks[n] = b;
      t.seqs[n] = q;
      n++;
    }
    // Block order for runs in the 'Z' frame; one version per block, so sorting pairs by block is enough.
    const order = new Uint32Array(n);
    for (let k = 0; k < n; k++) order[k] = k;
    order.sort((x, y) => (t.blocks[x] as number) - (t.blocks[y] as number));
    const blocks = new Float64Array(n);
    const seqs = new Float64Array(n);
    for (let k = 0; k < n; k++) {
      blocks[k] = t.blocks[order[k] as number] as number;
      seqs[k] = t.seqs[order[k] as number] as number;
    }
    return { blocks, seqs, count: n, taken: n };
  }

  /**
   * Commit the tombstones of zero records (one 'Z' frame per MAX_TRIMS_PER_FLUSH,
   * each one write + fdatasync), then drop the old locations from the index: their
   * chunks lose live blocks, and a chunk left with none is deleted like one whose
   * blocks were all superseded.
   */
  private async commitTrims(z: { blocks: Float64Array; seqs: Float64Array; count: number }): Promise<void> {
    const { index, map, ctx } = this.core;
    for (let i = 0; i < z.count; i += MAX_TRIMS_PER_FLUSH) {
      const n = Math.min(MAX_TRIMS_PER_FLUSH, z.count - i);
      const blocks = z.blocks.subarray(i, i + n);
      const seqs = z.seqs.subarray(i, i + n);
      await ctx.failpoint('flush:beforeTrimCommit');
      await map.commitTrims(blocks, seqs, n);
      await ctx.failpoint('flush:afterTrimCommit');
      for (let k = 0; k < n; k++) index.dropTrimmed(blocks[k] as number, seqs[k] as number);
    }
    for (const id of index.takeDeadChunks()) this.deadChunks.push(id);
  }

  /** Slots holding the current version of their block, pinned, in block order. */
  private snapshot(): number[] {
    const { arena: a, index } = this.core;
    const out: number[] = [];
    for (let slot = 0; slot < a.highWater; slot++) {
      if (a.isPinned(slot)) continue;
      if (index.slot(a.blockOf(slot)) === slot) {
        out.push(slot);
        a.pin(slot);
      }
    }
    return out.sort((x, y) => a.blockOf(x) - a.blockOf(y));
  }

  /**
   * Write a wave of chunk objects in parallel (their fdatasyncs overlap), then, once
   * the previous wave is committed (`prev`), commit all their locations with one map
   * log write + fdatasync and point the index at them. So the map names only chunks
   * whose put succeeded, and commits stay in wave order while the next wave's puts
   * overlap this one's commit. A crash before the commit leaves orphan chunks, which
   * recovery deletes; the WAL still holds their data.
   */
  private async writeWave(groups: number[][], prev: Promise<void>): Promise<void> {
    const { arena, index, ctx, counters } = this.core;
    const builds = this.buildWave(groups);
    const upload = builds.then((b) => this.putWave(b));
    upload.catch(() => undefined); // awaited below, after prev
    try {
      await prev;
    } catch (err) {
      // An earlier wave was not committed, so neither is this one (the map stays in
      // order): nothing will point at what it writes. Only its build is waited for
      // (it reads the slots); its puts end in the background (an outage is reported
      // without waiting for each put's deadline), and what they wrote is deleted.
      await builds.catch(() => undefined);
      upload.then(
        (built) => {
          for (const c of built) this.deadChunks.push(c.id);
          this.processDeadChunks();
        },
        () => undefined, // putWave gave what did land to the dead list, or the volume failed
      );
      throw err;
    }
    const built = await upload;
    await this.core.map.commit(built.map((c) => c.placement));
    await ctx.failpoint('flush:afterMapCommit');
    for (const c of built) {
      const pl = c.placement;
      for (let k = 0; k < c.slots.length; k++) {
        const slot = c.slots[k] as number;
        if (index.setPersisted(pl.blocks[k] as number, pl.seqs[k] as number, c.id, pl.offsets[k] as number, pl.lens[k] as number, pl.flags[k] as number, slot))
          arena.release(slot);
      }
      index.noteChunkRecords(c.id, c.slots.length, c.buf.length - SEGMENT_HEADER);
      counters.chunkFlushes++;
      counters.flushedBytes += c.buf.length;
    }
    for (const id of index.takeDeadChunks()) this.deadChunks.push(id);
  }

  /** Encode a wave's chunk objects from its slots (the slots are not read after this resolves). */
  private async buildWave(groups: number[][]): Promise<BuiltChunk[]> {
    // Ids taken now, before any await: waves' builds may interleave with each other and
    // with the compactor's, and a wave's ids must all be above the previous wave's, so
    // a crash leaves the uncommitted waves' chunks as the highest flusher ids.
    const firstId = this.core.nextChunkId;
    this.core.nextChunkId += groups.length;
    const built: BuiltChunk[] = [];
    for (let g = 0; g < groups.length; g++) built.push(await this.builder.build(this.core.arena, groups[g] as number[], firstId + g));
    return built;
  }

  /**
   * Put a wave's chunk objects in parallel; resolves when all are on the backend. On a
   * failure the ones that landed go to the dead list when the flush will be retried
   * (outage, disk full): no delta will name them.
   */
  private async putWave(built: BuiltChunk[]): Promise<BuiltChunk[]> {
    const { ctx } = this.core;
    const puts = await Promise.allSettled(
      built.map(async (c) => {
        await ctx.failpoint('flush:beforeChunkWrite');
        await ctx.backend.put(chunkKey(this.core.info.id, c.id), c.buf);
        await ctx.failpoint('flush:afterChunkWrite');
      }),
    );
    for (const c of built) this.builder.recycle(c);
    const failed = puts.find((p): p is PromiseRejectedResult => p.status === 'rejected');
    if (failed) {
      // A remote backend that refused or never answered (after its own retries): an
      // outage, waited out. A local backend's I/O error stays a failure of the volume.
      const down = ctx.backend.remote === true && isVbfsError(failed.reason, 'VBFS_IO') && !isNoSpace(failed.reason);
      // Nothing points at this wave's chunks: give the space of those written back
      // now (recovery would delete them as orphans anyway).
      if (down || isNoSpace(failed.reason)) {
        for (let k = 0; k < built.length; k++) {
          if (puts[k]?.status === 'fulfilled') this.deadChunks.push((built[k] as BuiltChunk).id);
        }
      }
      if (down) {
        const e = failed.reason as VbfsError;
        throw new VbfsError('VBFS_IO', `volume '${this.core.name}': backend down: ${e.message}`, { ...e.details, backendDown: true }, { cause: e });
      }
      throw failed.reason;
    }
    return built;
  }

  /** Chunks the compactor emptied (its map commit is durable): deleted like the flusher's own. */
  retire(ids: number[]): void {
    for (const id of ids) this.deadChunks.push(id);
    this.processDeadChunks();
  }

  /** Delete chunk objects no block points at any more, once no read may still be using them. */
  processDeadChunks(): void {
    const core = this.core;
    if (core.readsInFlight > 0 || this.deadChunks.length === 0) return;
    const dead = this.deadChunks;
    this.deadChunks = [];
    for (const id of dead) {
      core.ctx.backend
        .delete(chunkKey(core.info.id, id))
        .catch((err) => core.ctx.logger.warn('could not delete unused chunk', { chunk: id, error: String(err) }));
    }
  }

  private async checkpoint(): Promise<void> {
    await this.core.map.checkpoint(this.core.index, this.core.seq, this.core.nextChunkId);
  }
}
