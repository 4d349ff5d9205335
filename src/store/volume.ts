import { compress as lz4Compress, compressSync as lz4CompressSync, uncompressSync as lz4UncompressSync } from 'lz4-napi';
import { VbfsError, ioError, isNoSpace, isVbfsError } from '../errors';
import { Arena } from '../arena/arena';
import type { Backend } from '../backend/backend';
import { BlockCache } from '../cache/block-cache';
import { chunkKey, chunkPrefix, decodeChunkHeader, encodeChunkHeader, parseChunkKey, verifyChunkRecord } from '../chunk/chunk';
import { encodeRecord, encodeRecordWithCrc, FLAG_LZ4, RECORD_HEADER } from '../format/block-record';
import { copyBytes } from '../format/bytes';
import { ChunkPlacement, allocPlacement } from '../format/map-records';
import { SEGMENT_HEADER } from '../format/segment-header';
import { BlockIndex, CACHED, EMPTY, HOT, PENDING, PERSISTED, type BlockState } from '../index/block-index';
import { MapStore, type Failpoint } from '../index/map-store';
import type { FileIO } from '../io/file-io';
import { WalWriter } from '../wal/wal-writer';
import { replayWal } from '../wal/wal-reader';
import { VolumeLock } from './lock';
import { LatencyWindow } from './latency';
import { collectIdleGarbage } from './idle-gc';
import type { Durability, Logger, VolumeInfo, VolumeOpenOptions, VolumeStats, VolumeTunables } from './types';
import { checkDurability, encodeVolumeMeta, VOLUME_FORMAT_VERSION } from '../format/volume-meta';

const MiB = 1024 * 1024;
const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY_BUFFER = Buffer.alloc(0);

export const DEFAULT_TUNABLES: VolumeTunables = {
  walSegmentBytes: 64 * MiB,
  chunkBytes: 4 * MiB,
  writeBufferBytes: 256 * MiB,
  flushBytes: 32 * MiB,
  flushIntervalMs: 5000,
  batchBlocks: 1024,
  batchMs: 5,
  cacheBytes: 64 * MiB,
  checkpointBytes: 16 * MiB,
  readaheadBytes: 1 * MiB,
  noSpaceRetryMs: 1000,
  idleTrimMs: 30_000,
};

/** One batch buffer of the WAL: records accumulate here between write() calls. */
const WAL_BUFFER_BYTES = 1 * MiB;
/** Chunk objects written in parallel per flush wave (one map commit per wave). */
const FLUSH_WAVE = 4;
/** Damaged records remembered so each is logged once (beyond this, one line says so). */
const DAMAGE_LOG_LIMIT = 10_000;
/** Chunk building yields to the event loop after this many records. */
const BUILD_SLICE = 128;

interface BuiltChunk {
  id: number;
  buf: Buffer; // the encoded object
  base: Buffer; // the pooled buffer it lives in
  placement: ChunkPlacement; // where each record went, for the map commit and the index
  slots: number[];
}

export interface VolumeContext {
  dir: string; // <store>/volumes/<name>
  fileIO: FileIO;
  backend: Backend;
  logger: Logger;
  failpoint: Failpoint;
  /** Called once when the volume has closed (the store rebalances its memory budget). */
  onClose?: () => void;
}

/**
 * A volume: a fixed-size array of blocks. Reading this file top to bottom gives
 * the write path (write -> arena + WAL -> group commit), the read path (one index
 * lookup per block, contiguous chunk runs in one backend read), the flush path
 * (arena -> chunk objects -> map commit -> WAL reclaim) and recovery (open()).
 */
export class Volume {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly durability: Durability;
  readonly readOnly: boolean;
  private readonly t: VolumeTunables;
  private readonly blockCount: number;
  private readonly index: BlockIndex;
  private readonly arena: Arena;
  private readonly cache: BlockCache;
  private wal: WalWriter | null = null;
  private map: MapStore;
  private lock: VolumeLock | null = null;
  private seq = 0;
  private nextChunkId = 1;
  private closed = false;
  private closing: Promise<void> | null = null;
  private failed: VbfsError | null = null;
  /** The last flush failed for lack of space; retried every noSpaceRetryMs (not a failure). */
  private diskFull: VbfsError | null = null;
  private diskFullTimer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private lastIo = performance.now();
  private writeTail: Promise<void> | null = null;
  private flushRun: Promise<void> | null = null;
  private flushAgain = false;
  private noMoreKicks = false;
  private batchTimer: NodeJS.Timeout | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private readsInFlight = 0;
  private readonly damageLogged = new Set<string>();
  private deadChunks: number[] = [];
  private readonly chunkPool: Buffer[] = [];
  private lastReadEnd = -1;
  private readahead: { start: number; end: number; done: Promise<void> } | null = null;
  private readonly fsyncLat = new LatencyWindow(1024);
  private readonly s = {
    writes: 0,
    writeBytes: 0,
    reads: 0,
    readBytes: 0,
    fsyncs: 0,
    chunkFlushes: 0,
    flushedBytes: 0,
    errors: 0,
    corruptReads: 0,
  };

  /** The volume's metadata (volume.json) as of open; only the format upgrade changes it. */
  get info(): VolumeInfo {
    return this.meta;
  }

  private constructor(private meta: VolumeInfo, private readonly ctx: VolumeContext, opts: VolumeOpenOptions) {
    const info = meta;
    this.name = info.name;
    this.size = info.size;
    this.blockSize = info.blockSize;
    this.durability = opts.durability !== undefined ? checkDurability(opts.durability) : info.durability;
    this.readOnly = opts.readOnly === true;
    this.t = resolveTunables(opts, info.blockSize);
    this.blockCount = info.size / info.blockSize;
    this.index = new BlockIndex(this.blockCount);
    this.arena = new Arena(info.blockSize, Math.max(2, Math.floor(this.t.writeBufferBytes / info.blockSize)));
    this.cache = new BlockCache(this.t.cacheBytes, info.blockSize, (b) => this.index.setCached(b, false));
    this.map = new MapStore(ctx.fileIO, `${ctx.dir}/map`, info.id, ctx.logger, ctx.failpoint);
  }

  // ---------------------------------------------------------------- recovery

  /**
   * Open = recover: checkpoint + map log give the persisted locations; chunk
   * objects newer than the map (a flush that crashed before its commit) are
   * orphans, deleted after their seqs are counted; the WAL replays every record
   * newer than its block's persisted version into the arena as Pending. Sequence
   * numbers restart above the maximum of all of these, so they never go backwards.
   */
  static async open(info: VolumeInfo, ctx: VolumeContext, opts: VolumeOpenOptions = {}): Promise<Volume> {
    const v = new Volume(info, ctx, opts);
    v.idleTimer = setInterval(() => v.trimIfIdle(), Math.max(10, Math.min(v.t.idleTrimMs, 5000)));
    v.idleTimer.unref();
    if (!v.readOnly) v.lock = await VolumeLock.acquire(ctx.fileIO, `${ctx.dir}/LOCK`, `volume '${info.name}'`);
    try {
      await v.recover();
    } catch (err) {
      if (v.idleTimer) clearInterval(v.idleTimer);
      await v.lock?.release().catch(() => undefined);
      throw err;
    }
    return v;
  }

  /**
   * This volume's share of the store's memory budget: its write buffer and read
   * cache hold at most this much (and at most their own tunables) from now on.
   */
  setMemoryShare(bytes: number): void {
    const write = Math.min(this.t.writeBufferBytes, Math.floor(bytes * 0.8));
    this.arena.setLimit(Math.floor(write / this.blockSize));
    this.cache.setLimit(Math.min(this.t.cacheBytes, bytes - write));
  }

  /** Bytes held by the write buffer and the read cache (what the memory budget counts). */
  get memoryBytes(): number {
    return this.arena.bytes + this.cache.slabBytes;
  }

  /** No I/O for idleTrimMs and nothing left to flush: give the buffers back. */
  private trimIfIdle(): void {
    if (this.closed || performance.now() - this.lastIo < this.t.idleTrimMs || this.flushRun || this.readsInFlight > 0) return;
    const before = this.memoryBytes + this.chunkPool.length;
    if (this.arena.used === 0) this.arena.trim();
    this.cache.trim();
    this.chunkPool.length = 0;
    if (before > this.memoryBytes) collectIdleGarbage();
  }

  private async recover(): Promise<void> {
    const { fileIO, backend, logger, dir } = this.ctx;
    const loaded = await this.map.load(this.index, this.readOnly);
    let maxSeq = loaded.seq;
    let nextChunk = loaded.nextChunkId;

    const keys = await backend.list(chunkPrefix(this.info.id));
    const present = new Set<number>();
    const orphans: string[] = [];
    for (const key of keys) {
      const id = parseChunkKey(this.info.id, key);
      if (id === null) continue;
      present.add(id);
      if (this.index.chunkLive(id).blocks > 0) continue;
      if (id >= loaded.nextChunkId) {
        // Written by a flush that crashed before its map commit: its seqs still count.
        const h = await backend.get(key, 0, SEGMENT_HEADER).then((b) => decodeChunkHeader(b, key, this.info.id)).catch(() => null);
        if (h && h.maxSeq > maxSeq) maxSeq = h.maxSeq;
      }
      if (id >= nextChunk) nextChunk = id + 1;
      orphans.push(key);
    }
    this.index.forEachLiveChunk((id, refs) => {
      if (!present.has(id)) {
        throw new VbfsError('VBFS_CORRUPT', `volume '${this.name}': chunk object ${chunkKey(this.info.id, id)} holds ${refs} blocks but is missing from the backend`, {
          path: chunkKey(this.info.id, id),
        });
      }
    });
    // Chunks the map load found superseded are orphans in the listing above.
    this.index.takeDeadChunks();

    const bs = this.blockSize;
    const replay = await replayWal(fileIO, `${dir}/wal`, this.info.id, bs, this.readOnly, logger, (h, buf, off) => {
      if (h.block >= this.blockCount) {
        throw new VbfsError('VBFS_CORRUPT', `WAL record for block ${h.block} beyond the end of volume '${this.name}'`, { block: h.block });
      }
      if (h.seq <= this.index.persistedSeq(h.block)) return; // already in a chunk (crash before the WAL was reclaimed)
      const slot = this.arena.allocForce();
      if (h.flags & FLAG_LZ4) this.arena.copyIn(slot, lz4UncompressSync(buf.subarray(off, off + h.len)), 0);
      else this.arena.copyIn(slot, buf, off);
      this.arena.rawCrc[slot] = buf.readUInt32LE(off - RECORD_HEADER);
      this.arena.rawCrcOk[slot] = h.flags & FLAG_LZ4 ? 0 : 1;
      this.arena.blockOf[slot] = h.block;
      this.arena.seqOf[slot] = h.seq;
      this.arena.release(this.index.setHot(h.block, slot, true));
    });
    if (replay.maxSeq > maxSeq) maxSeq = replay.maxSeq;
    this.seq = maxSeq;
    this.nextChunkId = nextChunk;

    if (this.readOnly) return;
    await this.upgradeFormat();
    for (const key of orphans) await backend.delete(key);
    this.wal = new WalWriter({
      dir: `${dir}/wal`,
      fileIO,
      volumeId: this.info.id,
      blockSize: bs,
      segmentBytes: this.t.walSegmentBytes,
      bufferBytes: Math.max(WAL_BUFFER_BYTES, 2 * (RECORD_HEADER + bs)),
      nextSegment: replay.lastSegment + 1,
      existingSegments: replay.segments,
      logger,
      noSpaceRetryMs: this.t.noSpaceRetryMs,
    });
    this.wal.durableSeq = maxSeq;
    if (replay.records > 0) logger.info('replayed WAL', { volume: this.name, records: replay.records, pendingBlocks: this.arena.used });
    this.flushTimer = setInterval(() => {
      if (this.arena.used > 0) this.kickFlush();
    }, this.t.flushIntervalMs);
    this.flushTimer.unref();
    if (this.arena.used * bs >= this.t.flushBytes) this.kickFlush();
  }

  /**
   * A format 1 volume is rewritten as format 2 before the first format 2 WAL segment
   * or map log is written, so an older build refuses it (unsupported version) instead
   * of reading a sync marker as a block. Atomic: temp file, sync, rename, sync dir.
   */
  private async upgradeFormat(): Promise<void> {
    if (this.info.formatVersion >= VOLUME_FORMAT_VERSION) return;
    const { fileIO, dir, logger } = this.ctx;
    const next: VolumeInfo = { ...this.info, formatVersion: VOLUME_FORMAT_VERSION };
    const tmp = `${dir}/volume.json.tmp`;
    const fd = await fileIO.open(tmp, 'w+');
    try {
      await fd.write(encodeVolumeMeta(next), 0);
      await fd.sync();
    } finally {
      await fd.close();
    }
    await fileIO.rename(tmp, `${dir}/volume.json`);
    await fileIO.fsyncDir(dir);
    logger.info('upgraded volume format', { volume: this.name, from: this.info.formatVersion, to: VOLUME_FORMAT_VERSION });
    this.meta = next;
  }

  // ---------------------------------------------------------------- write path

  /**
   * Write `data` at byte `offset`. Writes are applied in arrival order (one queue),
   * so overlapping writes keep their order even when one of them needs a
   * read-modify-write of a partial block. `data` is read only until the returned
   * promise settles (callers may reuse it after that); what the settled promise
   * guarantees about durability depends on the mode.
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    try {
      this.checkWritable();
      this.checkRange(offset, data.length);
    } catch (err) {
      return Promise.reject(err);
    }
    if (data.length === 0) return RESOLVED;
    this.lastIo = performance.now();
    this.s.writes++;
    this.s.writeBytes += data.length;
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

  /** What a write waits for once its blocks are in the arena and the WAL buffer. */
  private afterApply(): Promise<void> {
    if (this.durability === 'strict') return this.syncWal();
    if (this.durability === 'batched') return this.batchedCommit();
    return this.walBackpressure();
  }

  /**
   * Relaxed and async modes do not wait for the disk, but they must not run
   * ahead of it without bound either: the WAL writes queued behind a slow disk
   * are all waited for at the start of the next flush (its WAL sync), which
   * stalls every writer for as long as the backlog takes. So a background sync
   * starts at half of walBacklogBytes behind, and a writer waits for one at the
   * full amount (one flush wave's worth).
   */
  private walBackpressure(): Promise<void> {
    const wal = this.wal as WalWriter;
    const cap = this.walBacklogBytes;
    const behind = wal.unsyncedBytes;
    // Proportional: wait only until the older half of the backlog is durable
    // (usually the background sync started at half the cap), not all of it.
    if (behind >= cap) return this.syncWal(wal.position - cap / 2);
    if (behind >= cap / 2) wal.kickSync();
    return RESOLVED;
  }

  /** How far relaxed/async writers may run ahead of the WAL's disk: one flush wave. */
  private get walBacklogBytes(): number {
    const rec = RECORD_HEADER + this.blockSize;
    const perChunk = Math.max(1, Math.floor((this.t.chunkBytes - SEGMENT_HEADER) / rec));
    return perChunk * this.waveChunks(perChunk) * rec;
  }

  /**
   * Batched mode: a group commit starts every `batchBlocks` blocks or `batchMs`
   * after a write, and the writer does not wait for it. But a writer that runs
   * ahead of the disk by twice the batch waits for the commit in flight, so the
   * loss window stays bounded by blocks even when timers cannot fire (a busy event
   * loop) and by time when they can.
   */
  private batchedCommit(): Promise<void> {
    const wal = this.wal as WalWriter;
    if (wal.unsyncedBytes >= 2 * this.t.batchBlocks * (RECORD_HEADER + this.blockSize)) return this.syncWal();
    this.scheduleBatchSync();
    return RESOLVED;
  }

  /** Apply the write now if nothing can make it wait; false (and nothing done) otherwise. */
  private applySync(offset: number, data: Uint8Array): boolean {
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + data.length - 1) / bs);
    if (last - first + 1 > this.arena.available) return false;
    if (offset % bs !== 0 && this.inMemoryBlock(first) === undefined) return false;
    if ((offset + data.length) % bs !== 0 && this.inMemoryBlock(last) === undefined) return false;
    let pos = offset;
    const end = offset + data.length;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const inOff = pos - block * bs;
      const n = Math.min(bs - inOff, end - pos);
      const slot = this.arena.alloc();
      if (n === bs) this.arena.copyIn(slot, data, pos - offset);
      else this.fillPartial(slot, this.inMemoryBlock(block) as Buffer | null, data, pos - offset, inOff, n);
      this.commitSlot(block, slot);
      pos += n;
    }
    if (this.arena.used * bs >= this.t.flushBytes) this.kickFlush();
    return true;
  }

  /** A partial block: the block's current bytes (or zeros), overlaid with data[src, src + n) at inOff. */
  private fillPartial(slot: number, base: Buffer | null, data: Uint8Array, src: number, inOff: number, n: number): void {
    const slab = this.arena.slab(slot);
    const o = this.arena.offset(slot);
    if (base === null) slab.fill(0, o, o + this.blockSize);
    else this.arena.copyIn(slot, base, 0);
    copyBytes(data, slab, o + inOff, src, src + n);
  }

  private async apply(offset: number, data: Uint8Array): Promise<void> {
    this.checkWritable();
    const bs = this.blockSize;
    const end = offset + data.length;
    let pos = offset;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const inOff = pos - block * bs;
      const n = Math.min(bs - inOff, end - pos);
      let slot = this.arena.alloc();
      while (slot < 0) slot = await this.waitForSlot();
      if (n === bs) {
        this.arena.copyIn(slot, data, pos - offset);
      } else {
        // Partial block: start from the current version of the block.
        let base = this.inMemoryBlock(block);
        if (base === undefined) base = await this.fetchBlock(block);
        this.fillPartial(slot, base, data, pos - offset, inOff, n);
      }
      this.commitSlot(block, slot);
      pos += n;
    }
    if (this.arena.used * bs >= this.t.flushBytes) this.kickFlush();
  }

  /** Make `slot` the block's current version and log it. */
  private commitSlot(block: number, slot: number): void {
    const seq = ++this.seq;
    this.arena.blockOf[slot] = block;
    this.arena.seqOf[slot] = seq;
    this.arena.release(this.index.setHot(block, slot));
    this.cache.delete(block);
    const wal = this.wal as WalWriter;
    const slab = this.arena.slab(slot);
    const o = this.arena.offset(slot);
    if (this.info.compression === 'lz4') {
      const c = lz4CompressSync(slab.subarray(o, o + this.blockSize));
      if (c.length < (this.blockSize * 9) / 10) {
        wal.append(seq, block, FLAG_LZ4, this.blockSize, c, 0, c.length);
        this.arena.rawCrcOk[slot] = 0;
        return;
      }
    }
    this.arena.rawCrc[slot] = wal.append(seq, block, 0, this.blockSize, slab, o, o + this.blockSize);
    this.arena.rawCrcOk[slot] = 1;
  }

  private async waitForSlot(): Promise<number> {
    // The flusher cannot make room while the store disk is full: refuse, do not hang.
    if (this.diskFull) throw this.diskFull;
    this.kickFlush();
    await this.arena.waitFree();
    this.checkWritable();
    return this.arena.alloc();
  }

  private scheduleBatchSync(): void {
    const wal = this.wal as WalWriter;
    if (wal.unsyncedBlocks >= this.t.batchBlocks) {
      this.backgroundSync();
      return;
    }
    if (this.batchTimer || !wal.hasUnsynced) return;
    this.batchTimer = setTimeout(() => {
      this.batchTimer = null;
      this.backgroundSync();
    }, this.t.batchMs);
  }

  private backgroundSync(): void {
    // A failure poisons the WAL; the next write or fsync reports it.
    (this.wal as WalWriter).kickSync();
  }

  private async syncWal(upTo?: number): Promise<void> {
    try {
      await (this.wal as WalWriter).sync(upTo);
    } catch (err) {
      throw this.failUnlessNoSpace(err);
    }
  }

  /**
   * Everything written before this call is durable when it resolves (strict,
   * batched, relaxed). In async mode a sync is started and not awaited.
   */
  async fsync(): Promise<void> {
    this.checkWritable();
    const t0 = performance.now();
    this.s.fsyncs++;
    if (this.writeTail) await this.writeTail.catch(() => undefined);
    if (this.durability === 'async') {
      this.backgroundSync();
      return;
    }
    await this.syncWal();
    this.fsyncLat.add(performance.now() - t0);
  }

  // ---------------------------------------------------------------- read path

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
    const length = out.length;
    this.checkOpen();
    this.checkRange(offset, length);
    this.s.reads++;
    this.s.readBytes += length;
    this.lastIo = performance.now();
    if (length === 0) return;
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const sequential = first === this.lastReadEnd || first === this.lastReadEnd + 1;
    this.lastReadEnd = last;
    // A readahead in flight over these blocks: wait for it rather than read them twice.
    const ra = this.readahead;
    if (ra && first < ra.end && last >= ra.start) await ra.done;
    let runStart = -1;
    const fetches: Promise<void>[] = [];
    const flushRun = (endExclusive: number, readahead: boolean): void => {
      if (runStart < 0) return;
      fetches.push(this.readRun(runStart, endExclusive, endExclusive, out, offset));
      if (readahead) this.startReadahead(endExclusive);
      runStart = -1;
    };
    for (let b = first; b <= last; b++) {
      const st = this.index.state(b);
      if (st === PERSISTED) {
        if (runStart >= 0 && !this.contiguous(b - 1, b)) flushRun(b, false);
        if (runStart < 0) runStart = b;
        continue;
      }
      flushRun(b, false);
      const [from, to, dst] = this.clip(b, offset, length);
      if (st === HOT || st === PENDING) {
        this.arena.copyOut(this.index.slot(b), out, dst, from, to);
      } else if (st === CACHED) {
        if (!this.cache.copyOut(b, out, dst, from, to)) fetches.push(this.readRun(b, b + 1, b + 1, out, offset));
      } else {
        out.fill(0, dst, dst + (to - from));
      }
    }
    const ahead = sequential && this.t.readaheadBytes > 0;
    if (runStart >= 0) flushRun(last + 1, ahead);
    else if (ahead) this.startReadahead(last + 1);
    if (fetches.length > 0) {
      // Wait for every fetch, failed or not: `out` may be the kernel's buffer, which
      // must not be written after our promise settles (and the reply is sent).
      const results = await Promise.allSettled(fetches);
      for (const r of results) {
        if (r.status === 'rejected') {
          if (isVbfsError(r.reason, 'VBFS_CORRUPT')) this.s.corruptReads++;
          throw r.reason;
        }
      }
    }
  }

  /** Where block b's bytes go: [from, to) within the block, at out[dst]. */
  private clip(b: number, offset: number, length: number): [number, number, number] {
    const bs = this.blockSize;
    const start = b * bs;
    const from = Math.max(offset, start) - start;
    const to = Math.min(offset + length, start + bs) - start;
    return [from, to, start + from - offset];
  }

  /** b and b+1 are adjacent records of the same chunk: one backend read covers both. */
  private contiguous(a: number, b: number): boolean {
    return this.index.contiguous(a, b);
  }

  /**
   * Sequential reads: fetch the next window into the cache in the background, so
   * the request that triggered it does not wait for it and the next requests find
   * their blocks cached (or wait for this fetch instead of issuing their own). The
   * window starts at the first block after `from` that is persisted but not cached,
   * and runs over blocks adjacent in the same chunk. One readahead at a time;
   * errors are ignored (the read that needs the block fetches it again and reports).
   */
  private startReadahead(from: number): void {
    if (this.readahead || this.t.cacheBytes < this.t.readaheadBytes) return;
    const window = Math.floor(this.t.readaheadBytes / this.blockSize);
    const limit = Math.min(this.blockCount, from + window);
    let b = from;
    while (b < limit && this.index.state(b) !== PERSISTED) b++;
    if (b >= limit) return;
    let e = b + 1;
    while (e < Math.min(this.blockCount, b + window) && this.index.state(e) === PERSISTED && this.contiguous(e - 1, e)) e++;
    const ra = {
      start: b,
      end: e,
      done: this.readRun(b, b, e, EMPTY_BUFFER, b * this.blockSize)
        .catch(() => undefined)
        .finally(() => {
          if (this.readahead === ra) this.readahead = null;
        }),
    };
    this.readahead = ra;
  }

  /**
   * Fetch blocks [b0, fetchEnd) with one ranged backend read; copy [b0, outEnd)
   * into `out`, and keep verified blocks in the read cache (the readahead part only
   * goes to the cache).
   */
  private async readRun(b0: number, outEnd: number, fetchEnd: number, out: Buffer, offset: number): Promise<void> {
    const ix = this.index;
    const chunk = ix.persistedChunk(b0);
    const start = ix.persistedOff(b0);
    const lastB = fetchEnd - 1;
    const end = ix.persistedOff(lastB) + RECORD_HEADER + ix.persistedLen(lastB);
    const seqs: number[] = [];
    for (let b = b0; b < fetchEnd; b++) seqs.push(ix.persistedSeq(b));
    const key = chunkKey(this.info.id, chunk);
    this.readsInFlight++;
    let buf: Buffer;
    try {
      buf = await this.ctx.backend.get(key, start, end - start);
    } catch (err) {
      this.s.errors++;
      throw err;
    } finally {
      this.readsInFlight--;
    }
    const bs = this.blockSize;
    let at = 0;
    for (let b = b0; b < fetchEnd; b++) {
      const seq = seqs[b - b0] as number;
      let data: Buffer;
      let base: number;
      const len = buf.length >= at + 8 ? buf.readUInt32LE(at + 4) : 0;
      try {
        const flags = verifyChunkRecord(buf, at, b, seq, bs, key, start + at);
        // Raw payloads are used in place in the run buffer: no copy, no allocation per block.
        data = flags & FLAG_LZ4 ? lz4UncompressSync(buf.subarray(at + RECORD_HEADER, at + RECORD_HEADER + len)) : buf;
        base = flags & FLAG_LZ4 ? 0 : at + RECORD_HEADER;
        const got = flags & FLAG_LZ4 ? data.length : len;
        if (got !== bs) {
          throw new VbfsError('VBFS_CORRUPT', `chunk object ${key}: record at offset ${start + at} holds ${got} bytes, not one block`, {
            path: key,
            offset: start + at,
            block: b,
          });
        }
      } catch (err) {
        this.s.errors++;
        // A checksummed payload that LZ4 rejects is damage too (or a bug): never data.
        const e = isVbfsError(err)
          ? err
          : new VbfsError('VBFS_CORRUPT', `chunk object ${key}: record at offset ${start + at} does not decompress: ${(err as Error)?.message ?? String(err)}`, {
              path: key,
              offset: start + at,
              block: b,
            });
        throw this.damaged(e, key);
      }
      if (b < outEnd) {
        const [from, to, dst] = this.clip(b, offset, out.length);
        copyBytes(data, out, dst, base + from, base + to);
      }
      // Cache only if the block still has exactly this version and no newer in-memory one.
      if (ix.persistedSeq(b) === seq && ix.state(b) === PERSISTED && this.cache.set(b, data, base)) ix.setCached(b, true);
      at += RECORD_HEADER + len;
    }
    this.processDeadChunks();
  }

  /**
   * A record that failed verification: log it once per object and offset (every
   * read of the block meets it again, and a flood of identical lines would bury
   * other messages), and mark the error as logged for the callers. The damaged
   * record is never cached, so each read of it fails the same way.
   */
  private damaged(err: unknown, key: string): unknown {
    if (!isVbfsError(err, 'VBFS_CORRUPT')) return err;
    const offset = err.details['offset'];
    const id = `${key}@${String(offset)}`;
    // Marked as logged in every branch: beyond the limit, one line has said so.
    err.details['logged'] = true;
    if (this.damageLogged.has(id)) return err;
    if (this.damageLogged.size < DAMAGE_LOG_LIMIT) {
      this.damageLogged.add(id);
      const file = this.ctx.backend.describe?.(key) ?? key;
      this.ctx.logger.error(`damaged data in ${file} at offset ${String(offset)}: reads of block ${String(err.details['block'])} fail with an I/O error (${err.message})`, {
        volume: this.name,
        file,
        offset,
        block: err.details['block'],
      });
    } else if (this.damageLogged.size === DAMAGE_LOG_LIMIT) {
      this.damageLogged.add('(limit)');
      this.ctx.logger.error(`more than ${DAMAGE_LOG_LIMIT} damaged records in volume '${this.name}': further ones are not logged individually`, { volume: this.name });
    }
    return err;
  }

  /** The block's current bytes if they are in memory (arena or cache); null if it is Empty. */
  private inMemoryBlock(block: number): Buffer | null | undefined {
    const st = this.index.state(block);
    if (st === EMPTY) return null;
    if (st === HOT || st === PENDING) return this.arena.view(this.index.slot(block));
    if (st === CACHED) return this.cache.view(block);
    return undefined;
  }

  private async fetchBlock(block: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(this.blockSize);
    await this.readRun(block, block + 1, block + 1, out, block * this.blockSize);
    return out;
  }

  /** The state of one block (for tests, tools and the .stats file). */
  blockState(block: number): BlockState {
    return this.index.state(block);
  }

  // ---------------------------------------------------------------- flush path

  /** Start a background flush, or ask the running one to go again when it ends. */
  private kickFlush(): void {
    if (this.readOnly || this.closed || this.noMoreKicks || this.failed) return;
    if (this.flushRun) {
      this.flushAgain = true;
      return;
    }
    this.startFlush().catch((err) => {
      this.failUnlessNoSpace(err);
    });
  }

  /**
   * Every flush goes through here, whoever started it (size, timer, backpressure,
   * flush(), close()), so a request that arrived while one was running is never
   * dropped: when it ends, it goes again if asked or if enough is pending.
   */
  private startFlush(): Promise<void> {
    let progress = false;
    let noSpace = false;
    const run = this.flushOnce()
      .then(
        (n) => {
          progress = n > 0;
          if (this.diskFull) {
            this.diskFull = null;
            this.ctx.logger.info('flush succeeded again after running out of space', { volume: this.name });
          }
        },
        (err: unknown) => {
          noSpace = this.noteDiskFull(err);
          throw err;
        },
      )
      .finally(() => {
        this.flushRun = null;
        // Go again if asked while running, or if this one made progress and enough
        // is still pending. Never after an empty snapshot on its own: slots held by
        // a write still in progress (a read-modify-write) count as used but cannot
        // be flushed, and re-kicking on them spins forever. Nor after running out
        // of space: the retry timer goes again.
        const again = !noSpace && (this.flushAgain || (progress && (this.arena.used * this.blockSize >= this.t.flushBytes || this.arena.full)));
        this.flushAgain = false;
        if (again && this.arena.used > 0) this.kickFlush();
      });
    this.flushRun = run;
    return run;
  }

  /** Pack everything written so far into chunk objects (waits for a running flush first). */
  async flush(): Promise<void> {
    this.checkWritable();
    if (this.writeTail) await this.writeTail.catch(() => undefined);
    while (this.flushRun) await this.flushRun.catch(() => undefined);
    this.checkWritable();
    try {
      await this.startFlush();
    } catch (err) {
      throw this.failUnlessNoSpace(err);
    }
  }

  /**
   * A flush that failed for lack of space is not a failure of the volume: its
   * data is still in the write buffer and the WAL, the chunk objects of the failed
   * wave were not committed, and the map log rewrites a failed append in place. So
   * it is retried every noSpaceRetryMs; meanwhile writers that need room get the
   * error instead of waiting. True if err was such a case.
   */
  private noteDiskFull(err: unknown): boolean {
    if (!isNoSpace(err) || this.failed || this.wal?.error) return false;
    if (!this.diskFull) this.ctx.logger.warn('store disk full: flush failed; retrying until space returns', { volume: this.name, error: String(err) });
    this.diskFull = ioError(`volume '${this.name}': store disk full`, err);
    if (!this.diskFullTimer && !this.closed && !this.closing) {
      this.diskFullTimer = setTimeout(() => {
        this.diskFullTimer = null;
        if (this.arena.used > 0) this.kickFlush();
      }, this.t.noSpaceRetryMs);
      this.diskFullTimer.unref();
    }
    this.arena.wakeAll(); // writers waiting for room: refused now (waitForSlot)
    this.processDeadChunks(); // the failed wave's written chunks: their space back
    return true;
  }

  /**
   * One flush: snapshot the current version of every in-memory block (pinning
   * their slots), sync the WAL and seal its segment, then per chunk: build it,
   * write it, commit its locations to the map log; then drop WAL segments the
   * snapshot covered. Everything in a sealed segment is either in the snapshot or
   * superseded by something that is, so after the commits the segment is redundant.
   */
  private async flushOnce(): Promise<number> {
    const wal = this.wal as WalWriter;
    const entries = this.snapshot();
    if (entries.length === 0) {
      // Nothing in memory: every WAL record left (e.g. replayed ones already in
      // chunks) is redundant. Seal and drop them so they are not replayed forever.
      if (wal.segmentCount > 0 && this.arena.used === 0) await wal.reclaim(await wal.rotate());
      return 0;
    }
    let sealed: number;
    try {
      // Both started in this same tick (the snapshot and the seal must agree), and
      // both awaited together so a failing WAL leaves no unobserved rejection.
      [, sealed] = await Promise.all([wal.sync(), wal.rotate()]);
    } catch (err) {
      for (const slot of entries) this.arena.unpin(slot);
      throw err;
    }
    // Slots are unpinned wave by wave: a slot whose block the wave persisted (or
    // that a newer write superseded meanwhile) is free as soon as its wave is
    // committed, so a writer waiting for room waits for one wave, not for the
    // whole snapshot (up to the whole write buffer) to reach the backend.
    let unpinned = 0;
    try {
      // Group by raw size: compressed records are never larger, so a group never overflows a chunk.
      const perChunk = Math.max(1, Math.floor((this.t.chunkBytes - SEGMENT_HEADER) / (RECORD_HEADER + this.blockSize)));
      const perWave = perChunk * this.waveChunks(perChunk);
      for (let i = 0; i < entries.length; i += perWave) {
        // The WAL's queued writes go to the disk before the next wave's chunks: on a
        // slow disk a writer waiting for WAL room (walBackpressure) then waits for
        // at most one wave, instead of for every wave the flusher queues ahead of it.
        if (i > 0) await wal.sync();
        const end = Math.min(entries.length, i + perWave);
        const wave: number[][] = [];
        for (let k = i; k < end; k += perChunk) wave.push(entries.slice(k, Math.min(k + perChunk, end)));
        await this.writeWave(wave);
        for (; unpinned < end; unpinned++) this.arena.unpin(entries[unpinned] as number);
      }
    } finally {
      for (; unpinned < entries.length; unpinned++) this.arena.unpin(entries[unpinned] as number);
    }
    await this.ctx.failpoint('flush:beforeWalReclaim');
    await wal.reclaim(sealed);
    await this.ctx.failpoint('flush:afterWalReclaim');
    if (this.map.logBytes >= this.t.checkpointBytes) await this.checkpoint();
    this.processDeadChunks();
    return entries.length;
  }

  /**
   * Chunks per wave: FLUSH_WAVE, but a wave never pins more than a quarter of the
   * write buffer, so with a small buffer writers still find room while a wave is
   * being written, and the wait for room stays one (small) wave.
   */
  private waveChunks(perChunk: number): number {
    return Math.max(1, Math.min(FLUSH_WAVE, Math.floor(this.arena.limitSlots / 4 / perChunk)));
  }

  /** Slots holding the current version of their block, pinned, in block order. */
  private snapshot(): number[] {
    const a = this.arena;
    const out: number[] = [];
    for (let slot = 0; slot < a.highWater; slot++) {
      if (a.isPinned(slot)) continue;
      const block = a.blockOf[slot] as number;
      if (this.index.slot(block) === slot) {
        out.push(slot);
        a.pin(slot);
      }
    }
    return out.sort((x, y) => (a.blockOf[x] as number) - (a.blockOf[y] as number));
  }

  /**
   * Write a wave of chunk objects in parallel (their fdatasyncs overlap), then
   * commit all their locations with one map log write + fdatasync, then point the
   * index at them. A crash before the commit leaves orphan chunks, which recovery
   * deletes; the WAL still holds their data.
   */
  private async writeWave(groups: number[][]): Promise<void> {
    const built: BuiltChunk[] = [];
    for (const slots of groups) built.push(await this.buildChunk(slots));
    const puts = await Promise.allSettled(
      built.map(async (c) => {
        await this.ctx.failpoint('flush:beforeChunkWrite');
        await this.ctx.backend.put(chunkKey(this.info.id, c.id), c.buf);
        await this.ctx.failpoint('flush:afterChunkWrite');
      }),
    );
    for (const c of built) if (this.chunkPool.length < FLUSH_WAVE) this.chunkPool.push(c.base);
    const failed = puts.find((p): p is PromiseRejectedResult => p.status === 'rejected');
    if (failed) {
      // Nothing points at this wave's chunks: give the space of those written back
      // now (recovery would delete them as orphans anyway).
      if (isNoSpace(failed.reason)) {
        for (let k = 0; k < built.length; k++) {
          if (puts[k]?.status === 'fulfilled') this.deadChunks.push((built[k] as BuiltChunk).id);
        }
      }
      throw failed.reason;
    }
    await this.map.commit(built.map((c) => c.placement));
    await this.ctx.failpoint('flush:afterMapCommit');
    const a = this.arena;
    for (const c of built) {
      for (let k = 0; k < c.slots.length; k++) {
        const slot = c.slots[k] as number;
        const pl = c.placement;
        if (this.index.setPersisted(pl.blocks[k] as number, pl.seqs[k] as number, c.id, pl.offsets[k] as number, pl.lens[k] as number, pl.flags[k] as number, slot)) a.release(slot);
      }
      this.s.chunkFlushes++;
      this.s.flushedBytes += c.buf.length;
    }
    for (const cid of this.index.takeDeadChunks()) this.deadChunks.push(cid);
  }

  /**
   * Encode one chunk object from pinned arena slots (sorted by block) and its
   * commit payload: records go straight from the arena into the chunk buffer, no
   * per-block objects, and a raw record reuses the CRC of its WAL record.
   */
  private async buildChunk(slots: number[]): Promise<BuiltChunk> {
    const a = this.arena;
    const bs = this.blockSize;
    const n = slots.length;
    let packed: (Buffer | null)[] | null = null;
    let size = SEGMENT_HEADER + n * (RECORD_HEADER + bs);
    if (this.info.compression === 'lz4') {
      // Off the event loop (thread pool); kept raw where it does not shrink.
      packed = await Promise.all(slots.map((s) => lz4Compress(a.view(s))));
      size = SEGMENT_HEADER;
      for (let k = 0; k < n; k++) {
        const c = packed[k] as Buffer;
        if (c.length >= (bs * 9) / 10) packed[k] = null;
        size += RECORD_HEADER + (packed[k] ? c.length : bs);
      }
    }
    const id = this.nextChunkId++;
    const base = this.takeChunkBuffer(size);
    const buf = base.subarray(0, size);
    const placement = allocPlacement(id, n);
    let pos = SEGMENT_HEADER;
    let maxSeq = 0;
    for (let k = 0; k < n; k++) {
      if (k > 0 && k % BUILD_SLICE === 0) await new Promise<void>((r) => setImmediate(r));
      const slot = slots[k] as number;
      const block = a.blockOf[slot] as number;
      const seq = a.seqOf[slot] as number;
      if (seq > maxSeq) maxSeq = seq;
      const c = packed?.[k];
      const o = a.offset(slot);
      const end = c
        ? encodeRecord(buf, pos, seq, block, FLAG_LZ4, bs, c)
        : a.rawCrcOk[slot]
          ? encodeRecordWithCrc(buf, pos, a.rawCrc[slot] as number, seq, block, 0, bs, a.slab(slot), o, o + bs)
          : encodeRecord(buf, pos, seq, block, 0, bs, a.slab(slot), o, o + bs);
      placement.blocks[k] = block;
      placement.seqs[k] = seq;
      placement.offsets[k] = pos;
      placement.lens[k] = end - pos - RECORD_HEADER;
      placement.flags[k] = c ? FLAG_LZ4 : 0;
      pos = end;
    }
    encodeChunkHeader(buf, this.info.id, bs, id, n, maxSeq);
    return { id, buf, base, placement, slots };
  }

  /** Chunk buffers are reused across flushes (a backend is done with the data when put() resolves). */
  private takeChunkBuffer(size: number): Buffer {
    const b = this.chunkPool.pop();
    if (b && b.length >= size) return b;
    return Buffer.allocUnsafeSlow(Math.max(size, this.t.chunkBytes));
  }

  /** Delete chunk objects no block points at any more, once no read may still be using them. */
  private processDeadChunks(): void {
    if (this.readsInFlight > 0 || this.deadChunks.length === 0 || this.readOnly) return;
    const dead = this.deadChunks;
    this.deadChunks = [];
    for (const id of dead) {
      this.ctx.backend.delete(chunkKey(this.info.id, id)).catch((err) => this.ctx.logger.warn('could not delete unused chunk', { chunk: id, error: String(err) }));
    }
  }

  private async checkpoint(): Promise<void> {
    await this.map.checkpoint(this.index, this.seq, this.nextChunkId);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Flush, sync, checkpoint, release the lock. Idempotent. */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    if (this.flushTimer) clearInterval(this.flushTimer);
    if (this.diskFullTimer) clearTimeout(this.diskFullTimer);
    if (this.idleTimer) clearInterval(this.idleTimer);
    if (this.batchTimer) clearTimeout(this.batchTimer);
    try {
      if (!this.readOnly && !this.failed) {
        // Writers still queued may need background flushes to make room; after
        // them, no new flush starts but the final one.
        if (this.writeTail) await this.writeTail.catch(() => undefined);
        this.noMoreKicks = true;
        while (this.flushRun) await this.flushRun.catch(() => undefined);
        if (this.failed) throw this.failed;
        await this.startFlush();
        await this.syncWal();
        if (this.map.logBytes > 0) await this.checkpoint();
        this.processDeadChunks();
      }
    } finally {
      this.closed = true;
      this.arena.wakeAll();
      await this.wal?.close();
      await this.map.close().catch(() => undefined);
      await this.lock?.release().catch(() => undefined);
      this.ctx.onClose?.();
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  stats(): VolumeStats {
    const wal = this.wal;
    return {
      ...this.s,
      walWrites: wal?.writes ?? 0,
      walSyncs: wal?.syncs ?? 0,
      walBytes: wal?.bytes ?? 0,
      fsyncP50Ms: this.fsyncLat.quantile(0.5),
      fsyncP99Ms: this.fsyncLat.quantile(0.99),
      pendingBytes: this.arena.used * this.blockSize,
      cacheHits: this.cache.hits,
      cacheMisses: this.cache.misses,
      cacheBytes: this.cache.bytes,
      checkpoints: this.map.checkpoints,
      errors: this.s.errors,
      seq: this.seq,
    };
  }

  // ---------------------------------------------------------------- checks

  /** An out-of-space error that leaves the volume writable once space returns, or fail(). */
  private failUnlessNoSpace(err: unknown): VbfsError {
    if (isNoSpace(err) && !this.failed && !this.wal?.error) return ioError(`volume '${this.name}'`, err);
    return this.fail(err);
  }

  private fail(err: unknown): VbfsError {
    const e = err instanceof VbfsError ? err : new VbfsError('VBFS_IO', `volume '${this.name}': ${String((err as Error)?.message ?? err)}`, {}, { cause: err });
    if (!this.failed) {
      this.failed = e;
      this.s.errors++;
      this.ctx.logger.error('volume failed; further writes are refused until it is reopened', { volume: this.name, error: e.message });
      this.arena.wakeAll();
    }
    return e;
  }

  private checkOpen(): void {
    if (this.closed || this.closing) throw new VbfsError('VBFS_CLOSED', `volume '${this.name}' is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw new VbfsError('VBFS_READ_ONLY', `volume '${this.name}' is open read-only`);
    if (this.failed) throw this.failed;
    const walError = this.wal?.error;
    if (walError) throw this.fail(walError);
    // The store disk is full and the WAL waits to rewrite a batch: refuse (the
    // caller sees ENOSPC) rather than pile up more, and retry the WAL write now.
    const noSpace = this.wal?.noSpace;
    if (noSpace) {
      (this.wal as WalWriter).retryNow();
      throw noSpace;
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid offset ${String(offset)}`, { offset });
    if (!Number.isSafeInteger(length) || length < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid length ${String(length)}`, { length });
    if (offset + length > this.size) {
      throw new VbfsError('VBFS_OUT_OF_RANGE', `range ${offset}+${length} is past the end of volume '${this.name}' (${this.size} bytes)`, { offset, length });
    }
  }
}

function resolveTunables(opts: VolumeOpenOptions, blockSize: number): VolumeTunables {
  const t: VolumeTunables = { ...DEFAULT_TUNABLES };
  for (const k of Object.keys(DEFAULT_TUNABLES) as (keyof VolumeTunables)[]) {
    const v = opts[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid ${k}: ${String(v)}`);
    t[k] = v;
  }
  const minChunk = SEGMENT_HEADER + RECORD_HEADER + blockSize;
  if (t.chunkBytes < minChunk) throw new VbfsError('VBFS_INVALID_ARGUMENT', `chunkBytes must be at least ${minChunk}`);
  if (t.walSegmentBytes < minChunk) throw new VbfsError('VBFS_INVALID_ARGUMENT', `walSegmentBytes must be at least ${minChunk}`);
  if (t.writeBufferBytes < 2 * blockSize) throw new VbfsError('VBFS_INVALID_ARGUMENT', `writeBufferBytes must be at least two blocks`);
  if (t.flushIntervalMs < 1) t.flushIntervalMs = 1;
  return t;
}
