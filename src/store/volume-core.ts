import { VbfsError } from '../errors';
import type { VolumeCipher } from '../crypto/volume-cipher';
import { CipherPool } from '../crypto/cipher-pool';
import { Arena } from '../arena/arena';
import type { Backend } from '../backend/backend';
import { BlockCache } from '../cache/block-cache';
import { maxPayload, RECORD_HEADER } from '../format/block-record';
import { SEGMENT_HEADER } from '../format/segment-header';
import { checkDurability, checkDurabilityOn } from './volume-rules';
import { BlockIndex } from '../map/block-index';
import { MapStore, type Failpoint } from '../map/map-store';
import type { MapMedium } from '../map/map-medium';
import type { FileIO } from '../io/file-io';
import type { Durability, Logger, VolumeInfo } from '../types';
import type { VolumeOpenOptions, VolumeTunables } from './types';
import { ZeroList } from './zero-list';

const MiB = 1024 * 1024;

export const DEFAULT_TUNABLES: VolumeTunables = {
  walSegmentBytes: 64 * MiB,
  // Preallocated segments (an fdatasync after an append into a full-size file needs no
  // journal commit) are opt-in: through FUSE the fsync job measured the same either way
  // (docs/bench.md), and they cost a 64 MiB zero fill before the first write after an
  // open (seconds on an SD card) and up to 3 x 64 MiB of WAL per volume.
  walPreallocate: false,
  chunkBytes: 4 * MiB,
  writeBufferBytes: 256 * MiB,
  flushBytes: 32 * MiB,
  flushIntervalMs: 5000,
  flushWaveChunks: 4,
  flushWaves: 1,
  batchBlocks: 1024,
  batchMs: 5,
  // At most this much: the volume's memory share (store.ts) bounds it, and the cache
  // gets what the share leaves after the write buffer (768 MiB of the default 1 GiB
  // budget), so a working set of that size is served from memory.
  cacheBytes: 1024 * MiB,
  checkpointBytes: 16 * MiB,
  readaheadBytes: 1 * MiB,
  noSpaceRetryMs: 1000,
  idleTrimMs: 30_000,
  seqReserveStep: 2 ** 20,
  backendReadTimeoutMs: 60_000,
  backendRetryMs: 1000,
  cryptoThreads: 1,
  cryptoBatchBlocks: 64,
  cryptoSealBlocks: 8,
  compactIntervalMs: 5000,
  compactStartRatio: 1.5,
  compactTargetRatio: 1.25,
  compactChunkLive: 0.25,
  compactRateBytes: 32 * MiB,
};

export interface VolumeContext {
  dir: string; // <store>/volumes/<name>
  fileIO: FileIO;
  backend: Backend;
  logger: Logger;
  failpoint: Failpoint;
  /** Where the map lives (default: the local directory `<dir>/map`). */
  mapMedium?: MapMedium;
  /** Called once when the volume has closed (the store rebalances its memory budget). */
  onClose?: () => void;
  /** An encrypted volume's cipher (its key already checked), or null/absent for a plain volume. */
  cipher?: VolumeCipher | null;
  /** Awaited last in close(), after every write (the bucket volume's lease is released here). */
  afterClose?: () => Promise<void>;
  /** Throws if writes must stop now (a bucket volume whose lease is lost: VBFS_LEASE_LOST). */
  beforeWrite?: () => void;
}

/** The counters of VolumeStats that the engine parts count themselves. */
export interface VolumeCounters {
  writes: number;
  writeBytes: number;
  reads: number;
  readBytes: number;
  fsyncs: number;
  chunkFlushes: number;
  flushedBytes: number;
  errors: number;
  corruptReads: number;
  /** trim() calls (library, FUSE fallocate). */
  trims: number;
  /** Blocks made Empty by a zero record (whole blocks trimmed or written as zeros). */
  zeroBlocks: number;
}

/**
 * What the parts of a volume share: its identity, tunables, the block index, the
 * write buffer (arena), the read cache, the map store, the sequence counter and
 * the open/failed state. Volume (the facade) owns one and hands it to the writer,
 * reader, flusher and recovery; none of them owns another's state.
 */
export class VolumeCore {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly durability: Durability;
  readonly readOnly: boolean;
  readonly tunables: VolumeTunables;
  readonly index: BlockIndex;
  readonly arena: Arena;
  readonly cache: BlockCache;
  readonly map: MapStore;
  /** Seals and opens record payloads of an encrypted volume; null for a plain one. */
  readonly cipher: VolumeCipher | null;
  /** Opens runs of sealed records off the event loop (encrypted volume, cryptoThreads > 0); null: inline. */
  readonly cipherPool: CipherPool | null;
  /** The highest sequence number handed out (or recovered): only grows. */
  seq = 0;
  nextChunkId = 1;
  lastIo = performance.now();
  /** Backend reads in flight: chunk objects are not deleted under them. */
  readsInFlight = 0;
  /** close() has begun / ended. */
  closing = false;
  closed = false;
  /** Set once: the volume is poisoned, writes are refused until it is reopened. */
  failed: VbfsError | null = null;
  readonly counters: VolumeCounters = {
    writes: 0,
    writeBytes: 0,
    reads: 0,
    readBytes: 0,
    fsyncs: 0,
    chunkFlushes: 0,
    flushedBytes: 0,
    errors: 0,
    corruptReads: 0,
    trims: 0,
    zeroBlocks: 0,
  };
  /** Zero records not yet in a map tombstone (the flusher commits them). */
  readonly zeros = new ZeroList();

  constructor(
    /** volume.json as of open; only the format upgrade (recovery) replaces it. */
    public info: VolumeInfo,
    readonly ctx: VolumeContext,
    opts: VolumeOpenOptions,
  ) {
    this.name = info.name;
    this.size = info.size;
    this.blockSize = info.blockSize;
    this.readOnly = opts.readOnly === true;
    this.durability = opts.durability !== undefined ? checkDurability(opts.durability) : info.durability;
    // Durability binds writers only: a reader of a `remote` volume may read it from anywhere.
    if (!this.readOnly) checkDurabilityOn(this.durability, ctx.backend);
    this.tunables = resolveTunables(opts, info.blockSize, ctx.backend.remote === true);
    this.blockCount = info.size / info.blockSize;
    this.cipher = ctx.cipher ?? null;
    this.cipherPool = this.cipher && this.tunables.cryptoThreads > 0 ? new CipherPool(this.cipher) : null;
    if (info.encrypted !== (this.cipher !== null))
      throw new VbfsError('VBFS_INVALID_ARGUMENT', `volume '${info.name}': a cipher is needed exactly when the volume is encrypted`);
    this.index = new BlockIndex(this.blockCount);
    // An encrypted volume's slots also hold the sealed payload: the same buffer bytes hold fewer blocks.
    const sealedSize = ctx.cipher ? maxPayload(info.blockSize) : 0;
    // Shared with the crypto worker, which seals a batch in place (writer.ts).
    this.arena = new Arena(
      info.blockSize,
      Math.max(2, Math.floor(this.tunables.writeBufferBytes / (info.blockSize + sealedSize))),
      sealedSize,
      this.cipherPool !== null,
    );
    this.cache = new BlockCache(this.tunables.cacheBytes, info.blockSize, (b) => this.index.setCached(b, false));
    this.map = new MapStore(ctx.fileIO, `${ctx.dir}/map`, info.id, ctx.logger, ctx.failpoint, ctx.mapMedium);
  }

  /** Raw records that fit in one chunk object (compressed ones are never larger; sealed ones carry their tag). */
  get recordsPerChunk(): number {
    const payload = this.cipher ? maxPayload(this.blockSize) : this.blockSize;
    return Math.max(1, Math.floor((this.tunables.chunkBytes - SEGMENT_HEADER) / (RECORD_HEADER + payload)));
  }

  /** Poison the volume (once): log it, refuse writes from now on, wake writers waiting for room. */
  fail(err: unknown): VbfsError {
    const e = err instanceof VbfsError ? err : new VbfsError('VBFS_IO', `volume '${this.name}': ${String((err as Error)?.message ?? err)}`, {}, { cause: err });
    if (!this.failed) {
      this.failed = e;
      this.counters.errors++;
      this.ctx.logger.error('volume failed; further writes are refused until it is reopened', { volume: this.name, error: e.message });
      this.arena.wakeAll();
    }
    return e;
  }

  checkOpen(): void {
    if (this.closed || this.closing) throw new VbfsError('VBFS_CLOSED', `volume '${this.name}' is closed`);
  }
}

/** Readahead over a remote backend (S3) when none is given: 8 reads of 1 MiB in flight, the round trips overlap. */
export const REMOTE_READAHEAD_BYTES = 8 * MiB;
/**
 * Flush waves in flight over a remote backend when none is given: two, so the next
 * wave's chunk PUTs run while a wave's map delta (a PUT of its own) commits, instead
 * of the bucket idling for a round trip per wave. Locally one: a writer waiting on a
 * slow disk then waits for one wave (test/slow-disk.test.ts).
 */
export const REMOTE_FLUSH_WAVES = 2;

function resolveTunables(opts: VolumeOpenOptions, blockSize: number, remote: boolean): VolumeTunables {
  const t: VolumeTunables = { ...DEFAULT_TUNABLES };
  if (remote) {
    t.readaheadBytes = REMOTE_READAHEAD_BYTES;
    t.flushWaves = REMOTE_FLUSH_WAVES;
  }
  for (const k of Object.keys(DEFAULT_TUNABLES) as (keyof VolumeTunables)[]) {
    const v = opts[k];
    if (v === undefined) continue;
    if (k === 'walPreallocate') {
      if (typeof v !== 'boolean') throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid ${k}: ${String(v)}`);
      t.walPreallocate = v;
      continue;
    }
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid ${k}: ${String(v)}`);
    t[k] = v;
  }
  const minChunk = SEGMENT_HEADER + RECORD_HEADER + blockSize;
  if (t.chunkBytes < minChunk) throw new VbfsError('VBFS_INVALID_ARGUMENT', `chunkBytes must be at least ${minChunk}`);
  if (t.walSegmentBytes < minChunk) throw new VbfsError('VBFS_INVALID_ARGUMENT', `walSegmentBytes must be at least ${minChunk}`);
  if (t.writeBufferBytes < 2 * blockSize) throw new VbfsError('VBFS_INVALID_ARGUMENT', `writeBufferBytes must be at least two blocks`);
  if (t.flushIntervalMs < 1) t.flushIntervalMs = 1;
  if (!Number.isInteger(t.flushWaveChunks) || t.flushWaveChunks < 1)
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `flushWaveChunks must be an integer of at least 1`);
  if (!Number.isInteger(t.flushWaves) || t.flushWaves < 1) throw new VbfsError('VBFS_INVALID_ARGUMENT', `flushWaves must be an integer of at least 1`);
  if (t.compactTargetRatio < 1 || t.compactStartRatio < t.compactTargetRatio) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `compaction ratios: need 1 <= compactTargetRatio <= compactStartRatio`);
  }
  if (t.compactChunkLive > 1) throw new VbfsError('VBFS_INVALID_ARGUMENT', `compactChunkLive is a fraction from 0 to 1`);
  if (!Number.isInteger(t.seqReserveStep) || t.seqReserveStep < 1 || t.seqReserveStep > 2 ** 40) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `seqReserveStep must be an integer from 1 to 2^40`);
  }
  return t;
}
