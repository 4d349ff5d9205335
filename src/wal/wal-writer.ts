import { VbfsError, ioError, isNoSpace, syncFailed } from '../errors';
import { encodeRecord, encodeSyncMarker, RECORD_HEADER, SYNC_MARKER_BYTES } from '../format/block-record';
import { encodeSegmentHeader, SEGMENT_HEADER, WAL_FLAG_PREALLOCATED, WAL_MAGIC } from '../format/segment-header';
import type { FileHandle, FileIO } from '../io/file-io';
import type { Logger } from '../types';

export const walSegmentName = (n: number): string => n.toString(16).padStart(16, '0') + '.wal';
/**
 * A spare segment file (preallocated, or reclaimed and kept for reuse) and one being
 * zero-filled; replay ignores both (the names do not start like a segment's).
 */
const spareName = (n: number, kind: 'spare' | 'prep' = 'spare'): string => `${kind}-${n.toString(16).padStart(16, '0')}`;
const SPARE_RE = /^(spare|prep)-([0-9a-f]{16})$/;

/**
 * A batch up to this size (and every sync marker) is written on the JS thread when
 * the file layer can (FileHandle.writeSync): the copy into the page cache takes a
 * few microseconds, the hop to a libuv pool thread and back took ~165 us each at
 * load ~10, and an fsync of one 4 KiB write made two of them besides its
 * fdatasync (docs/bench.md, "fsync path"). Larger batches (a stream of writes
 * filling the 1 MiB buffer) stay in the pool, off the thread that serves FUSE.
 */
const INLINE_WRITE_MAX = 64 * 1024;
/**
 * ... unless one took longer than this: a write(2) into the page cache can block for
 * a long time when the kernel throttles a process over its dirty pages (a slow SD
 * card or cloud disk behind a flush), and inline that stalls every FUSE request.
 * Writes then go through the pool again for INLINE_BACKOFF_MS.
 */
const INLINE_SLOW_MS = 2;
const INLINE_BACKOFF_MS = 5000;

export interface WalWriterOptions {
  dir: string;
  fileIO: FileIO;
  volumeId: string;
  blockSize: number;
  segmentBytes: number;
  /** Size of one batch buffer: records accumulate here and go out in one write(). */
  bufferBytes: number;
  /** Number of the next segment to create (one past the newest on disk). */
  nextSegment: number;
  /** Segments already on disk (from before this open), reclaimable later. */
  existingSegments: number[];
  logger: Logger;
  /** After a write failed for lack of space, retry it this often (default 1000 ms). */
  noSpaceRetryMs?: number;
  /** An inline write slower than this sends small writes to the pool for a while (default INLINE_SLOW_MS). */
  inlineSlowMs?: number;
  /** Every seq up to this one is already durable (recovery: the replayed WAL and the chunks). */
  durableSeq?: number;
  /**
   * Called when a completed fdatasync made every record up to `seq` durable, before
   * the sync's waiters hear of it (the writer moves those blocks Hot -> Pending).
   */
  onDurable?: (seq: number) => void;
  /**
   * Write into preallocated segment files: each is made full size (zero-filled) before
   * its first record, and reclaimed segments are kept as spares and reused, so an
   * fdatasync after an append overwrites allocated blocks and needs no journal commit
   * for a new file size or extent. Off: plain appended segments (the volume default is on).
   */
  preallocate?: boolean;
  /** Spare segment files kept for reuse (default 2). */
  spareSegments?: number;
}

interface Batch {
  buf: Buffer;
  len: number;
  seg: number;
  endPos: number; // logical WAL position after this batch
  firstSeq: number;
  lastSeq: number;
}

interface SyncWaiter {
  target: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * The WAL appender. `append` is synchronous: it encodes one record into the
 * current batch buffer (no allocation, no syscall). A batch goes to the file in
 * ONE write() when the buffer fills or a sync needs it. `sync` is group commit:
 * every caller waiting when an fdatasync starts is covered by it, and callers
 * that arrive during it share the next one.
 *
 * All file operations (writes, fdatasync, segment switch, reclaim, close) run on
 * one serial chain, so no two of them touch a descriptor at once. The durable
 * position only moves after the fdatasync that stands for it has completed, and a
 * failed sync or write poisons the writer for good (a retried fsync after an
 * error can report success for data the kernel already dropped).
 *
 * Except a write that failed for lack of space (ENOSPC, EDQUOT): the batch is
 * still in memory, so the chain stops there and rewrites the whole batch at the
 * same offset (whatever part of it reached the file is overwritten) every
 * noSpaceRetryMs until it succeeds. Nothing behind it runs before, so nothing is
 * lost or reordered. Meanwhile `noSpace` is set, sync() rejects with it and so
 * do the syncs that were waiting, without poisoning: the data is still held and
 * a later sync covers it. On close(), one last attempt, then it gives up (poison).
 */
export class WalWriter {
  writes = 0;
  syncs = 0;
  /** Sync markers written (one per completed fdatasync of the open segment; also counted in `writes`). */
  markers = 0;
  bytes = 0;
  /** Times an inline write took over INLINE_SLOW_MS and sent writes back to the pool for a while. */
  inlineBackoffs = 0;
  unsyncedBlocks = 0;
  /** Highest seq known durable (records are appended in seq order). Hot blocks at or below it are Pending. */
  durableSeq: number;

  private cur: Buffer;
  private curLen = 0;
  private curFirstSeq = 0;
  private curLastSeq = 0;
  private curSeg: number;
  private segBytes = SEGMENT_HEADER;
  private readonly pool: Buffer[] = [];
  private appendedPos = 0;
  private writtenPos = 0;
  private writtenSeq = 0;
  private durablePos = 0;
  private fd: FileHandle | null = null;
  private fdSeg = -1;
  private fdPos = 0;
  /** The open segment's base seq (its markers carry it) and whether it is preallocated. */
  private fdBase = 0;
  private fdPrealloc = false;
  /** performance.now() until which small writes go through the pool (INLINE_SLOW_MS). */
  private inlineOffUntil = 0;
  /**
   * The open segment has bytes no fdatasync covered yet: the sync marker written
   * after the last one, at least (writeSyncMarker). close() syncs them, see there.
   */
  private fdUnsynced = false;
  /** Spare segment files ready for reuse (paths), the number for the next one, and the background work on them. */
  private readonly spares: string[] = [];
  private spareNext = 1;
  private spareScan: Promise<void> | null = null;
  private prep: Promise<void> | null = null;
  /** A segment was opened since this writer started (only the first one waits for a zero fill). */
  private openedOnce = false;
  /** A sync marker, rewritten after every completed fdatasync (see writeSyncMarker). */
  private readonly marker = Buffer.alloc(SYNC_MARKER_BYTES);
  private readonly markerScratch = Buffer.alloc(8);
  private tail: Promise<unknown> = Promise.resolve();
  private waiters: SyncWaiter[] = [];
  private syncing = false;
  /** A background sync was asked for up to this position (no waiter, no promise). */
  private wantPos = 0;
  private failed: Error | null = null;
  private noSpaceErr: Error | null = null;
  private retryWake: (() => void) | null = null;
  private closing = false;
  private readonly segments: number[];

  constructor(private readonly opts: WalWriterOptions) {
    if (opts.bufferBytes < RECORD_HEADER + opts.blockSize) throw new VbfsError('VBFS_INVALID_ARGUMENT', 'WAL buffer smaller than one record');
    this.cur = Buffer.allocUnsafeSlow(opts.bufferBytes);
    this.curSeg = opts.nextSegment;
    this.segments = [...opts.existingSegments];
    this.durableSeq = opts.durableSeq ?? 0;
  }

  get error(): Error | null {
    return this.failed;
  }

  /** Set while a write that failed for lack of space waits to be retried (not poisoned). */
  get noSpace(): Error | null {
    return this.failed ? null : this.noSpaceErr;
  }

  /** Retry the write that is waiting for space now instead of at the next timer. */
  retryNow(): void {
    this.retryWake?.();
  }

  /** Logical bytes appended so far (monotonic, across segments). */
  get position(): number {
    return this.appendedPos;
  }

  get hasUnsynced(): boolean {
    return this.appendedPos > this.durablePos;
  }

  /** Bytes appended but not yet covered by a completed fdatasync. */
  get unsyncedBytes(): number {
    return this.appendedPos - this.durablePos;
  }

  /** Append one record; returns its CRC (reusable for the chunk record of the same version). */
  append(seq: number, block: number, flags: number, rawLen: number, payload: Uint8Array, pStart: number, pEnd: number): number {
    if (this.failed) throw this.failed;
    const recLen = RECORD_HEADER + (pEnd - pStart);
    if (this.segBytes + recLen > this.opts.segmentBytes && this.segBytes > SEGMENT_HEADER) this.switchSegment();
    if (this.curLen + recLen > this.cur.length) this.seal();
    const at = this.curLen;
    if (at === 0) this.curFirstSeq = seq;
    this.curLen = encodeRecord(this.cur, at, seq, block, flags, rawLen, payload, pStart, pEnd);
    this.curLastSeq = seq;
    this.segBytes += recLen;
    this.appendedPos += recLen;
    this.unsyncedBlocks++;
    return this.cur.readUInt32LE(at);
  }

  private switchSegment(): void {
    this.seal();
    this.curSeg++;
    this.segBytes = SEGMENT_HEADER;
  }

  /** Hand the current batch to the writer chain. */
  private seal(): void {
    if (this.curLen === 0) return;
    const batch: Batch = { buf: this.cur, len: this.curLen, seg: this.curSeg, endPos: this.appendedPos, firstSeq: this.curFirstSeq, lastSeq: this.curLastSeq };
    this.cur = this.pool.pop() ?? Buffer.allocUnsafeSlow(this.opts.bufferBytes);
    this.curLen = 0;
    this.enqueue(() => this.writeBatch(batch)).catch(() => {
      /* recorded in this.failed; surfaced by sync() and append() */
    });
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(() => {
      if (this.failed) throw this.failed;
      return fn();
    });
    this.tail = p.catch(() => undefined);
    return p;
  }

  private fail(err: unknown): Error {
    if (!this.failed) {
      this.failed = ioError('WAL failed; the volume must be reopened', err);
      this.opts.logger.error('WAL write failed', { error: String(err) });
      const w = this.waiters;
      this.waiters = [];
      for (const x of w) x.reject(this.failed);
    }
    return this.failed;
  }

  private async writeBatch(b: Batch): Promise<void> {
    for (;;) {
      try {
        await this.openSegment(b.seg, b.firstSeq - 1);
        await this.writeAt(b.buf.subarray(0, b.len), this.fdPos);
        this.fdUnsynced = true;
        this.fdPos += b.len;
        this.writes++;
        this.bytes += b.len;
        this.writtenPos = b.endPos;
        this.writtenSeq = b.lastSeq;
        if (this.pool.length < 8) this.pool.push(b.buf);
        if (this.noSpaceErr) {
          this.noSpaceErr = null;
          this.opts.logger.info('WAL write succeeded again after running out of space');
        }
        return;
      } catch (err) {
        if (this.failed || this.closing || !isNoSpace(err)) throw this.fail(err);
        // fdPos did not move: the retry rewrites the whole batch at the same offset.
        await this.waitForSpace(err);
      }
    }
  }

  /** One write to the open segment: small ones inline (INLINE_WRITE_MAX), others in the pool. */
  private async writeAt(buf: Uint8Array, pos: number): Promise<void> {
    const fd = this.fd as FileHandle;
    if (buf.length <= INLINE_WRITE_MAX && fd.writeSync && performance.now() >= this.inlineOffUntil) {
      const t0 = performance.now();
      fd.writeSync(buf, pos);
      const t1 = performance.now();
      if (t1 - t0 > (this.opts.inlineSlowMs ?? INLINE_SLOW_MS)) {
        this.inlineOffUntil = t1 + INLINE_BACKOFF_MS;
        this.inlineBackoffs++;
      }
    } else {
      await fd.write(buf, pos);
    }
  }

  private async waitForSpace(err: unknown): Promise<void> {
    if (!this.noSpaceErr) {
      this.noSpaceErr = ioError('WAL write failed for lack of space', err);
      this.opts.logger.warn('store disk full: WAL write failed; writes are refused until it succeeds (retried in place)', { error: String(err) });
      const w = this.waiters;
      this.waiters = [];
      for (const x of w) x.reject(this.noSpaceErr);
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.retryWake = null;
        resolve();
      }, this.opts.noSpaceRetryMs ?? 1000);
      timer.unref();
      this.retryWake = () => {
        clearTimeout(timer);
        this.retryWake = null;
        resolve();
      };
    });
  }

  /**
   * Make `seg` the open segment; every record in it has a seq above `baseSeq`. The
   * previous one is synced first, so a torn tail can only be in the newest segment; a
   * preallocated one also gets a synced marker claiming all of it, which is how replay
   * tells its end from its zero or stale tail.
   */
  private async openSegment(seg: number, baseSeq: number): Promise<void> {
    if (this.fdSeg === seg) return;
    if (this.fd) {
      const captured = this.writtenPos;
      const seq = this.writtenSeq;
      await this.fd.datasync().catch((err: unknown) => {
        throw this.fail(syncFailed('WAL fdatasync failed', err));
      });
      this.syncs++;
      this.markDurable(captured, seq);
      if (this.fdPrealloc) {
        try {
          await this.writeSyncMarker();
        } catch (err) {
          // Out of space (a filesystem that allocates on overwrite): fdPos did not
          // move, so the caller's retry syncs again and rewrites the marker in place.
          // Until then this segment is still the newest: a half marker is a torn tail.
          if (isNoSpace(err)) throw err;
          throw this.fail(err);
        }
        await this.fd.datasync().catch((err: unknown) => {
          throw this.fail(syncFailed('WAL end marker failed', err));
        });
        this.syncs++;
      }
      await this.fd.close();
      this.fd = null;
    }
    const path = `${this.opts.dir}/${walSegmentName(seg)}`;
    if (this.opts.preallocate) {
      const spare = await this.takeSpare(this.fdSeg < 0 && !this.openedOnce);
      if (spare !== null) {
        await this.recycle(spare, path, seg, baseSeq);
        this.openedOnce = true;
        return;
      }
    }
    const fd = await this.opts.fileIO.open(path, 'wx');
    try {
      await fd.write(this.header(seg, baseSeq, 0), 0);
    } catch (err) {
      // No record in it yet: remove it, so that a retry (out of space) can create it again.
      await fd.close().catch(() => undefined);
      await this.opts.fileIO.unlink(path).catch(() => undefined);
      throw err;
    }
    // The new name must be durable before any sync of this file is relied upon.
    await this.opts.fileIO.fsyncDir(this.opts.dir).catch(async (err: unknown) => {
      await fd.close().catch(() => undefined);
      throw this.fail(syncFailed('WAL directory fsync failed', err));
    });
    this.opened(fd, seg, baseSeq, false);
    this.openedOnce = true;
  }

  private header(seg: number, baseSeq: number, flags: number): Uint8Array {
    return encodeSegmentHeader({ magic: WAL_MAGIC, blockSize: this.opts.blockSize, volumeId: this.opts.volumeId, number: seg, count: flags, maxSeq: baseSeq });
  }

  private opened(fd: FileHandle, seg: number, baseSeq: number, prealloc: boolean): void {
    this.fd = fd;
    this.fdUnsynced = false;
    this.fdSeg = seg;
    this.fdPos = SEGMENT_HEADER;
    this.fdBase = baseSeq;
    this.fdPrealloc = prealloc;
    if (!this.segments.includes(seg)) this.segments.push(seg);
  }

  /**
   * Turn a spare file into segment `seg`: its new header is synced BEFORE the rename
   * makes it a segment (a renamed file with its old header would be another segment's),
   * then the rename is made durable. The rest of the file is left as it is: zeros or
   * the earlier use's records, which replay tells apart by the base seq.
   */
  private async recycle(spare: string, path: string, seg: number, baseSeq: number): Promise<void> {
    const io = this.opts.fileIO;
    try {
      const sfd = await io.open(spare, 'r+');
      try {
        await sfd.write(this.header(seg, baseSeq, WAL_FLAG_PREALLOCATED), 0);
        await sfd.datasync();
      } finally {
        await sfd.close();
      }
      await io.rename(spare, path);
    } catch (err) {
      // Still a spare (the rename is the last step): offer it again on a retry.
      this.spares.unshift(spare);
      throw err;
    }
    let fd: FileHandle;
    try {
      await io.fsyncDir(this.opts.dir);
      fd = await io.open(path, 'r+');
    } catch (err) {
      throw this.fail(syncFailed('WAL directory fsync failed', err));
    }
    this.opened(fd, seg, baseSeq, true);
  }

  /** Find the spares an earlier open left (once); a half-prepared one is removed. */
  private scanSpares(): Promise<void> {
    this.spareScan ??= (async () => {
      const io = this.opts.fileIO;
      for (const name of await io.readdir(this.opts.dir)) {
        const m = SPARE_RE.exec(name);
        if (!m) continue;
        const n = parseInt(m[2] as string, 16);
        if (n >= this.spareNext) this.spareNext = n + 1;
        const path = `${this.opts.dir}/${name}`;
        const st = m[1] === 'spare' ? await io.stat(path) : null;
        if (st && st.size >= this.opts.segmentBytes && this.spares.length < this.maxSpares) this.spares.push(path);
        else await io.unlink(path);
      }
    })();
    return this.spareScan;
  }

  private get maxSpares(): number {
    return this.opts.spareSegments ?? 2;
  }

  /**
   * A spare for the next segment, or null (then it is appended). Only the first segment
   * of this open waits for one to be zero-filled: later switches take a ready spare or
   * append, so a write never queues behind a zero fill it did not need.
   */
  private async takeSpare(waitForPrep: boolean): Promise<string | null> {
    try {
      await this.scanSpares();
      if (this.spares.length === 0 && waitForPrep) {
        this.kickPrep(true);
        await this.prep;
      }
    } catch {
      // Logged by kickPrep; a plain appended segment does instead.
    }
    return this.spares.shift() ?? null;
  }

  /**
   * Prepare a spare in the background (not on the writer chain: it never delays a
   * write unless a segment switch finds no spare): a new file of segmentBytes zeros,
   * written and synced as `prep-<n>`, renamed `spare-<n>`. Zeros, not fallocate: an ext4
   * unwritten extent needs a journal commit when it is first written (see docs/FORMAT.md).
   * A failure (out of space) only means the next segment is appended instead.
   *
   * Besides the first segment of an open, only right after a reclaim left no spare and
   * no segment but the open one: no flush is in progress then. Reclaimed segments come
   * back as spares, so once the flusher keeps up no zero fill is needed. When writers
   * outrun the flusher, segments pile up and a zero fill would take disk bandwidth from
   * the flush waves that writers wait for (slow-disk test): then the next segments are
   * appended, as without preallocation.
   */
  private kickPrep(force = false): void {
    if (!this.opts.preallocate || this.prep || this.closing || this.failed) return;
    if (!force && (this.spares.length > 0 || this.segments.length > 1)) return;
    this.prep = this.prepareSpare()
      .catch((err: unknown) => {
        this.opts.logger.warn('could not prepare a spare WAL segment; appending instead', { error: String(err) });
      })
      .finally(() => {
        this.prep = null;
      });
  }

  private async prepareSpare(): Promise<void> {
    await this.scanSpares();
    if (this.spares.length > 0) return;
    const io = this.opts.fileIO;
    const n = this.spareNext++;
    const prep = `${this.opts.dir}/${spareName(n, 'prep')}`;
    const fd = await io.open(prep, 'w+');
    try {
      const zeros = Buffer.alloc(Math.min(1 << 20, this.opts.segmentBytes));
      for (let p = 0; p < this.opts.segmentBytes; p += zeros.length) {
        await fd.write(zeros.subarray(0, Math.min(zeros.length, this.opts.segmentBytes - p)), p);
      }
      await fd.datasync();
    } catch (err) {
      await fd.close().catch(() => undefined);
      await io.unlink(prep).catch(() => undefined);
      throw err;
    }
    await fd.close();
    const spare = `${this.opts.dir}/${spareName(n)}`;
    await io.rename(prep, spare);
    this.spares.push(spare);
  }

  private markDurable(pos: number, seq: number): void {
    if (pos > this.durablePos) this.durablePos = pos;
    if (seq > this.durableSeq) {
      this.durableSeq = seq;
      this.opts.onDurable?.(seq);
    }
    if (this.waiters.length === 0) return;
    const keep: SyncWaiter[] = [];
    for (const w of this.waiters) {
      if (w.target <= this.durablePos) w.resolve();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  /**
   * Record in the segment itself how far it is proven synced: a 40-byte marker
   * claiming the current end of the file, written right after the fdatasync that
   * covered it, with no sync of its own (the next sync covers it). It costs one
   * small write() per fdatasync, never an extra fdatasync. After kill -9 the page
   * cache keeps it, so all acknowledged bytes are inside the proven range and any
   * damage to them is reported as corruption; after a power cut it may be lost,
   * and recovery then relies on an earlier marker (wal-reader.ts).
   */
  private async writeSyncMarker(): Promise<void> {
    encodeSyncMarker(this.marker, 0, this.fdPos, this.markerScratch, this.fdBase);
    await this.writeAt(this.marker, this.fdPos);
    this.fdUnsynced = true;
    this.fdPos += SYNC_MARKER_BYTES;
    this.writes++;
    if (this.fdSeg === this.curSeg) this.segBytes += SYNC_MARKER_BYTES; // keeps segments near their size limit
    this.markers++;
  }

  /**
   * Resolves when everything appended before this call is durable, or (with
   * `upTo`, a `position` value) everything before that position.
   */
  sync(upTo?: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.noSpaceErr) return Promise.reject(this.noSpaceErr);
    const target = upTo === undefined ? this.appendedPos : Math.min(upTo, this.appendedPos);
    if (target <= this.durablePos) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ target, resolve, reject });
      void this.runSync();
    });
  }

  /**
   * Start a sync of everything appended so far without waiting for it (batched
   * mode's group commit timer, async mode's fsync). Costs nothing if one is
   * already running: the running loop picks the new target up.
   */
  kickSync(): void {
    if (this.failed || this.appendedPos <= this.durablePos) return;
    this.wantPos = this.appendedPos;
    void this.runSync();
  }

  private async runSync(): Promise<void> {
    if (this.syncing) return;
    this.syncing = true;
    try {
      while ((this.waiters.length > 0 || this.wantPos > this.durablePos) && !this.failed) {
        this.unsyncedBlocks = 0;
        this.seal();
        await this.enqueue(async () => {
          const captured = this.writtenPos;
          const seq = this.writtenSeq;
          if (this.fd && captured > this.durablePos) {
            try {
              await this.fd.datasync();
            } catch (err) {
              throw this.fail(syncFailed('WAL fdatasync failed', err));
            }
            this.fdUnsynced = false;
            this.syncs++;
            try {
              // Before the waiters hear of it: once an fsync is acknowledged, the
              // page cache holds the marker that proves it.
              await this.writeSyncMarker();
            } catch (err) {
              // Out of space for the marker: the sync itself succeeded, fdPos did not
              // move (the next batch overwrites what part of the marker was written)
              // and the next sync writes a marker again. Anything else poisons.
              if (!isNoSpace(err)) throw this.fail(err);
            }
          }
          this.markDurable(captured, seq);
        });
      }
    } catch (err) {
      this.fail(err);
    } finally {
      this.syncing = false;
    }
  }

  /**
   * Seal the current segment: records appended after this call go to a new one.
   * Resolves (with the sealed segment's number) once everything before is written.
   */
  async rotate(): Promise<number> {
    const sealed = this.curSeg;
    this.switchSegment();
    await this.enqueue(async () => undefined);
    return sealed;
  }

  /** Delete segments <= upTo. Only call once everything they hold is durable elsewhere. */
  async reclaim(upTo: number): Promise<void> {
    await this.enqueue(async () => {
      const doomed = this.segments.filter((s) => s <= upTo && s < this.curSeg);
      if (doomed.length === 0) return;
      try {
        if (this.fd && this.fdSeg <= upTo) {
          await this.fd.close();
          this.fd = null;
          this.fdSeg = -1;
        }
        if (this.opts.preallocate) await this.scanSpares();
        // Oldest first, each unlink (or rename to a spare) made durable before the next:
        // what a crash leaves is always a run of the newest segments. A filesystem that
        // persisted a newer unlink but not an older one would replay an old record of a
        // block without the later zero record (trim) that superseded it, and the trimmed
        // block would come back: the map's 'Z' tombstone keeps no seq once the location
        // it dropped is gone.
        for (const s of doomed.sort((a, b) => a - b)) {
          const path = `${this.opts.dir}/${walSegmentName(s)}`;
          // A full-size segment is kept as a spare for reuse, up to the limit.
          const st = this.opts.preallocate && this.spares.length < this.maxSpares ? await this.opts.fileIO.stat(path) : null;
          if (st && st.size >= this.opts.segmentBytes) {
            const spare = `${this.opts.dir}/${spareName(this.spareNext++)}`;
            await this.opts.fileIO.rename(path, spare);
            this.spares.unshift(spare); // reused first: its pages are likely still cached
          } else await this.opts.fileIO.unlink(path);
          await this.opts.fileIO.fsyncDir(this.opts.dir);
        }
      } catch (err) {
        throw this.fail(err);
      }
      for (const s of doomed) this.segments.splice(this.segments.indexOf(s), 1);
      this.kickPrep(); // the backlog is gone: a spare for the next switch, if none came back
    });
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  async close(): Promise<void> {
    // A write waiting for space gets one last attempt, then gives up (poisons).
    this.closing = true;
    this.retryNow();
    await this.prep;
    await this.enqueue(async () => {
      if (this.fd) {
        // The last sync's marker is not covered by a sync of its own. Left so, a power
        // cut long after this clean close may tear it, and once the next open has
        // started a newer segment, a damaged segment that is not the newest refuses
        // the open (wal-reader.ts). It is there whenever records came after the
        // flush's rotate (a close with records still in the crypto worker: they land
        // in a new segment that the close's sync covers).
        if (this.fdUnsynced) {
          try {
            await this.fd.datasync();
            this.syncs++;
            this.fdUnsynced = false;
          } catch (err) {
            // Recorded (the fd is closed all the same): what was acknowledged had its own sync.
            this.fail(syncFailed('WAL fdatasync at close failed', err));
          }
        }
        await this.fd.close();
        this.fd = null;
        this.fdSeg = -1;
      }
    }).catch(() => undefined);
    if (this.failed && this.fd) {
      // Poisoned: the chain refused the close above, but nothing runs after it.
      await this.fd.close().catch(() => undefined);
      this.fd = null;
      this.fdSeg = -1;
    }
  }
}
