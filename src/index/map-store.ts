import { VbfsError, syncFailed } from '../errors';
import { anyFrameAfter, checkFrame, encodeFrame } from '../format/frame';
import {
  allocEntries,
  ChunkPlacement,
  commitEntryOffset,
  encodeCommit,
  decodeCheckpointHeader,
  decodeCommit,
  decodeEntries,
  decodeFooter,
  decodeMapLogHeader,
  decodeSyncFrame,
  encodeCheckpointHeader,
  encodeSyncFrame,
  encodeFooter,
  encodeMapLogHeader,
  entriesEntryOffset,
  LOCATION_ENTRY,
  readLocation,
  writeLocation,
} from '../format/map-records';
import type { FileHandle, FileIO } from '../io/file-io';
import type { Logger } from '../types';
import type { BlockIndex } from './block-index';

export const mapSegmentName = (n: number): string => n.toString(16).padStart(16, '0') + '.log';
const CHECKPOINT = 'checkpoint';
const ENTRIES_PER_FRAME = 8192;

export interface MapLoad {
  seq: number; // highest seq in the checkpoint and log
  nextChunkId: number; // one past the highest chunk id the map knows
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
 */
export class MapStore {
  logBytes = 0;
  checkpoints = 0;
  private seg = 1;
  private fd: FileHandle | null = null;
  private pos = 0;
  private readonly segments: number[] = [];

  constructor(
    private readonly fileIO: FileIO,
    private readonly dir: string,
    private readonly volumeId: string,
    private readonly logger: Logger,
    private readonly failpoint: Failpoint,
  ) {}

  async load(index: BlockIndex, readOnly: boolean): Promise<MapLoad> {
    const out: MapLoad = { seq: 0, nextChunkId: 1 };
    let firstSeg = 1;
    const ckPath = `${this.dir}/${CHECKPOINT}`;
    if (await this.fileIO.stat(ckPath)) {
      firstSeg = this.loadCheckpoint(await this.fileIO.readFile(ckPath), ckPath, index, out);
    }
    const names = (await this.fileIO.readdir(this.dir)).filter((n) => /^[0-9a-f]{16}\.log$/.test(n));
    const nums = names.map((n) => parseInt(n.slice(0, 16), 16)).sort((a, b) => a - b);
    const live = nums.filter((n) => n >= firstSeg);
    for (const n of nums) {
      if (n < firstSeg && !readOnly) await this.fileIO.unlink(`${this.dir}/${mapSegmentName(n)}`);
    }
    for (let k = 0; k < live.length; k++) {
      const n = live[k] as number;
      const path = `${this.dir}/${mapSegmentName(n)}`;
      await this.replayLog(await this.fileIO.readFile(path), path, n, k === live.length - 1, readOnly, index, out);
      this.segments.push(n);
    }
    this.seg = Math.max(firstSeg, (nums[nums.length - 1] ?? 0) + 1);
    return out;
  }

  private loadCheckpoint(buf: Buffer, path: string, index: BlockIndex, out: MapLoad): number {
    const bad = (off: number, why: string): VbfsError =>
      new VbfsError('VBFS_CORRUPT', `checkpoint ${path} is damaged at offset ${off} (${why})`, { path, offset: off });
    const first = checkFrame(buf, 0);
    if (!first.ok) throw bad(0, first.reason);
    const h = decodeCheckpointHeader(first.payload);
    if (!h) throw bad(0, 'not a checkpoint header');
    if (h.volumeId !== this.volumeId) throw bad(0, 'belongs to another volume');
    out.seq = Math.max(out.seq, h.seq);
    out.nextChunkId = Math.max(out.nextChunkId, h.nextChunkId);
    let off = first.end;
    let seen = 0;
    for (;;) {
      const f = checkFrame(buf, off);
      if (!f.ok) throw bad(off, f.reason);
      if (f.payload[0] === 0x46) {
        if (decodeFooter(f.payload) !== h.entryCount || seen !== h.entryCount) throw bad(off, 'entry count mismatch');
        if (f.end !== buf.length) throw bad(f.end, 'trailing bytes');
        break;
      }
      const count = decodeEntries(f.payload);
      if (count === null) throw bad(off, 'unknown frame');
      for (let i = 0; i < count; i++) this.apply(index, f.payload, entriesEntryOffset(i), out, path, off);
      seen += count;
      off = f.end;
    }
    return h.mapSegment;
  }

  private apply(index: BlockIndex, p: Buffer, at: number, out: MapLoad, path: string, frameOff: number): void {
    const l = readLocation(p, at);
    if (l.block >= index.blockCount || l.seq === 0 || l.chunkId === 0) {
      throw new VbfsError('VBFS_CORRUPT', `${path}: location entry in frame at offset ${frameOff} is out of range (block ${l.block})`, { path, offset: frameOff });
    }
    index.setPersisted(l.block, l.seq, l.chunkId, l.offset, l.len, l.flags);
    if (l.seq > out.seq) out.seq = l.seq;
    if (l.chunkId >= out.nextChunkId) out.nextChunkId = l.chunkId + 1;
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
    let off = 0;
    const first = checkFrame(buf, 0);
    const h = first.ok ? decodeMapLogHeader(first.payload) : null;
    if (!first.ok || !h) {
      if (isLast && !anyFrameAfter(buf, 0)) {
        this.logger.warn('map log segment with a torn header: removing', { file: path });
        if (!readOnly) await this.fileIO.unlink(path);
        return;
      }
      throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset 0 (bad header)`, { path, offset: 0 });
    }
    if (h.volumeId !== this.volumeId || h.segment !== n || (h.version !== 1 && h.version !== 2)) {
      throw new VbfsError('VBFS_CORRUPT', `map log ${path} belongs to another volume or position, or has an unknown version`, { path, offset: 0 });
    }
    const markers = h.version >= 2;
    let proven = first.end; // the header is fdatasync'ed before any commit
    off = first.end;
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
        const c = decodeCommit(f.payload);
        if (!c) throw new VbfsError('VBFS_CORRUPT', `map log ${path}: unknown frame at offset ${off}`, { path, offset: off });
        for (let i = 0; i < c.count; i++) this.apply(index, f.payload, commitEntryOffset(i), out, path, off);
        if (c.chunkId >= out.nextChunkId) out.nextChunkId = c.chunkId + 1;
        off = f.end;
        continue;
      }
      if (!isLast) throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset ${off} (${f.reason}) in a segment that is not the newest`, { path, offset: off });
      if (markers) {
        const claim = maxSyncClaimAfter(buf, off);
        if (claim > proven) proven = claim;
        if (off < proven) {
          throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset ${off} (${f.reason}) before offset ${proven}, which a completed fdatasync covered`, { path, offset: off });
        }
      } else if (anyFrameAfter(buf, off)) {
        throw new VbfsError('VBFS_CORRUPT', `map log ${path} is damaged at offset ${off} (${f.reason}) and is not a torn tail`, { path, offset: off });
      }
      this.logger.warn('cutting torn map log tail (a commit write that never completed its fdatasync)', { file: path, offset: off, bytes: buf.length - off, provenSynced: proven });
      if (!readOnly) {
        const fd = await this.fileIO.open(path, 'r+');
        await fd.truncate(off);
        await fd.datasync();
        await fd.close();
      }
      break;
    }
    this.logBytes += off;
  }

  /** Durably record where the blocks of some chunks now live: one write, one fdatasync. */
  async commit(placements: ChunkPlacement[]): Promise<void> {
    if (!this.fd) await this.openLog();
    // Everything before this.pos was covered by the previous commit's fdatasync.
    const frame = Buffer.concat([encodeFrame(encodeSyncFrame(this.pos)), ...placements.map((p) => encodeFrame(encodeCommit(p)))]);
    const fd = this.fd as FileHandle;
    // A failed write (out of space) leaves pos alone: the next commit rewrites the
    // same range. A failed fdatasync is not retryable (the kernel may have dropped
    // the pages): syncFailed() makes the volume fail.
    await fd.write(frame, this.pos);
    await fd.datasync().catch((err: unknown) => {
      throw syncFailed('map log fdatasync failed', err);
    });
    this.pos += frame.length;
    this.logBytes += frame.length;
  }

  private async openLog(): Promise<void> {
    const path = `${this.dir}/${mapSegmentName(this.seg)}`;
    const fd = await this.fileIO.open(path, 'w+');
    const hdr = encodeFrame(encodeMapLogHeader({ volumeId: this.volumeId, segment: this.seg }));
    await fd.write(hdr, 0);
    await fd.datasync();
    await this.fileIO.fsyncDir(this.dir);
    this.fd = fd;
    this.pos = hdr.length;
    this.segments.push(this.seg);
  }

  /**
   * Write a compacted checkpoint of every persisted location. Must not run
   * concurrently with commit() (the volume holds its flush lock).
   */
  async checkpoint(index: BlockIndex, seq: number, nextChunkId: number): Promise<void> {
    const newSeg = this.seg + 1;
    const count = index.countPersisted();
    const tmp = `${this.dir}/${CHECKPOINT}.tmp`;
    const fd = await this.fileIO.open(tmp, 'w+');
    // Streamed: entry frames go out every few MiB, and the event loop gets a turn
    // between index pages, so a large map neither piles up in memory nor stalls I/O.
    let parts: Buffer[] = [encodeFrame(encodeCheckpointHeader({ volumeId: this.volumeId, seq, mapSegment: newSeg, nextChunkId, entryCount: count }))];
    let partBytes = 0;
    let pos = 0;
    const drain = async (): Promise<void> => {
      if (parts.length === 0) return;
      const group = parts;
      parts = [];
      partBytes = 0;
      await fd.writev(group, pos);
      for (const g of group) pos += g.length;
    };
    let frame = allocEntries(Math.min(ENTRIES_PER_FRAME, count));
    let inFrame = 0;
    let written = 0;
    const add = (block: number, s: number, chunk: number, off: number, len: number, flags: number): void => {
      writeLocation(frame, entriesEntryOffset(inFrame), block, s, chunk, off, len, flags);
      inFrame++;
      written++;
      if (inFrame * LOCATION_ENTRY + 8 === frame.length) {
        const f = encodeFrame(frame);
        parts.push(f);
        partBytes += f.length;
        frame = allocEntries(Math.min(ENTRIES_PER_FRAME, Math.max(0, count - written)));
        inFrame = 0;
      }
    };
    try {
      for (const k of index.pageKeys()) {
        if (written >= count) break;
        index.forEachPersistedIn(k, (b, s, c, o, l, f) => {
          if (written < count) add(b, s, c, o, l, f);
        });
        if (partBytes >= 4 * 1024 * 1024) await drain();
        else await new Promise<void>((r) => setImmediate(r));
      }
      if (written !== count) throw new VbfsError('VBFS_CORRUPT', `checkpoint: index reports ${count} persisted blocks but holds ${written}`);
      parts.push(encodeFrame(encodeFooter(count)));
      await drain();
      await fd.datasync();
    } finally {
      await fd.close();
    }
    await this.failpoint('checkpoint:beforeRename');
    await this.fileIO.rename(tmp, `${this.dir}/${CHECKPOINT}`);
    await this.fileIO.fsyncDir(this.dir);
    await this.failpoint('checkpoint:afterRename');
    if (this.fd) {
      await this.fd.close();
      this.fd = null;
    }
    const old = this.segments.splice(0);
    for (const n of old) await this.fileIO.unlink(`${this.dir}/${mapSegmentName(n)}`);
    if (old.length > 0) await this.fileIO.fsyncDir(this.dir);
    this.seg = newSeg;
    this.logBytes = 0;
    this.checkpoints++;
  }

  async close(): Promise<void> {
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
