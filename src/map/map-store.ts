import { VbfsError } from '../errors';
import { anyFrameAfter, checkFrame, encodeFrame, FRAME_HEADER, MAX_FRAME, type FrameCheck } from '../format/frame';
import {
  allocRuns,
  ChunkPlacement,
  commitEntryOffset,
  decodeCheckpointHeader,
  decodeCommit,
  decodeEntries,
  decodeExtentCommit,
  decodeFooter,
  decodeMapLogHeader,
  decodeReservation,
  decodeRuns,
  decodeSyncFrame,
  decodeTrimCommit,
  encodeCheckpointHeader,
  encodeExtentCommit,
  encodeFooter,
  encodeMapLogHeader,
  encodeReservation,
  encodeSyncFrame,
  encodeTrimCommit,
  entriesEntryOffset,
  EXTENT_ENTRY,
  extentCommitEntryOffset,
  readExtent,
  readLocation,
  readTrimRun,
  runsEntryOffset,
  writeExtent,
  type Extent,
} from '../format/map-records';
import { RECORD_HEADER } from '../format/block-record';
import type { FileIO } from '../io/file-io';
import type { Logger } from '../types';
import { MAX_LEN, type BlockIndex } from './block-index';
import { FileMapMedium, type MapMedium, type MapSegmentWriter, type MapSource } from './map-medium';

/** Old map log segments deleted at once after a checkpoint. */
const SEGMENT_DELETES_IN_FLIGHT = 8;

export { mapSegmentName } from './map-medium';

/** Record header bytes before each stored payload in a chunk (format/block-record.ts). */
const RECORD_STRIDE = RECORD_HEADER;
const ENTRIES_PER_FRAME = 8192;
/** Bytes of the checkpoint read at a time: the checkpoint is streamed in, never read whole. */
const READ_WINDOW = 1024 * 1024;

export interface MapLoad {
  seq: number; // highest seq in the checkpoint and log
  nextChunkId: number; // one past the highest chunk id the map knows
  reserved: number; // highest seq reservation ('Q') in the log: seqs up to it may be in use (0: none)
}

export type Failpoint = (name: string) => void | Promise<void>;

/**
 * Durable block map: an append-only log of chunk commits (the new locations of
 * the blocks packed into one chunk) plus a periodic compacted checkpoint of every
 * persisted location. A flush appends only what it wrote (never rewrites the whole
 * map); the checkpoint bounds replay time and lets old log segments go.
 *
 * Checkpoint creation is atomic: checkpoint.tmp, fdatasync, rename, fsync dir. The
 * checkpoint names the first log segment to replay after it; older segments are
 * deleted only after the rename is durable.
 *
 * Where the bytes go is the medium's business (map-medium.ts): the local directory
 * by default, or a bucket (bucket-map-medium.ts), with the same frames in both.
 */
export class MapStore {
  logBytes = 0;
  checkpoints = 0;
  private seg = 1;
  private fd: MapSegmentWriter | null = null;
  private readonly medium: MapMedium;
  private pos = 0;
  private readonly segments: number[] = [];
  /** Highest durable seq reservation (loaded or written); checkpoints carry it forward. */
  reserved = 0;
  /** Appends, checkpoints and close run one at a time: reservations come from the writer, commits from the flusher. */
  private serial: Promise<unknown> = Promise.resolve();
  /**
   * Set when a checkpoint's publish failed and whether it counts could not be told:
   * every later append is refused with it. If it does count, a commit numbered below
   * it would be covered by it and never replayed; if it does not, one numbered at or
   * above it would be fine either way only in the medium's current numbering. Rather
   * than guess, the map stops taking commits; the next open reads what is there (the
   * WAL still holds everything not committed before).
   */
  private unsure: VbfsError | null = null;

  constructor(
    fileIO: FileIO,
    dir: string,
    private readonly volumeId: string,
    private readonly logger: Logger,
    private readonly failpoint: Failpoint,
    medium?: MapMedium,
  ) {
    this.medium = medium ?? new FileMapMedium(fileIO, dir);
  }

  /** The medium wants a checkpoint now (too many segments to replay), whatever checkpointBytes says. */
  get checkpointDue(): boolean {
    const max = this.medium.maxSegments;
    return max !== undefined && this.segments.length >= max;
  }

  async load(index: BlockIndex, readOnly: boolean): Promise<MapLoad> {
    const out: MapLoad = { seq: 0, nextChunkId: 1, reserved: 0 };
    let firstSeg = 1;
    const medium = this.medium;
    if (!readOnly) await medium.cleanup?.();
    const ck = await medium.openCheckpoint();
    if (ck) firstSeg = await this.loadCheckpoint(ck, medium.describe('checkpoint'), index, out);
    const nums = await medium.listSegments();
    const live = nums.filter((n) => n >= firstSeg);
    for (const n of nums) {
      if (n < firstSeg && !readOnly) await medium.deleteSegment(n);
    }
    for (let k = 0; k < live.length; k++) {
      const n = live[k] as number;
      const path = medium.describe(n);
      await this.replayLog(await medium.readSegment(n), path, n, k === live.length - 1 && medium.tornTails, readOnly, index, out);
      this.segments.push(n);
    }
    this.seg = Math.max(firstSeg, (nums[nums.length - 1] ?? 0) + 1);
    this.reserved = out.reserved;
    return out;
  }

  /**
   * Read the checkpoint frame by frame through a window of READ_WINDOW bytes, so a
   * large map never sits in memory twice (file bytes and index). Version 1 holds
   * one location per block ('E' frames), version 2 extents ('R'); both go into the
   * index, and the next checkpoint is written as version 2.
   */
  private async loadCheckpoint(fd: MapSource, path: string, index: BlockIndex, out: MapLoad): Promise<number> {
    const bad = (off: number, why: string): VbfsError =>
      new VbfsError('VBFS_CORRUPT', `checkpoint ${path} is damaged at offset ${off} (${why})`, { path, offset: off });
    try {
      const frames = new FrameReader(fd, await fd.size());
      const first = await frames.next();
      if (!first.ok) throw bad(0, first.reason);
      const h = decodeCheckpointHeader(first.payload);
      if (!h) throw bad(0, 'not a checkpoint header');
      if (h.volumeId !== this.volumeId) throw bad(0, 'belongs to another volume');
      if (h.version !== 1 && h.version !== 2) {
        throw new VbfsError('VBFS_UNSUPPORTED_VERSION', `checkpoint ${path} has format version ${h.version}, which this build does not know`, { path });
      }
      out.seq = Math.max(out.seq, h.seq);
      out.nextChunkId = Math.max(out.nextChunkId, h.nextChunkId);
      let seen = 0;
      for (;;) {
        const off = frames.pos;
        const f = await frames.next();
        if (!f.ok) throw bad(off, f.reason);
        if (f.payload[0] === 0x46) {
          if (decodeFooter(f.payload) !== h.entryCount || seen !== h.entryCount) throw bad(off, 'entry count mismatch');
          if (frames.pos !== frames.size) throw bad(frames.pos, 'trailing bytes');
          break;
        }
        if (h.version === 1) {
          const count = decodeEntries(f.payload);
          if (count === null) throw bad(off, 'unknown frame');
          for (let i = 0; i < count; i++) this.applyLocation(index, f.payload, entriesEntryOffset(i), out, path, off);
          seen += count;
        } else {
          const count = decodeRuns(f.payload);
          if (count === null) throw bad(off, 'unknown frame');
          for (let i = 0; i < count; i++) seen += this.applyExtent(index, readExtent(f.payload, runsEntryOffset(i)), out, path, off);
        }
      }
      return h.mapSegment;
    } finally {
      await fd.close();
    }
  }

  private applyLocation(index: BlockIndex, p: Buffer, at: number, out: MapLoad, path: string, frameOff: number): void {
    const l = readLocation(p, at);
    this.applyExtent(index, { block: l.block, count: 1, seq: l.seq, chunkId: l.chunkId, offset: l.offset, len: l.len, flags: l.flags }, out, path, frameOff);
  }

  /** Point the index at one extent of the map (per block, newer seqs win); returns its block count. */
  private applyExtent(index: BlockIndex, e: Extent, out: MapLoad, path: string, frameOff: number): number {
    const lastSeq = e.seq + e.count - 1;
    if (e.count < 1 || e.block + e.count > index.blockCount || e.seq === 0 || lastSeq >= 2 ** 53 || e.chunkId === 0 || e.len > MAX_LEN || e.flags > 0xff) {
      throw new VbfsError('VBFS_CORRUPT', `${path}: location entry in frame at offset ${frameOff} is out of range (block ${e.block})`, {
        path,
        offset: frameOff,
      });
    }
    const stride = RECORD_STRIDE + e.len;
    for (let k = 0; k < e.count; k++) index.setPersisted(e.block + k, e.seq + k, e.chunkId, e.offset + k * stride, e.len, e.flags);
    if (lastSeq > out.seq) out.seq = lastSeq;
    if (e.chunkId >= out.nextChunkId) out.nextChunkId = e.chunkId + 1;
    return e.count;
  }

  /** Apply a 'Z' trim commit: older locations of its blocks go (block-index.ts dropTrimmed). */
  private applyTrims(index: BlockIndex, p: Buffer, runs: number, blocks: number, out: MapLoad, path: string, off: number): void {
    let seen = 0;
    for (let i = 0; i < runs; i++) {
      const r = readTrimRun(p, i);
      const last = r.seq + r.count - 1;
      if (r.count < 1 || r.block + r.count > index.blockCount || r.seq === 0 || last >= 2 ** 53) {
        throw new VbfsError('VBFS_CORRUPT', `${path}: trim run in frame at offset ${off} is out of range (block ${r.block})`, { path, offset: off });
      }
      for (let k = 0; k < r.count; k++) index.dropTrimmed(r.block + k, r.seq + k);
      if (last > out.seq) out.seq = last;
      seen += r.count;
    }
    if (seen !== blocks) {
      throw new VbfsError('VBFS_CORRUPT', `map log ${path}: trim commit at offset ${off} counts ${blocks} blocks but holds ${seen}`, { path, offset: off });
    }
  }

  /**
   * Replay one map log segment. Every commit write is fdatasync'ed before the next
   * one starts, and (version 2) begins with an 'S' frame claiming the offset that
   * the previous syncs covered. So in the newest segment, damage at or after the
   * highest claim is a torn tail of the last, unacknowledged commit write (cut,
   * even if some of its frames survived past a hole); damage before it, or in an
   * older segment, is corruption. Version 1 segments keep the old rule (torn only
   * when no valid frame follows).
   */
  private async replayLog(buf: Buffer, path: string, n: number, isLast: boolean, readOnly: boolean, index: BlockIndex, out: MapLoad): Promise<void> {
    const first = checkFrame(buf, 0);
    const h = first.ok ? decodeMapLogHeader(first.payload) : null;
    if (!first.ok || !h) {
      if (isLast && !anyFrameAfter(buf, 0)) {
        this.logger.warn('map log segment with a torn header: removing', { file: path });
        if (!readOnly) await this.medium.deleteSegment(n);
        return;
      }
      throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset 0 (bad header)`, { path, offset: 0 });
    }
    if (h.volumeId !== this.volumeId || h.segment !== n || h.version < 1 || h.version > 4) {
      throw new VbfsError('VBFS_CORRUPT', `map log ${path} belongs to another volume or position, or has an unknown version`, { path, offset: 0 });
    }
    const markers = h.version >= 2;
    let proven = first.end; // the header is fdatasync'ed before any commit
    let off = first.end;
    while (off < buf.length) {
      const f = checkFrame(buf, off);
      if (f.ok) {
        const claim = markers ? decodeSyncFrame(f.payload) : null;
        if (claim !== null) {
          if (claim > off) throw new VbfsError('VBFS_CORRUPT', `map log ${path}: sync frame at offset ${off} claims ${claim}`, { path, offset: off });
          if (claim > proven) proven = claim;
          off = f.end;
          continue;
        }
        const reserved = h.version >= 3 ? decodeReservation(f.payload) : null;
        if (reserved !== null) {
          if (reserved > out.reserved) out.reserved = reserved;
          off = f.end;
          continue;
        }
        const z = h.version >= 4 ? decodeTrimCommit(f.payload) : null;
        if (z) {
          this.applyTrims(index, f.payload, z.runs, z.blocks, out, path, off);
          off = f.end;
          continue;
        }
        if (h.version >= 3) {
          const x = decodeExtentCommit(f.payload);
          if (!x) throw new VbfsError('VBFS_CORRUPT', `map log ${path}: unknown frame at offset ${off}`, { path, offset: off });
          let blocks = 0;
          for (let i = 0; i < x.extents; i++) {
            const e = readExtent(f.payload, extentCommitEntryOffset(i));
            if (e.chunkId !== x.chunkId)
              throw new VbfsError('VBFS_CORRUPT', `map log ${path}: extent of another chunk in the commit at offset ${off}`, { path, offset: off });
            blocks += this.applyExtent(index, e, out, path, off);
          }
          if (blocks !== x.blocks)
            throw new VbfsError('VBFS_CORRUPT', `map log ${path}: commit at offset ${off} counts ${x.blocks} blocks but holds ${blocks}`, {
              path,
              offset: off,
            });
          if (x.chunkId >= out.nextChunkId) out.nextChunkId = x.chunkId + 1;
        } else {
          const c = decodeCommit(f.payload);
          if (!c) throw new VbfsError('VBFS_CORRUPT', `map log ${path}: unknown frame at offset ${off}`, { path, offset: off });
          for (let i = 0; i < c.count; i++) this.applyLocation(index, f.payload, commitEntryOffset(i), out, path, off);
          if (c.chunkId >= out.nextChunkId) out.nextChunkId = c.chunkId + 1;
        }
        off = f.end;
        continue;
      }
      if (!isLast)
        throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset ${off} (${f.reason}) in a segment that is not the newest`, {
          path,
          offset: off,
        });
      if (markers) {
        const claim = maxSyncClaimAfter(buf, off);
        if (claim > proven) proven = claim;
        if (off < proven) {
          throw new VbfsError(
            'VBFS_CORRUPT',
            `map log ${path} is damaged at offset ${off} (${f.reason}) before offset ${proven}, which a completed fdatasync covered`,
            { path, offset: off },
          );
        }
      } else if (anyFrameAfter(buf, off)) {
        throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset ${off} (${f.reason}) and is not a torn tail`, { path, offset: off });
      }
      this.logger.warn('cutting torn map log tail (a commit write that never completed its fdatasync)', {
        file: path,
        offset: off,
        bytes: buf.length - off,
        provenSynced: proven,
      });
      if (!readOnly) await this.medium.truncateSegment(n, off);
      break;
    }
    this.logBytes += off;
  }

  /** Run fn after every append, checkpoint or close queued before it (a failure does not block the next). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serial.then(fn, fn);
    this.serial = run.catch(() => undefined);
    return run;
  }

  /**
   * Durably record that seqs up to `upTo` may be in use: an 'S' and a 'Q' frame in
   * one write, one fdatasync, like a commit. The writer hands out no seq above the
   * highest reservation that completed, and open starts above it, so a seq whose
   * WAL record was cut as a torn tail is never given to other data.
   */
  reserve(upTo: number): Promise<void> {
    return this.exclusive(async () => {
      if (upTo <= this.reserved) return;
      if (this.unsure) throw this.unsure;
      if (!this.fd) await this.openLog();
      const frame = Buffer.concat([encodeFrame(encodeSyncFrame(this.pos)), encodeFrame(encodeReservation(upTo))]);
      await this.failpoint('reserve:beforeWrite');
      // As in commit(): durable when it resolves; a failed write leaves pos alone, a
      // failed fdatasync fails the volume (see the medium).
      await (this.fd as MapSegmentWriter).append(frame, this.pos);
      this.pos += frame.length;
      this.logBytes += frame.length;
      this.reserved = upTo;
      if (this.medium.segmentPerCommit) {
        // A bucket delta is never appended to: the reservation is a delta of its own.
        await this.closeLog();
        this.seg++;
      }
      await this.failpoint('reserve:afterSync');
    });
  }

  /** Durably record where the blocks of some chunks now live: one write, one fdatasync. */
  commit(placements: ChunkPlacement[]): Promise<void> {
    return this.exclusive(() => this.appendCommit(placements));
  }

  private async appendCommit(placements: ChunkPlacement[]): Promise<void> {
    if (this.unsure) throw this.unsure;
    if (!this.fd) await this.openLog();
    // Everything before this.pos was covered by the previous commit's fdatasync.
    // One 'X' frame per chunk: its extents (runs of blocks stored back to back).
    const frame = Buffer.concat([encodeFrame(encodeSyncFrame(this.pos)), ...placements.map((p) => encodeFrame(encodeExtentCommit(p)))]);
    // Durable when it resolves; a failure leaves pos alone (see the medium).
    await (this.fd as MapSegmentWriter).append(frame, this.pos);
    this.pos += frame.length;
    this.logBytes += frame.length;
    if (this.medium.segmentPerCommit) {
      // An object is never appended to: the next commit starts the next segment.
      await this.closeLog();
      this.seg++;
    }
  }

  /**
   * Durably record that blocks became Empty from the given seqs on (trims and
   * zero writes; `blocks` in block order): one 'Z' frame, one write, one fdatasync.
   */
  commitTrims(blocks: Float64Array, seqs: Float64Array, count: number): Promise<void> {
    return this.exclusive(async () => {
      if (this.unsure) throw this.unsure;
      if (!this.fd) await this.openLog();
      const frame = Buffer.concat([encodeFrame(encodeSyncFrame(this.pos)), encodeFrame(encodeTrimCommit(blocks, seqs, count))]);
      await (this.fd as MapSegmentWriter).append(frame, this.pos);
      this.pos += frame.length;
      this.logBytes += frame.length;
      if (this.medium.segmentPerCommit) {
        await this.closeLog();
        this.seg++;
      }
    });
  }

  private async openLog(): Promise<void> {
    const hdr = encodeFrame(encodeMapLogHeader({ volumeId: this.volumeId, segment: this.seg }));
    this.fd = await this.medium.createSegment(this.seg, hdr);
    this.pos = hdr.length;
    this.segments.push(this.seg);
  }

  /**
   * Write a compacted checkpoint of every persisted location, as the index's
   * extents (version 2). Must not run concurrently with commit() (the volume holds
   * its flush lock), so the persisted map does not change while it is visited.
   * Its seq high-water is at least the seq reservation, which the log segments
   * it replaces held.
   */
  checkpoint(index: BlockIndex, seq: number, nextChunkId: number): Promise<void> {
    return this.exclusive(() => this.writeCheckpoint(index, Math.max(seq, this.reserved), nextChunkId));
  }

  private async writeCheckpoint(index: BlockIndex, seq: number, nextChunkId: number): Promise<void> {
    if (this.unsure) throw this.unsure;
    const newSeg = this.seg + 1;
    const fd = await this.medium.createCheckpoint(newSeg);
    // The index is read only after a turn of the event loop. A commit that ran just
    // before this checkpoint took the map store resolves its caller, which then updates
    // the index (the flusher's setPersisted, the compactor's relocate, dropTrimmed after a
    // trim commit) in a continuation that may run after this task started: counted
    // before it, the extents no longer matched the walk below (VBFS_CORRUPT, seen in the
    // model test's compact/flush races). By the next macrotask every such update is done
    // (none awaits I/O before it), and no other can come while this holds the map store.
    // (createCheckpoint of a bucket medium does no I/O, so its await is not that turn.)
    await new Promise<void>((r) => setImmediate(r));
    const count = index.countPersisted();
    const extents = index.extentCount;
    // Streamed: one frame of up to ENTRIES_PER_FRAME extents at a time, written out
    // every few MiB, with an event-loop turn between frames, so a large map neither
    // piles up in memory nor stalls I/O.
    let parts: Buffer[] = [encodeFrame(encodeCheckpointHeader({ volumeId: this.volumeId, seq, mapSegment: newSeg, nextChunkId, entryCount: count }))];
    let partBytes = 0;
    const drain = async (): Promise<void> => {
      if (parts.length === 0) return;
      const group = parts;
      parts = [];
      partBytes = 0;
      await fd.write(group);
    };
    try {
      let blocks = 0;
      let seen = 0;
      let from = 0;
      while (from >= 0 && seen < extents) {
        const frame = allocRuns(Math.min(ENTRIES_PER_FRAME, extents - seen));
        let i = 0;
        const max = (frame.length - 8) / EXTENT_ENTRY;
        from = index.visitExtents(from, max, (block, n, s, chunk, off, len, flags) => {
          writeExtent(frame, runsEntryOffset(i++), block, n, s, chunk, off, len, flags);
          blocks += n;
        });
        if (i !== max) break;
        seen += i;
        const f = encodeFrame(frame);
        parts.push(f);
        partBytes += f.length;
        if (partBytes >= 4 * 1024 * 1024) await drain();
        else await new Promise<void>((r) => setImmediate(r));
      }
      if (seen !== extents || blocks !== count) {
        throw new VbfsError('VBFS_CORRUPT', `checkpoint: index reports ${count} persisted blocks in ${extents} extents but holds ${blocks} in ${seen}`);
      }
      parts.push(encodeFrame(encodeFooter(count)));
      await drain();
      await fd.sync();
    } finally {
      await fd.close();
    }
    await this.failpoint('checkpoint:beforeRename');
    try {
      await fd.publish();
    } catch (err) {
      // A failed publish may still have made the checkpoint current (a bucket PUT whose
      // answer was lost after every retry). Then the next commit must go past it, as
      // below, or it would be numbered below the checkpoint, count as covered by it and
      // never be replayed, though the flusher reclaims its WAL records. Look, once.
      let counts: boolean;
      try {
        counts = (await fd.published?.()) ?? false;
      } catch (lookErr) {
        this.unsure = new VbfsError(
          'VBFS_IO',
          `map: a checkpoint publish failed and whether it counts cannot be told (${(lookErr as Error).message}); no more map commits until the volume is opened again`,
          { checkpointUnsure: true },
          { cause: err },
        );
        throw this.unsure;
      }
      if (!counts) throw err;
      this.logger.warn('checkpoint publish reported a failure but the checkpoint is in place: it counts', { error: String(err) });
    }
    await this.failpoint('checkpoint:afterRename');
    // Current from here on, whatever the cleanup below does: the next commit must go
    // to newSeg. One left in a segment below it (a failed DELETE used to return before
    // this) would count as covered by the checkpoint and never be replayed, though the
    // WAL it came from is reclaimed. Segments left behind are deleted by the next load.
    const fdOld = this.fd;
    const old = this.segments.splice(0);
    this.fd = null;
    this.seg = newSeg;
    this.logBytes = 0;
    this.checkpoints++;
    if (fdOld) await fdOld.close();
    // Every one is below the checkpoint, so the order does not matter (a crash leaves
    // some, which the next load deletes), and in a bucket each DELETE is a round trip:
    // a few at a time (close() waits for them; 19 in a row took ~0.25 s of a 5.7 s
    // bench:s3 write run).
    let next = 0;
    const deleter = async (): Promise<void> => {
      while (next < old.length) await this.medium.deleteSegment(old[next++] as number);
    };
    await Promise.all(Array.from({ length: Math.min(SEGMENT_DELETES_IN_FLIGHT, old.length) }, deleter));
    if (old.length > 0) await this.medium.syncDeletes();
  }

  close(): Promise<void> {
    return this.exclusive(() => this.closeLog());
  }

  /** close() for callers already inside exclusive() (it would wait for itself). */
  private async closeLog(): Promise<void> {
    if (this.fd) {
      await this.fd.close();
      this.fd = null;
    }
  }
}

/** Highest 'S' claim among the well-formed frames anywhere after `from` (resynchronising byte by byte), or -1. */
function maxSyncClaimAfter(buf: Buffer, from: number): number {
  let best = -1;
  let off = from + 1;
  while (off + 8 <= buf.length) {
    const f = checkFrame(buf, off);
    if (!f.ok) {
      off++;
      continue;
    }
    const claim = decodeSyncFrame(f.payload);
    if (claim !== null && claim <= off && claim > best) best = claim;
    off = f.end;
  }
  return best;
}

/**
 * Frames of a file, read front to back through a window: `next()` returns the
 * frame at `pos` (its payload is a view, valid until the following call).
 */
class FrameReader {
  pos = 0;
  private buf = Buffer.allocUnsafe(READ_WINDOW);
  private start = 0; // file offset of buf[0]
  private filled = 0;

  constructor(
    private readonly fd: MapSource,
    readonly size: number,
  ) {}

  async next(): Promise<FrameCheck> {
    await this.ensure(FRAME_HEADER);
    const at = this.pos - this.start;
    if (this.filled - at >= FRAME_HEADER) {
      const len = this.buf.readUInt32LE(at + 4);
      if (len <= MAX_FRAME) await this.ensure(FRAME_HEADER + len);
    }
    const view = this.buf.subarray(0, this.filled);
    const f = checkFrame(view, this.pos - this.start);
    if (f.ok) this.pos = this.start + f.end;
    return f.ok ? { ok: true, payload: f.payload, end: this.pos } : f;
  }

  /** At least n bytes from pos in the window, or all that is left of the file. */
  private async ensure(n: number): Promise<void> {
    const want = Math.min(n, this.size - this.pos);
    if (this.start + this.filled - this.pos >= want) return;
    const keep = this.start + this.filled - this.pos;
    if (this.buf.length < n) {
      const grown = Buffer.allocUnsafe(Math.max(n, this.buf.length * 2));
      this.buf.copy(grown, 0, this.pos - this.start, this.filled);
      this.buf = grown;
    } else {
      this.buf.copy(this.buf, 0, this.pos - this.start, this.filled);
    }
    this.start = this.pos;
    this.filled = keep;
    while (this.filled < want) {
      const got = await this.fd.read(this.buf.subarray(this.filled), this.start + this.filled);
      if (got <= 0) break;
      this.filled += got;
    }
  }
}
