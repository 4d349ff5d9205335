import { VbfsError, isVbfsError } from '../errors';
import type { Backend } from '../backend/backend';
import { chunkKey, chunkPrefix, parseChunkKey } from '../chunk/chunk';
import { BLOCK_RECORD_FLAGS, checkRecord, FLAG_SEALED, isZeroRecord, maxPayload, RECORD_HEADER, type RecordHeader } from '../format/block-record';
import type { KeyMaterial } from '../crypto/key-source';
import type { VolumeCipher } from '../crypto/volume-cipher';
import { checkFrame } from '../format/frame';
import {
  commitEntryOffset,
  decodeCheckpointHeader,
  decodeCommit,
  decodeEntries,
  decodeExtentCommit,
  decodeTrimCommit,
  decodeMapLogHeader,
  decodeRuns,
  decodeSyncFrame,
  decodeReservation,
  entriesEntryOffset,
  extentCommitEntryOffset,
  readExtent,
  readLocation,
  runsEntryOffset,
  type Location,
} from '../format/map-records';
import { CHUNK_MAGIC, CHUNK_VERSION, decodeSegmentHeader, SEGMENT_HEADER } from '../format/segment-header';
import { BlockIndex } from '../map/block-index';
import { MapStore, type MapLoad } from '../map/map-store';
import { FileMapMedium, type MapMedium, type MapSource } from '../map/map-medium';
import type { FileIO } from '../io/file-io';
import { findExposed, formatMode } from '../io/private-mode';
import { replayWal } from '../wal/wal-reader';
import { isLockHeld, readLock, VolumeLock } from './lock';
import { checkZeroRecord, openRecordPayload } from './record-payload';
import type { Logger, VolumeInfo } from '../types';

/**
 * `vbfs fsck`: verify a volume end to end without opening it for writing.
 *
 * The engine's own loaders decide what the map and the WAL mean (MapStore.load,
 * replayWal, read-only), so fsck applies exactly the recovery rules an open would,
 * including which damage is a torn tail and which is corruption. On top of that it
 * reads every chunk object once, one at a time (memory: one chunk + the block
 * index), checks every record's CRC and fields, and matches records and map
 * entries both ways: every map entry must point at a record of that block and
 * version inside an existing chunk, and no referenced chunk may hold a newer
 * version of a block than the map knows.
 *
 * Severity: an 'error' is damage (data that was acknowledged may be unreadable, or
 * the structures disagree); a 'warning' is something the engine cleans up by itself
 * on the next open and that never held acknowledged data (orphan chunks, a torn
 * WAL or map log tail, map log segments a checkpoint made redundant).
 *
 * Encrypted volumes: with the key, every WAL and chunk record is also
 * authenticated (AES-GCM: a record damaged with its CRC fixed up, or moved from
 * another block or volume, fails); without it only CRCs and fields are checked,
 * and the report says so (`authenticated: false`).
 *
 * `repair` takes the volume lock for the whole run. The check itself is always
 * read-only; only when it found no error does repair do what an open would do: cut
 * torn tails (through the same loaders, not read-only), delete map log segments the
 * checkpoint made redundant, and delete orphan chunks. With any damage it changes
 * nothing: a damaged map may have lost track of blocks whose only copy is in an
 * "orphan". An orphan holding a newer version of a block than both the map and the
 * WAL is itself damage (a lost map commit) and is never deleted. Nothing that fails
 * a check is ever rewritten.
 *
 * Longer than the ~450 lines files here aim at, on purpose: its passes (map, WAL,
 * chunks, cross-checks, repair) fill one report from one index, and read best in
 * the order they run.
 */
export type FsckSeverity = 'error' | 'warning';

export type FsckProblemKind =
  | 'chunk-header' // a chunk object's header is damaged or belongs elsewhere
  | 'bad-record' // a chunk record fails its CRC or length check
  | 'record-mismatch' // a record and the map disagree (block, seq, length, flags, position)
  | 'missing-chunk' // the map references a chunk object the backend does not have
  | 'orphan-chunk' // a chunk object no map entry references (an error if it holds a block's newest version)
  | 'map' // the map (checkpoint or map log) does not load
  | 'map-inconsistent' // checkpoint and map log disagree (seq high-water, chunk ids)
  | 'stale-map-segment' // a map log segment older than the checkpoint (redundant)
  | 'torn-map-tail' // unsynced tail of the newest map log segment
  | 'wal' // the WAL does not replay
  | 'torn-wal-tail' // unsynced tail of the newest WAL segment
  | 'permissions'; // files or directories of the volume other users can open (never repaired: fix with chmod)

export interface FsckProblem {
  kind: FsckProblemKind;
  severity: FsckSeverity;
  /** Backend key of a chunk object, or the path of a WAL / map file. */
  object: string;
  /** Byte offset in `object` (the start of the damaged record or frame), or null for the whole object. */
  offset: number | null;
  message: string;
  /** Set by `repair` when it fixed this one. */
  repaired?: boolean;
}

export interface FsckReport {
  volume: string;
  id: string;
  size: number;
  blockSize: number;
  /** No problem of any severity. */
  clean: boolean;
  errors: number;
  warnings: number;
  /** Blocks with a location in a chunk (checkpoint + map log). */
  mappedBlocks: number;
  /** Blocks whose newest version is only in the WAL (an open replays them). */
  walBlocks: number;
  walRecords: number;
  walBytes: number;
  /** mappedBlocks x blockSize: the logical bytes the chunks are meant to hold. */
  liveBytes: number;
  /** Bytes of every chunk object on the backend (referenced and orphan). */
  storedBytes: number;
  /** storedBytes / liveBytes; null when nothing is mapped. */
  spaceAmplification: number | null;
  chunks: number;
  referencedChunks: number;
  orphanChunks: number;
  orphanBytes: number;
  /** Chunk records whose CRC was checked. */
  checkedRecords: number;
  /** The volume is encrypted. */
  encrypted: boolean;
  /** Every record was also authenticated with the key (encrypted volume, key given); false: CRCs only. */
  authenticated: boolean;
  repair: boolean;
  /** Problems --repair fixed (0 when it found damage: then it changes nothing). */
  repaired: number;
  problems: FsckProblem[];
  /** Problems not listed because there were more than the limit. */
  problemsOmitted: number;
}

export interface FsckProgress {
  phase: 'map' | 'wal' | 'chunks' | 'repair';
  done: number;
  total: number;
}

export interface FsckOptions {
  repair?: boolean;
  onProgress?: (p: FsckProgress) => void;
  /** Problems listed in the report (the counts always include all); default 10000. */
  maxProblems?: number;
  /** An encrypted volume's key: records are then authenticated too (Store.fsckVolume checks it: VBFS_BAD_KEY). */
  key?: KeyMaterial;
}

export interface FsckContext {
  info: VolumeInfo;
  dir: string; // <store>/volumes/<name>
  fileIO: FileIO;
  backend: Backend;
  logger: Logger;
  /** The store directory: when given, fsck also reports the volume's files other users can open. */
  storeDir?: string;
  /** Where the map lives (default: the local directory `<dir>/map`). */
  mapMedium?: MapMedium;
  /** An encrypted volume's cipher (key checked): every record is authenticated. Null/absent: CRCs only. */
  cipher?: VolumeCipher | null;
}

/** Map entries checked one by one in a chunk whose records did not all match the map. */
const MAX_ENTRIES_PER_SUSPECT_CHUNK = 1000;

export async function fsckVolume(ctx: FsckContext, opts: FsckOptions = {}): Promise<FsckReport> {
  const { info, dir, fileIO } = ctx;
  const lockPath = `${dir}/LOCK`;
  const repair = opts.repair === true;
  let lock: VolumeLock | null = null;
  if (repair) {
    lock = await VolumeLock.acquire(fileIO, lockPath, `volume '${info.name}'`);
  } else {
    await refuseIfOpen(fileIO, lockPath, info.name, 'fsck needs it closed (unmount it first)');
  }
  try {
    const report = await new Fsck(ctx, repair, opts).run();
    // A read-only check raced a writer that opened the volume meanwhile: what it
    // read may be a mix of before and after, so it proves nothing.
    if (!repair)
      await refuseIfOpen(fileIO, lockPath, info.name, 'it was opened while fsck ran, so the result is not reliable: run fsck again once it is closed');
    return report;
  } finally {
    await lock?.release();
  }
}

async function refuseIfOpen(fileIO: FileIO, lockPath: string, name: string, why: string): Promise<void> {
  const holder = await readLock(fileIO, lockPath);
  if (holder && isLockHeld(fileIO, holder, lockPath)) {
    throw new VbfsError('VBFS_LOCKED', `volume '${name}' is open for writing by process ${holder.pid} on ${holder.host}: ${why}`, {
      path: lockPath,
      pid: holder.pid,
    });
  }
}

class Fsck {
  private readonly r: FsckReport;
  private readonly bs: number;
  private readonly blockCount: number;
  private readonly index: BlockIndex;
  private readonly max: number;
  private readonly progress: (p: FsckProgress) => void;
  /**
   * Newest WAL seq of each block the WAL holds newer than the map (bounded by what
   * a volume keeps unflushed: its write buffer).
   */
  private readonly walSeq = new Map<number, number>();
  private readonly orphans: string[] = [];
  private accessWarnings = 0;
  /** Where the map lives: the bucket for a bucket store, else `<dir>/map`. */
  private readonly medium: MapMedium;

  constructor(
    private readonly ctx: FsckContext,
    private readonly repair: boolean,
    opts: FsckOptions,
  ) {
    this.medium = ctx.mapMedium ?? new FileMapMedium(ctx.fileIO, `${ctx.dir}/map`);
    const { info } = ctx;
    this.bs = info.blockSize;
    this.blockCount = info.size / info.blockSize;
    this.index = new BlockIndex(this.blockCount);
    this.max = opts.maxProblems ?? 10_000;
    this.progress = opts.onProgress ?? (() => undefined);
    this.r = {
      volume: info.name,
      id: info.id,
      size: info.size,
      blockSize: info.blockSize,
      clean: true,
      errors: 0,
      warnings: 0,
      mappedBlocks: 0,
      walBlocks: 0,
      walRecords: 0,
      walBytes: 0,
      liveBytes: 0,
      storedBytes: 0,
      spaceAmplification: null,
      chunks: 0,
      referencedChunks: 0,
      orphanChunks: 0,
      orphanBytes: 0,
      checkedRecords: 0,
      encrypted: info.encrypted,
      authenticated: info.encrypted && !!ctx.cipher,
      repair,
      repaired: 0,
      problems: [],
      problemsOmitted: 0,
    };
  }

  private add(p: FsckProblem): FsckProblem {
    if (p.severity === 'error') this.r.errors++;
    else this.r.warnings++;
    this.r.clean = false;
    if (this.r.problems.length < this.max) this.r.problems.push(p);
    else this.r.problemsOmitted++;
    return p;
  }

  /** A loader's CORRUPT error becomes a problem; anything else (I/O, a bug) aborts fsck. */
  private fromError(kind: FsckProblemKind, err: unknown, fallbackObject: string): void {
    if (!isVbfsError(err, 'VBFS_CORRUPT')) throw err;
    const d = err.details;
    this.add({
      kind,
      severity: 'error',
      object: typeof d['path'] === 'string' ? d['path'] : fallbackObject,
      offset: typeof d['offset'] === 'number' ? d['offset'] : null,
      message: err.message,
    });
  }

  private torn(kind: 'torn-map-tail' | 'torn-wal-tail', object: string, offset: number, what: string): void {
    this.add({
      kind,
      severity: 'warning',
      object,
      offset,
      message: `torn tail: ${what}; never acknowledged, so the next open (or fsck --repair) cuts it`,
    });
  }

  /**
   * MapStore.load reports the torn tail it cuts (or would cut, read-only) only as a
   * warning naming the file: collect it. Everything else it logs goes to debug.
   */
  private mapLogger(): Logger {
    const base = this.ctx.logger;
    return {
      error: (m, meta) => base.error(m, meta),
      info: (m, meta) => base.debug(m, meta),
      debug: (m, meta) => base.debug(m, meta),
      warn: (m, meta) => {
        const file = meta?.['file'];
        if (typeof file !== 'string') return base.warn(m, meta);
        const offset = typeof meta?.['offset'] === 'number' ? meta['offset'] : 0;
        const bytes = typeof meta?.['bytes'] === 'number' ? `${meta['bytes']} bytes, ` : '';
        const proven = typeof meta?.['provenSynced'] === 'number' ? `, proven synced up to offset ${meta['provenSynced']}` : '';
        this.torn('torn-map-tail', file, offset, `${bytes}${m}${proven}`);
      },
    };
  }

  async run(): Promise<FsckReport> {
    await this.checkAccess();
    const mapOk = await this.checkMap();
    await this.checkWal();
    await this.checkChunks(mapOk);
    if (this.repair && this.r.errors === 0 && this.r.warnings > this.accessWarnings) await this.doRepair();
    const r = this.r;
    r.liveBytes = r.mappedBlocks * this.bs;
    r.spaceAmplification = r.liveBytes > 0 ? Math.round((r.storedBytes / r.liveBytes) * 1000) / 1000 : null;
    return r;
  }

  // ------------------------------------------------------------------ map

  /** Load the map the way an open does, then check checkpoint and log against each other. True if it loaded. */
  private async checkMap(): Promise<boolean> {
    const { fileIO, dir, info } = this.ctx;
    this.progress({ phase: 'map', done: 0, total: 1 });
    const map = new MapStore(fileIO, `${dir}/map`, info.id, this.mapLogger(), () => undefined, this.medium);
    let loaded: MapLoad | null = null;
    try {
      await this.crossCheckMap();
      loaded = await map.load(this.index, true);
    } catch (err) {
      this.fromError('map', err, this.ctx.mapMedium ? this.medium.describe('checkpoint') : `${dir}/map`);
    } finally {
      await map.close();
    }
    this.progress({ phase: 'map', done: 1, total: 1 });
    if (!loaded) return false;
    this.r.mappedBlocks = this.index.countPersisted();
    return true;
  }

  /**
   * What MapStore.load does not check because a running volume never needs it:
   * the checkpoint's seq high-water and next chunk id cover its entries, and the
   * log after it commits chunks in increasing id order, each above the checkpoint's
   * next chunk id, with every entry naming the chunk of its commit. Damaged frames
   * are left to load(), which knows which of them are torn tails.
   */
  private async crossCheckMap(): Promise<void> {
    const medium = this.medium;
    const ckPath = medium.describe('checkpoint');
    let firstSeg = 1;
    let nextChunk = 1;
    const ck = await medium.openCheckpoint();
    if (ck) {
      const buf = await readWhole(ck);
      const first = checkFrame(buf, 0);
      const h = first.ok ? decodeCheckpointHeader(first.payload) : null;
      if (!first.ok || !h) return;
      firstSeg = h.mapSegment;
      nextChunk = h.nextChunkId;
      for (let off = first.end; ;) {
        const f = checkFrame(buf, off);
        if (!f.ok) break;
        // Version 1: one location per block ('E'); version 2: extents ('R'), checked by their last seq.
        const count = h.version >= 2 ? decodeRuns(f.payload) : decodeEntries(f.payload);
        if (count === null) break;
        for (let i = 0; i < count; i++) {
          let l: Location;
          if (h.version >= 2) {
            const e = readExtent(f.payload, runsEntryOffset(i));
            l = { block: e.block, seq: e.seq + e.count - 1, chunkId: e.chunkId, offset: e.offset, len: e.len, flags: e.flags };
          } else {
            l = readLocation(f.payload, entriesEntryOffset(i));
          }
          if (l.seq > h.seq || l.chunkId >= h.nextChunkId) {
            this.add({
              kind: 'map-inconsistent',
              severity: 'error',
              object: ckPath,
              offset: off,
              message: `checkpoint entry for block ${l.block} (seq ${l.seq}, chunk ${l.chunkId}) is above the checkpoint's own high-water (seq ${h.seq}, next chunk ${h.nextChunkId})`,
            });
            break;
          }
        }
        off = f.end;
      }
    }
    const nums = await medium.listSegments();
    let lastChunk = nextChunk - 1;
    for (const n of nums) {
      const path = medium.describe(n);
      if (n < firstSeg) {
        this.add({
          kind: 'stale-map-segment',
          severity: 'warning',
          object: path,
          offset: null,
          message: `map log segment ${n} is older than the checkpoint (which starts at segment ${firstSeg}): redundant, the next open (or fsck --repair) deletes it`,
        });
        continue;
      }
      const buf = await medium.readSegment(n);
      const first = checkFrame(buf, 0);
      const lh = first.ok ? decodeMapLogHeader(first.payload) : null;
      if (!first.ok || !lh) continue;
      for (let off = first.end; off < buf.length;) {
        const f = checkFrame(buf, off);
        if (
          f.ok &&
          (decodeSyncFrame(f.payload) !== null || decodeReservation(f.payload) !== null || (lh.version >= 4 && decodeTrimCommit(f.payload) !== null))
        ) {
          off = f.end; // a sync frame (map log version 2): load() checks its claim; a seq reservation; or trims (load() applies them)
          continue;
        }
        // Version 3 commits are 'X' extent frames, versions 1 and 2 'C' location frames.
        const x = f.ok && lh.version >= 3 ? decodeExtentCommit(f.payload) : null;
        const c = !f.ok ? null : x ? { chunkId: x.chunkId, count: x.extents } : lh.version < 3 ? decodeCommit(f.payload) : null;
        if (!f.ok || !c) break;
        const entryAt = (i: number): { block: number; chunkId: number } =>
          x ? readExtent(f.payload, extentCommitEntryOffset(i)) : readLocation(f.payload, commitEntryOffset(i));
        const why =
          c.chunkId <= lastChunk
            ? `commits chunk ${c.chunkId} after chunk ${lastChunk} (chunk ids only grow${lastChunk === nextChunk - 1 ? `; the checkpoint's next chunk id is ${nextChunk}` : ''})`
            : null;
        const foreign = Array.from({ length: c.count }, (_, i) => entryAt(i)).find((l) => l.chunkId !== c.chunkId);
        if (why || foreign) {
          this.add({
            kind: 'map-inconsistent',
            severity: 'error',
            object: path,
            offset: off,
            message: `map log commit ${why ?? `of chunk ${c.chunkId} holds an entry for block ${foreign?.block} in chunk ${foreign?.chunkId}`}`,
          });
        }
        if (c.chunkId > lastChunk) lastChunk = c.chunkId;
        off = f.end;
      }
    }
  }

  // ------------------------------------------------------------------ WAL

  /** Replay the WAL with the engine's own reader; blocks newer than the map are marked in the index. */
  private async checkWal(): Promise<void> {
    const { fileIO, dir, info } = this.ctx;
    const walDir = `${dir}/wal`;
    this.progress({ phase: 'wal', done: 0, total: 1 });
    for (const n of await fileIO.readdir(walDir)) {
      if (n.endsWith('.wal')) this.r.walBytes += (await fileIO.stat(`${walDir}/${n}`))?.size ?? 0;
    }
    let beyond = 0;
    let firstBeyond = -1;
    try {
      // Its cut warnings go to debug: the cuts come back in the result.
      const base = this.ctx.logger;
      const quiet: Logger = {
        error: (m, meta) => base.error(m, meta),
        warn: (m, meta) => base.debug(m, meta),
        info: (m, meta) => base.debug(m, meta),
        debug: (m, meta) => base.debug(m, meta),
      };
      const replay = await replayWal(fileIO, walDir, info.id, this.bs, true, quiet, (h, buf, off, path) => {
        if (h.block >= this.blockCount) {
          if (beyond++ === 0) firstBeyond = h.block;
          return;
        }
        if (h.seq > this.index.persistedSeq(h.block)) this.walSeq.set(h.block, h.seq);
        // What an open would refuse: a record sealed or not against the volume's
        // setting, or (with the key) one that fails authentication.
        if (isZeroRecord(h)) {
          // A trim: sealed exactly when the volume is encrypted, and (with the key) authentic.
          if (this.ctx.cipher || ((h.flags & FLAG_SEALED) !== 0) !== info.encrypted) {
            checkZeroRecord(this.ctx.cipher ?? null, h, buf, off, { path, offset: off - RECORD_HEADER });
          }
        } else if (this.ctx.cipher || ((h.flags & FLAG_SEALED) !== 0) !== info.encrypted) {
          openRecordPayload(this.ctx.cipher ?? null, h, buf, off, this.bs, { path, offset: off - RECORD_HEADER });
        }
      });
      this.r.walRecords = replay.records;
      for (const c of replay.cuts) {
        const what =
          c.offset === 0
            ? `the segment's header is damaged (${c.reason}) and no sync was ever proven in it: the whole segment (${c.bytes} bytes, ${c.records} records) goes`
            : `${c.bytes} bytes from here (damaged: ${c.reason}; ${c.records} valid records among them) lie after offset ${c.provenSynced}, the last one a completed fdatasync covered`;
        this.torn('torn-wal-tail', c.path, c.offset, what);
      }
    } catch (err) {
      this.fromError('wal', err, walDir);
    }
    if (beyond > 0) {
      // Volume.open refuses these; replayWal itself does not know the volume size.
      this.add({
        kind: 'wal',
        severity: 'error',
        object: walDir,
        offset: null,
        message: `${beyond} WAL record(s) for blocks beyond the end of the volume (first: block ${firstBeyond})`,
      });
    }
    this.r.walBlocks = this.walSeq.size;
    this.progress({ phase: 'wal', done: 1, total: 1 });
  }

  // ------------------------------------------------------------------ chunks

  private async checkChunks(mapOk: boolean): Promise<void> {
    const { backend, info } = this.ctx;
    const keys = await backend.list(chunkPrefix(info.id));
    const present = new Set<number>();
    const orphans: { key: string; bytes: number }[] = [];
    /** Chunks where some map entry did not meet its record during the walk. */
    const suspects = new Map<number, Map<number, FsckProblem>>();
    let done = 0;
    for (const key of keys) {
      this.progress({ phase: 'chunks', done: done++, total: keys.length });
      const id = parseChunkKey(info.id, key);
      if (id === null) continue; // not a chunk object name (none are written under this prefix)
      present.add(id);
      const buf = await backend.get(key);
      this.r.chunks++;
      this.r.storedBytes += buf.length;
      const refs = mapOk ? this.index.liveBlocks(id) : -1;
      if (refs === 0) {
        orphans.push({ key, bytes: buf.length });
        this.checkOrphan(buf, key);
        continue;
      }
      if (refs > 0) this.r.referencedChunks++;
      const walk = this.walkChunk(buf, key, id, mapOk);
      if (mapOk && walk.matched !== refs) suspects.set(id, walk.damaged);
    }
    this.progress({ phase: 'chunks', done: keys.length, total: keys.length });

    if (mapOk) {
      this.index.forEachLiveChunk((id, refs) => {
        if (!present.has(id)) {
          this.add({
            kind: 'missing-chunk',
            severity: 'error',
            object: chunkKey(info.id, id),
            offset: null,
            message: `chunk object is missing from the backend but the map points ${refs} block(s) into it: their data is lost`,
          });
        }
      });
      if (suspects.size > 0) await this.checkSuspects(suspects);
    }

    this.r.orphanChunks = orphans.length;
    for (const o of orphans) this.r.orphanBytes += o.bytes;
  }

  /**
   * An unreferenced chunk is redundant when the map or the WAL has every block in
   * it at the same or a newer version: it was superseded, or its flush crashed
   * before the map commit (the WAL is reclaimed only after the commit, so it still
   * holds the data). A record newer than both means the map lost a commit: the
   * orphan holds the only copy of that version, and it is damage, not garbage.
   */
  private checkOrphan(buf: Buffer, key: string): void {
    const bs = this.bs;
    let newest = 0;
    let example = '';
    for (let off = SEGMENT_HEADER; off < buf.length;) {
      const c = checkRecord(buf, off, buf.length, maxPayload(bs));
      if (!c.ok) break; // a damaged record in a redundant object harms nothing; stop here
      const { block, seq } = c.header;
      // An unmapped block may have been trimmed (map log v4): its tombstone is gone once a
      // checkpoint absorbed it, so an unmapped block's record cannot prove a lost commit.
      const mapped = this.index.persistedSeq(block);
      if (block < this.blockCount && mapped > 0 && seq > mapped && seq > (this.walSeq.get(block) ?? 0)) {
        if (newest++ === 0) example = `block ${block} seq ${seq} at offset ${off}`;
      }
      off = c.end;
    }
    if (newest > 0) {
      this.add({
        kind: 'orphan-chunk',
        severity: 'error',
        object: key,
        offset: null,
        message: `chunk object is not referenced by the map, yet holds the newest version of ${newest} block(s) (first: ${example}), newer than the map and the WAL: a map commit was lost; kept`,
      });
      return;
    }
    this.orphans.push(key);
    this.add({
      kind: 'orphan-chunk',
      severity: 'warning',
      object: key,
      offset: null,
      message: `chunk object (${buf.length} bytes) is not referenced by the map and every block in it has a newer or equal version in the map or the WAL (superseded, or left by a flush that crashed before its map commit): the next open (or fsck --repair) deletes it`,
    });
  }

  /**
   * Only after a check that found no damage: what an open would do, with the
   * engine's own loaders (now not read-only) and the orphans just proven redundant.
   */
  private async doRepair(): Promise<void> {
    const { fileIO, dir, info, backend, logger } = this.ctx;
    const steps = 3 + this.orphans.length;
    let done = 0;
    this.progress({ phase: 'repair', done: done++, total: steps });
    const quiet: Logger = {
      error: (m, meta) => logger.error(m, meta),
      warn: (m, meta) => logger.info(m, meta),
      info: (m, meta) => logger.debug(m, meta),
      debug: (m, meta) => logger.debug(m, meta),
    };
    const map = new MapStore(fileIO, `${dir}/map`, info.id, quiet, () => undefined, this.medium);
    try {
      await map.load(new BlockIndex(this.blockCount), false); // cuts a torn tail, deletes stale segments
    } finally {
      await map.close();
    }
    this.progress({ phase: 'repair', done: done++, total: steps });
    await replayWal(fileIO, `${dir}/wal`, info.id, this.bs, false, quiet, () => undefined); // cuts a torn tail
    this.progress({ phase: 'repair', done: done++, total: steps });
    for (const key of this.orphans) {
      await backend.delete(key);
      this.progress({ phase: 'repair', done: done++, total: steps });
    }
    for (const p of this.r.problems) {
      // Permissions are the user's call (a store may be shared on purpose): reported, never changed.
      if (p.severity === 'warning' && p.kind !== 'permissions') p.repaired = true;
    }
    this.r.repaired = this.r.warnings - this.accessWarnings;
  }

  // ------------------------------------------------------------------ permissions

  /**
   * The volume's files and directories (its directory, its chunk objects, and the
   * store directories on the way to them) that another user can reach and open:
   * one warning finding, naming the first, with the count.
   */
  private async checkAccess(): Promise<void> {
    const { storeDir, fileIO, info } = this.ctx;
    if (storeDir === undefined) return;
    const found = await findExposed(fileIO, storeDir, { scopes: [`volumes/${info.name}`, `objects/${info.id}`], limit: 1 });
    const first = found.entries[0];
    if (!first) return;
    this.accessWarnings++;
    this.add({
      kind: 'permissions',
      severity: 'warning',
      object: first.path,
      offset: null,
      message: `${first.path} is ${formatMode(first.mode)}: ${found.count} file(s) and director(ies) of this volume can be opened by other users (vbfs creates 0600/0700; fix with chmod -R go-rwx ${storeDir})`,
    });
  }

  /**
   * Every record of one chunk: CRC, header fields, and agreement with the map.
   * Returns how many map entries met their record here, and the damaged records by offset.
   */
  private walkChunk(buf: Buffer, key: string, id: number, mapOk: boolean): { matched: number; damaged: Map<number, FsckProblem> } {
    const bs = this.bs;
    const ix = this.index;
    const damaged = new Map<number, FsckProblem>();
    const err = (kind: FsckProblemKind, offset: number | null, message: string): FsckProblem =>
      this.add({ kind, severity: 'error', object: key, offset, message });
    const h = decodeSegmentHeader(buf, CHUNK_MAGIC);
    if (!h) {
      err('chunk-header', 0, 'chunk header is damaged (bad magic or CRC)');
    } else if (h.volumeId !== this.ctx.info.id || h.blockSize !== bs || h.number !== id || h.version !== CHUNK_VERSION) {
      err(
        'chunk-header',
        0,
        `chunk header names volume ${h.volumeId}, chunk ${h.number}, block size ${h.blockSize}, version ${h.version}; expected ${this.ctx.info.id}, ${id}, ${bs}, ${CHUNK_VERSION}`,
      );
    }
    let matched = 0;
    let records = 0;
    let maxSeq = 0;
    let off = SEGMENT_HEADER;
    while (off < buf.length) {
      const c = checkRecord(buf, off, buf.length, maxPayload(bs));
      if (!c.ok) {
        const next = nextRecord(buf, off, bs, c.reason === 'bad-crc');
        const p = err(
          'bad-record',
          off,
          `block record is damaged (${c.reason})` +
            (next < 0 ? `; nothing valid follows in the last ${buf.length - off} bytes` : `; the next valid record starts at offset ${next}`),
        );
        damaged.set(off, p);
        if (next < 0) break;
        off = next;
        continue;
      }
      const { block, seq, len, flags, rawLen } = c.header;
      records++;
      if (seq > maxSeq) maxSeq = seq;
      const sealed = (flags & FLAG_SEALED) !== 0;
      const rawStored = (flags & ~FLAG_SEALED) === 0; // not compressed: the payload is one block (+ the tag when sealed)
      if (
        rawLen !== bs ||
        (flags & ~BLOCK_RECORD_FLAGS) !== 0 ||
        block >= this.blockCount ||
        (rawStored && len !== (sealed ? maxPayload(bs) : bs)) ||
        sealed !== this.ctx.info.encrypted
      ) {
        err(
          'record-mismatch',
          off,
          `record for block ${block} seq ${seq} has invalid fields (len ${len}, flags ${flags}, raw length ${rawLen}; volume has ${this.blockCount} blocks of ${bs}, ${this.ctx.info.encrypted ? 'encrypted: every record sealed' : 'not encrypted: no record sealed'})`,
        );
      } else if (!this.authentic(c.header, buf, off, key, damaged)) {
        // reported as a damaged record: whatever the map says, its bytes cannot be read
      } else if (mapOk && ix.persistedChunk(block) === id && ix.persistedOff(block) === off && ix.persistedSeq(block) > 0) {
        const l = ix.location(block);
        if (l && l.seq === seq && l.len === len && l.flags === flags) matched++;
        // A disagreement here is reported by checkSuspects, once per map entry.
      } else if (mapOk && seq > ix.persistedSeq(block) && ix.persistedSeq(block) > 0) {
        // (An unmapped block's record is not reported: the block may have been trimmed, see checkOrphan.)
        err(
          'record-mismatch',
          off,
          `record holds block ${block} seq ${seq}, newer than the map's version of that block (seq ${ix.persistedSeq(block)}): a map commit is missing`,
        );
      }
      off = c.end;
    }
    this.r.checkedRecords += records;
    if (h && damaged.size === 0) {
      if (h.count !== records) err('chunk-header', 0, `chunk header says ${h.count} records, the object holds ${records}`);
      else if (h.maxSeq !== maxSeq) err('chunk-header', 0, `chunk header says max seq ${h.maxSeq}, the records' highest is ${maxSeq}`);
    }
    return { matched, damaged };
  }

  /**
   * With the key: open the record (authenticate, decrypt, decompress) as a read
   * would. A failure is a damaged record (its bytes can never be read). Without the
   * key (or on a plain volume, whose payloads the CRC already covers) true.
   */
  private authentic(h: RecordHeader, buf: Buffer, off: number, key: string, damaged: Map<number, FsckProblem>): boolean {
    const cipher = this.ctx.cipher;
    if (!cipher) return true;
    try {
      openRecordPayload(cipher, h, buf, off + RECORD_HEADER, this.bs, { path: key, offset: off });
      return true;
    } catch (e) {
      if (!isVbfsError(e, 'VBFS_CORRUPT')) throw e;
      damaged.set(off, this.add({ kind: 'bad-record', severity: 'error', object: key, offset: off, message: e.message }));
      return false;
    }
  }

  /**
   * Chunks where the walk did not meet every map entry: check each entry pointing
   * into them (one pass over the index, then one read per chunk) and say which
   * block is affected and why. A damaged record already reported gets the block
   * named on its own line rather than a second line.
   */
  private async checkSuspects(suspects: Map<number, Map<number, FsckProblem>>): Promise<void> {
    const { backend, info } = this.ctx;
    const entries = new Map<number, { block: number; seq: number; off: number; len: number; flags: number }[]>();
    const over = new Map<number, number>();
    this.index.forEachPersisted((block, seq, chunk, off, len, flags) => {
      if (!suspects.has(chunk)) return;
      let list = entries.get(chunk);
      if (!list) entries.set(chunk, (list = []));
      if (list.length < MAX_ENTRIES_PER_SUSPECT_CHUNK) list.push({ block, seq, off, len, flags });
      else over.set(chunk, (over.get(chunk) ?? 0) + 1);
    });
    for (const [id, list] of entries) {
      const key = chunkKey(info.id, id);
      const damaged = suspects.get(id) as Map<number, FsckProblem>;
      const buf = await backend.get(key);
      for (const e of list) {
        const lost = `the map's version of block ${e.block} (seq ${e.seq})`;
        const known = damaged.get(e.off);
        if (known) {
          known.message += `; it holds ${lost}: that block cannot be read`;
          continue;
        }
        const mismatch = (message: string): void => {
          this.add({ kind: 'record-mismatch', severity: 'error', object: key, offset: e.off, message });
        };
        if (e.off < SEGMENT_HEADER || e.off + RECORD_HEADER + e.len > buf.length) {
          mismatch(`the map points block ${e.block} (seq ${e.seq}) at offset ${e.off} length ${e.len}, past the end of the object (${buf.length} bytes)`);
          continue;
        }
        const c = checkRecord(buf, e.off, buf.length, maxPayload(this.bs));
        if (!c.ok) {
          mismatch(`the map points block ${e.block} (seq ${e.seq}) here, but no valid record starts at this offset (${c.reason})`);
        } else if (c.header.block !== e.block || c.header.seq !== e.seq || c.header.len !== e.len || c.header.flags !== e.flags) {
          const got = c.header;
          mismatch(
            `record holds block ${got.block} seq ${got.seq} len ${got.len} flags ${got.flags}; the map expects block ${e.block} seq ${e.seq} len ${e.len} flags ${e.flags}`,
          );
        }
      }
      const more = over.get(id);
      if (more)
        this.add({
          kind: 'record-mismatch',
          severity: 'error',
          object: key,
          offset: null,
          message: `${more} more map entries into this chunk were not checked one by one`,
        });
    }
  }
}

/**
 * Where to resume after a damaged record: if only the CRC failed, the length field
 * is probably right, so try just past it; otherwise scan for the next offset where
 * a valid record starts. -1 if none.
 */
function nextRecord(buf: Buffer, off: number, blockSize: number, trustLength: boolean): number {
  if (trustLength) {
    const end = off + RECORD_HEADER + buf.readUInt32LE(off + 4);
    if (end === buf.length || (end < buf.length && checkRecord(buf, end, buf.length, maxPayload(blockSize)).ok)) return end;
  }
  for (let at = off + 1; at + RECORD_HEADER <= buf.length; at++) {
    if (checkRecord(buf, at, buf.length, maxPayload(blockSize)).ok) return at;
  }
  return -1;
}

/** A whole checkpoint (fsck's cross-check reads it into memory, as it always has). */
async function readWhole(src: MapSource): Promise<Buffer> {
  try {
    const out = Buffer.alloc(await src.size());
    for (let at = 0; at < out.length;) {
      const got = await src.read(out.subarray(at), at);
      if (got <= 0) return out.subarray(0, at);
      at += got;
    }
    return out;
  } finally {
    await src.close();
  }
}
