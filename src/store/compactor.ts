import { VbfsError, isVbfsError } from '../errors';
import { chunkKey, decodeChunkHeader, encodeChunkHeader, verifyChunkRecord } from '../chunk/chunk';
import { RECORD_HEADER } from '../format/block-record';
import { allocPlacement, type ChunkPlacement } from '../format/map-records';
import { EMPTY, type BlockIndex } from '../map/block-index';
import { SEGMENT_HEADER } from '../format/segment-header';
import type { Flusher } from './flusher';
import type { VolumeCore } from './volume-core';

/** A chunk is not worth rewriting for less dead space than this fraction of it. */
const MIN_DEAD_FRACTION = 0.02;
/** Foreground I/O within this long counts as "running": compaction is rate limited then. */
const FOREGROUND_WINDOW_MS = 1000;
/**
 * While foreground I/O runs, a round is followed by a pause of at least this many
 * times its own duration (compaction busy at most 1/(1+x) of the time). A round's
 * CPU (range reads, record checks, the copy, a scan of the map) is taken from the
 * foreground's event loop whatever its byte count, and the foreground is CPU-bound
 * when it is fast: the byte rate alone let compaction cost it 25-40%.
 */
const FOREGROUND_PAUSE_FACTOR = 4;
/** ... but never longer than this (a round slowed by a loaded disk must not stall compaction for minutes). */
const MAX_FOREGROUND_PAUSE_MS = 5000;
/** Chunk headers read per event-loop turn by the survey after open. */
const SURVEY_PARALLEL = 8;
/** Ranged reads of live records a round keeps in flight. */
const READ_PARALLEL = 8;
/**
 * Live records at most this far apart in a chunk are read in one request (the dead
 * bytes between them are read too): a local read costs little per request, a
 * remote one a round trip and a request fee, worth some dead bytes.
 */
const LOCAL_READ_GAP = 64 * 1024;
const REMOTE_READ_GAP = 512 * 1024;
/**
 * A round finds its victims' live extents with a pass over the whole map, this
 * many extents per event-loop turn. A large volume written at random holds
 * millions of extents (some 50-100 ns each): in one piece, the pass would stall
 * every FUSE request behind it for a fraction of a second per round. Exported so
 * that tests can make the slices small.
 */
export const compactorScan = { sliceExtents: 16384 };

export interface CompactionProgress {
  /** Dead bytes (stored - live) when the run started, and how many of them were reclaimed so far. */
  reclaimable: number;
  reclaimed: number;
  chunksCompacted: number;
}

export interface CompactionResult {
  rounds: number;
  chunksCompacted: number;
  bytesMoved: number;
  bytesReclaimed: number;
  liveBytes: number;
  storedBytes: number;
}

export interface CompactNowOptions {
  /** Rewrite every chunk holding dead records, not only down to the target. */
  full?: boolean;
  onProgress?: (p: CompactionProgress) => void;
}

interface Victim {
  id: number;
  live: number;
  stored: number;
}

/** One live extent of a victim chunk, as the index had it when the round began. */
interface LiveRun {
  block: number;
  count: number;
  seq: number;
  chunk: number;
  off: number;
  len: number;
  flags: number;
  /** The ranged read that holds it (readRanges). */
  range?: ReadRange;
}

/** One ranged read of a victim chunk: live records close together, read in one request. */
interface ReadRange {
  chunk: number;
  lo: number;
  hi: number;
  buf: Buffer | null;
}

/**
 * The compactor: rewrites the live records of mostly-dead chunk objects into new
 * chunks so that a store holds about what its volumes hold, not every chunk that
 * still has one live block (up to 1024x for 4 KiB blocks in 4 MiB chunks).
 *
 * One round: pick the chunks with the lowest live fraction whose live records fit
 * in one chunk, read those records (ranged reads over live records close together,
 * never whole chunks; counted in readsInFlight so no chunk is deleted under them),
 * verify them, copy them byte for
 * byte into a new chunk (a record names its block and seq, and a sealed record's
 * AAD holds no location, so the copy is valid as is), put it, commit its locations
 * to the map log (serialized with the flusher's commits by the map store), then
 * point the index at the copies, only for blocks still at that version in that
 * chunk: a block overwritten or flushed meanwhile keeps its newer location (and on
 * replay the newer seq wins whatever the log order; an equal seq is the copy,
 * which comes later in the log). The emptied chunks go to the flusher's dead
 * list: deleted once no backend read is in flight, through the same backend (the
 * same fenced path on a bucket volume), after the map commit is durable.
 *
 * Crash points: 'compact:beforeChunkWrite', 'compact:afterChunkWrite' (the new
 * chunk is an orphan: recovery deletes it), 'compact:afterMapCommit' and
 * 'compact:afterRetire' (the old chunks have no live block: recovery deletes them).
 *
 * Policy (tunables): a background check every compactIntervalMs starts a run when
 * stored bytes > live bytes x compactStartRatio or a chunk is below
 * compactChunkLive live; the run stops when stored <= live x compactTargetRatio
 * and no chunk is below compactChunkLive. While foreground reads or writes are
 * running, compaction moves at most compactRateBytes per second.
 */
export class Compactor {
  rounds = 0;
  chunksCompacted = 0;
  bytesMoved = 0;
  bytesReclaimed = 0;
  /** Dead bytes the current run started with and has reclaimed (progress), 0/0 when idle. */
  runReclaimable = 0;
  runReclaimed = 0;
  private run: Promise<CompactionResult> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private survey: Promise<void> | null = null;
  /** Chunks whose records could not be read or verified: left alone until reopen. */
  private readonly skip = new Set<number>();
  private lastForeground = -1;
  private lastForegroundAt = 0;
  private wake: (() => void) | null = null;
  private paused = false;
  /** The running run is a background (rate-limited) one. */
  private runLimited = false;
  /** compactNow() is waiting: a background run ends after its current round. */
  private preempt = false;

  constructor(
    private readonly core: VolumeCore,
    private readonly flusher: Flusher,
  ) {
    const ms = core.tunables.compactIntervalMs;
    if (ms > 0) {
      this.timer = setInterval(() => this.check(), ms);
      this.timer.unref();
    }
  }

  get running(): boolean {
    return this.run !== null;
  }

  /**
   * Hold background compaction (a running one ends after its current round) or let
   * it go again; compactNow() is not held. For programs that want a while of I/O to
   * themselves, and for the bench's alternating idle/compacting slices.
   */
  setPaused(paused: boolean): void {
    this.paused = paused;
    if (paused) this.wake?.();
  }

  /** Stop the background checks and wait for a running round to end (close()). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.wake?.();
    await this.run?.catch(() => undefined);
    await this.survey?.catch(() => undefined);
  }

  /**
   * Learn what the chunks that existed at open hold: the map names only their live
   * records, so a chunk that was mostly dead before the last checkpoint would look
   * full. One header read per chunk (its record count), once per open.
   */
  surveyed(): Promise<void> {
    if (!this.survey) this.survey = surveyChunks(this.core, () => this.stopped);
    return this.survey;
  }

  /** Should a background run start now? */
  needed(): boolean {
    const t = this.core.tunables;
    const { liveBytes, storedBytes } = this.core.index.space();
    if (storedBytes > liveBytes * t.compactStartRatio) return true;
    return this.lowChunk(t.compactChunkLive);
  }

  /** Run a compaction now whatever the start threshold says (vbfs compact); waits for a running one first. */
  async compactNow(opts: CompactNowOptions = {}): Promise<CompactionResult> {
    try {
      while (this.run) {
        // A background run ends after its current round, its pause cut short: it
        // may go on for as long as writes keep making dead space, pausing after
        // every round, and this run does the same work unthrottled anyway.
        if (this.runLimited) {
          this.preempt = true;
          this.wake?.();
        }
        await this.run.catch(() => undefined);
      }
    } finally {
      this.preempt = false;
    }
    this.core.checkOpen();
    return this.start(opts, false);
  }

  private check(): void {
    const core = this.core;
    if (this.run || this.stopped || this.paused || core.closing || core.closed || core.failed || this.flusher.backendDown || this.flusher.diskFull) return;
    if (!this.survey) {
      this.surveyed().catch((err: unknown) => core.ctx.logger.warn('compaction: could not read chunk headers', { volume: core.name, error: String(err) }));
      return;
    }
    if (!this.needed()) return;
    this.start({}, true).catch((err: unknown) => {
      core.ctx.logger.warn('compaction failed; retried later', { volume: core.name, error: String(err) });
    });
  }

  private start(opts: CompactNowOptions, limited: boolean): Promise<CompactionResult> {
    this.runLimited = limited;
    const run = this.runAll(opts, limited).finally(() => {
      this.run = null;
      this.runReclaimable = 0;
      this.runReclaimed = 0;
    });
    this.run = run;
    return run;
  }

  private async runAll(opts: CompactNowOptions, limited: boolean): Promise<CompactionResult> {
    const core = this.core;
    const t = core.tunables;
    await this.surveyed();
    const at0 = { rounds: this.rounds, chunks: this.chunksCompacted, moved: this.bytesMoved, reclaimed: this.bytesReclaimed };
    const s0 = core.index.space();
    this.runReclaimable = Math.max(0, s0.storedBytes - s0.liveBytes);
    this.runReclaimed = 0;
    const report = (): void =>
      opts.onProgress?.({ reclaimable: this.runReclaimable, reclaimed: this.runReclaimed, chunksCompacted: this.chunksCompacted - at0.chunks });
    report();
    for (;;) {
      if (this.stopped || core.closing || core.closed || core.failed || (limited && (this.paused || this.preempt))) break;
      const { liveBytes, storedBytes } = core.index.space();
      const overTarget = storedBytes > liveBytes * t.compactTargetRatio;
      const maxFraction = opts.full || overTarget ? 1 - MIN_DEAD_FRACTION : t.compactChunkLive;
      const victims = this.pickVictims(maxFraction);
      if (victims.length === 0) break;
      const t0 = performance.now();
      const moved = await this.round(victims);
      report();
      if (moved < 0) break; // a round that reclaimed nothing: stop rather than spin
      if (limited) await this.throttle(moved, performance.now() - t0);
    }
    const s1 = core.index.space();
    return {
      rounds: this.rounds - at0.rounds,
      chunksCompacted: this.chunksCompacted - at0.chunks,
      bytesMoved: this.bytesMoved - at0.moved,
      bytesReclaimed: this.bytesReclaimed - at0.reclaimed,
      liveBytes: s1.liveBytes,
      storedBytes: s1.storedBytes,
    };
  }

  private lowChunk(fraction: number): boolean {
    const index = this.core.index;
    let low = false;
    index.forEachLiveChunk((id, _blocks, live) => {
      if (low || this.skip.has(id)) return;
      const stored = SEGMENT_HEADER + index.chunkStoredRecords(id).bytes;
      if (live < stored * fraction) low = true;
    });
    return low;
  }

  /** The chunks with the lowest live fraction (below maxFraction) whose live records fit in one new chunk. */
  private pickVictims(maxFraction: number): Victim[] {
    const index = this.core.index;
    const all: Victim[] = [];
    index.forEachLiveChunk((id, _blocks, live) => {
      if (this.skip.has(id)) return;
      const stored = SEGMENT_HEADER + index.chunkStoredRecords(id).bytes;
      if (live < stored * maxFraction) all.push({ id, live, stored });
    });
    all.sort((a, b) => a.live / a.stored - b.live / b.stored || a.id - b.id);
    const room = this.core.tunables.chunkBytes - SEGMENT_HEADER;
    const out: Victim[] = [];
    let sum = 0;
    for (const v of all) {
      if (sum + v.live > room) {
        if (out.length === 0) continue;
        break;
      }
      out.push(v);
      sum += v.live;
    }
    // One victim alone into a chunk of its own size only pays if it frees something.
    return out;
  }

  /** Compact one set of victims into one new chunk. Returns the bytes read and written, or -1 if nothing was reclaimed. */
  private async round(victims: Victim[]): Promise<number> {
    const core = this.core;
    const { index, ctx } = core;
    const ids = new Set(victims.map((v) => v.id));
    // The live extents of the victims, in block order (one pass over the map).
    // In slices: the map may change between them (writes, flushes, trims; never a
    // move into a victim, which only this compactor makes). An extent missed that way
    // leaves its victim with live blocks, so the victim is not deleted; one seen
    // stale is dropped by the version check after the read.
    const runs: LiveRun[] = [];
    for (let from = 0; ;) {
      from = index.visitExtents(from, compactorScan.sliceExtents, (block, count, seq, chunk, off, len, flags) => {
        if (ids.has(chunk)) runs.push({ block, count, seq, chunk, off, len, flags });
      });
      if (from < 0) break;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    // Read only the live records, as ranged reads over records that lie close together
    // in their chunk (verify every one: never copy damage). Reading each victim's whole
    // live span instead read and held up to a chunk per victim: 77 victims 0.6% live
    // took 255 MiB, read at once, to move 4 MiB (up to 1024 x 4 MiB with 4 KiB blocks),
    // starving the foreground and then sleeping off that read at compactRateBytes.
    const ranges = readRanges(runs, core.ctx.backend.remote === true ? REMOTE_READ_GAP : LOCAL_READ_GAP);
    const bad = new Set<number>();
    let readBytes = 0;
    let next = 0;
    const reader = async (): Promise<void> => {
      while (next < ranges.length) {
        const rg = ranges[next++] as ReadRange;
        if (bad.has(rg.chunk)) continue;
        const key = chunkKey(core.info.id, rg.chunk);
        core.readsInFlight++;
        try {
          rg.buf = await ctx.backend.get(key, rg.lo, rg.hi - rg.lo);
          readBytes += rg.buf.length;
        } catch (err) {
          bad.add(rg.chunk);
          // Gone (every block superseded and deleted meanwhile) or unreadable: skip it this time.
          if (!isVbfsError(err, 'VBFS_NOT_FOUND')) {
            ctx.logger.warn('compaction: could not read a chunk; leaving it', { volume: core.name, chunk: key, error: String(err) });
            this.skip.add(rg.chunk);
          }
        } finally {
          core.readsInFlight--;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_PARALLEL, ranges.length) }, reader));
    const bs = core.blockSize;
    const keep: { block: number; seq: number; chunk: number; src: Buffer; at: number; rec: number; flags: number }[] = [];
    for (const r of runs) {
      const got = r.range;
      if (bad.has(r.chunk) || !got?.buf) continue;
      const key = chunkKey(core.info.id, r.chunk);
      const rec = RECORD_HEADER + r.len;
      for (let k = 0; k < r.count; k++) {
        const block = r.block + k;
        const seq = r.seq + k;
        // Superseded while we read: nothing to copy.
        if (index.persistedChunk(block) !== r.chunk || index.persistedSeq(block) !== seq) continue;
        const at = r.off + k * rec - got.lo;
        try {
          verifyChunkRecord(got.buf, at, block, seq, bs, key, r.off + k * rec);
        } catch (err) {
          ctx.logger.warn('compaction: damaged record; leaving its chunk alone (run vbfs fsck)', { volume: core.name, chunk: key, block, error: String(err) });
          this.skip.add(r.chunk);
          bad.add(r.chunk);
          break;
        }
        keep.push({ block, seq, chunk: r.chunk, src: got.buf, at, rec, flags: r.flags });
      }
    }
    const usable = keep.filter((x) => !bad.has(x.chunk));
    if (usable.length === 0) {
      this.rounds++;
      return readBytes > 0 ? readBytes : -1;
    }
    let size = SEGMENT_HEADER;
    let maxSeq = 0;
    for (const x of usable) {
      size += x.rec;
      if (x.seq > maxSeq) maxSeq = x.seq;
    }
    const id = core.nextChunkId++;
    const out = Buffer.allocUnsafe(size);
    const placement = allocPlacement(id, usable.length);
    let pos = SEGMENT_HEADER;
    for (let k = 0; k < usable.length; k++) {
      const x = usable[k] as (typeof usable)[number];
      x.src.copy(out, pos, x.at, x.at + x.rec);
      placement.blocks[k] = x.block;
      placement.seqs[k] = x.seq;
      placement.offsets[k] = pos;
      placement.lens[k] = x.rec - RECORD_HEADER;
      placement.flags[k] = x.flags;
      pos += x.rec;
    }
    encodeChunkHeader(out, core.info.id, bs, id, usable.length, maxSeq);
    const key = chunkKey(core.info.id, id);
    await ctx.failpoint('compact:beforeChunkWrite');
    await ctx.backend.put(key, out);
    await ctx.failpoint('compact:afterChunkWrite');
    const storedBefore = index.space().storedBytes;
    // Commit only the copies of blocks still at the version that was read, checked
    // with no await before commit() queues the write (the map store writes commits in
    // call order). A block trimmed meanwhile is the case that matters: its 'Z'
    // tombstone may already be in the log, and map load drops the old location there,
    // so a later entry of the older seq would bring the block back (into this chunk,
    // which is deleted below when nothing moved): after a power cut it would read old
    // bytes, or the volume would not open. A block overwritten meanwhile needs no
    // entry either (its newer location wins by seq). Its record stays in the chunk,
    // unreferenced, like any superseded one.
    const current = stillCurrent(index, usable);
    if (current.length > 0) await core.map.commit([current.length === placement.count ? placement : pick(placement, current)]);
    // No await from the commit to here: a checkpoint queued behind the commit
    // must see the index with the copies (it replaces the log that holds them).
    let moved = 0;
    for (const k of current) {
      const x = usable[k] as (typeof usable)[number];
      if (index.relocate(x.block, x.seq, x.chunk, id, placement.offsets[k] as number, x.rec - RECORD_HEADER, x.flags)) moved++;
    }
    if (moved > 0) index.noteChunkRecords(id, usable.length, size - SEGMENT_HEADER);
    const dead = index.takeDeadChunks();
    // Every block of the copy was superseded meanwhile: nothing points at it.
    if (moved === 0) dead.push(id);
    const storedAfter = index.space().storedBytes;
    await ctx.failpoint('compact:afterMapCommit');
    this.flusher.retire(dead);
    await ctx.failpoint('compact:afterRetire');
    this.rounds++;
    this.chunksCompacted += victims.filter((v) => index.liveBlocks(v.id) === 0).length;
    const reclaimed = storedBefore - storedAfter;
    this.bytesMoved += size;
    if (reclaimed > 0) {
      this.bytesReclaimed += reclaimed;
      this.runReclaimed += reclaimed;
    }
    // The map log grows with every round: checkpoint as the flusher would, but only
    // while it is not between a commit and its index update (so the checkpoint never
    // misses a committed location).
    if (!this.flusher.running && core.map.logBytes >= core.tunables.checkpointBytes && !core.closing) {
      await core.map.checkpoint(index, core.seq, core.nextChunkId);
    }
    return reclaimed > 0 ? readBytes + size : -1;
  }

  /**
   * While foreground reads or writes run (their counters moved within the last
   * second), hold compaction to compactRateBytes per second: sleep as long as the
   * bytes just moved take at that rate, and at least FOREGROUND_PAUSE_FACTOR times
   * as long as the round took. An idle volume compacts at full speed.
   */
  private async throttle(bytes: number, roundMs: number): Promise<void> {
    const core = this.core;
    const rate = core.tunables.compactRateBytes;
    const fg = core.counters.reads + core.counters.writes;
    const now = performance.now();
    if (fg !== this.lastForeground) {
      this.lastForeground = fg;
      this.lastForegroundAt = now;
    }
    if (rate <= 0 || now - this.lastForegroundAt > FOREGROUND_WINDOW_MS) return;
    const ms = Math.max((bytes / rate) * 1000, Math.min(MAX_FOREGROUND_PAUSE_MS, roundMs * FOREGROUND_PAUSE_FACTOR));
    // Not unref'd: a flush, fsync or compact() may be waiting behind this round (the
    // map store serializes commits), and with only an unref'd timer left the process
    // simply exits under it (seen in the model test: a child exited mid-run with code
    // 0). The sleep is short (one round's bytes at compactRateBytes), and stop() wakes
    // it so that close() does not wait for it.
    await new Promise<void>((r) => {
      const t = setTimeout(() => {
        this.wake = null;
        r();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = null;
        r();
      };
    });
  }
}

/** Read the header of every chunk the map knows, so its stored size counts the dead records the map no longer names. */
export async function surveyChunks(core: VolumeCore, stop: () => boolean = () => false): Promise<void> {
  const { index, ctx } = core;
  const ids: number[] = [];
  index.forEachLiveChunk((id) => ids.push(id));
  for (let i = 0; i < ids.length && !stop(); i += SURVEY_PARALLEL) {
    await Promise.all(
      ids.slice(i, i + SURVEY_PARALLEL).map(async (id) => {
        const key = chunkKey(core.info.id, id);
        let count: number;
        core.readsInFlight++;
        try {
          count = decodeChunkHeader(await ctx.backend.get(key, 0, SEGMENT_HEADER), key, core.info.id).count;
        } catch (err) {
          if (isVbfsError(err, 'VBFS_NOT_FOUND') || (err instanceof VbfsError && index.liveBlocks(id) === 0)) return;
          throw err;
        } finally {
          core.readsInFlight--;
        }
        const known = index.chunkStoredRecords(id);
        if (count <= known.records || known.records === 0) return;
        // The records the map no longer names: as large as the ones it does (exact when uncompressed).
        index.noteChunkRecords(id, count, Math.round((known.bytes / known.records) * count));
      }),
    );
  }
}

/**
 * The ranged reads covering `runs` (each run gets its range): per chunk, in offset
 * order, runs at most `gap` bytes apart share one read.
 */
function readRanges(runs: LiveRun[], gap: number): ReadRange[] {
  const sorted = [...runs].sort((a, b) => a.chunk - b.chunk || a.off - b.off);
  const out: ReadRange[] = [];
  let cur: ReadRange | null = null;
  for (const r of sorted) {
    const end = r.off + r.count * (RECORD_HEADER + r.len);
    if (cur && cur.chunk === r.chunk && r.off <= cur.hi + gap) {
      cur.hi = Math.max(cur.hi, end);
    } else {
      cur = { chunk: r.chunk, lo: r.off, hi: end, buf: null };
      out.push(cur);
    }
    r.range = cur;
  }
  return out;
}

/** Indexes of the copies whose block is still at the copied version (not trimmed, zeroed, overwritten or moved since). */
function stillCurrent(index: BlockIndex, copies: readonly { block: number; seq: number; chunk: number }[]): number[] {
  const keep: number[] = [];
  for (let k = 0; k < copies.length; k++) {
    const x = copies[k] as { block: number; seq: number; chunk: number };
    if (index.state(x.block) !== EMPTY && index.persistedChunk(x.block) === x.chunk && index.persistedSeq(x.block) === x.seq) keep.push(k);
  }
  return keep;
}

/** The entries `keep` of `placement`. */
function pick(placement: ChunkPlacement, keep: readonly number[]): ChunkPlacement {
  const out = allocPlacement(placement.chunkId, keep.length);
  keep.forEach((k, i) => {
    out.blocks[i] = placement.blocks[k] as number;
    out.seqs[i] = placement.seqs[k] as number;
    out.offsets[i] = placement.offsets[k] as number;
    out.lens[i] = placement.lens[k] as number;
    out.flags[i] = placement.flags[k] as number;
  });
  return out;
}
