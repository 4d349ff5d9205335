import { VbfsError, isVbfsError } from '../errors';
import { chunkKey, verifyChunkRecord } from '../chunk/chunk';
import { FLAG_SEALED, RECORD_HEADER, SEAL_TAG_BYTES as TAG_BYTES } from '../format/block-record';
import type { CipherPool } from '../crypto/cipher-pool';
import { copyBytes } from '../format/bytes';
import { CACHED, EMPTY, HOT, PENDING, PERSISTED } from '../map/block-index';
import { openRecordPayload } from './record-payload';
import { RunBuffers } from './run-buffers';
import type { VolumeCore } from './volume-core';

const EMPTY_BUFFER = Buffer.alloc(0);

/** The error the inline path gives a record that fails authentication (record-payload.ts). */
function openFailed(key: string, offset: number, block: number, seq: number): VbfsError {
  return new VbfsError(
    'VBFS_CORRUPT',
    `chunk object ${key}: record at offset ${offset} (block ${block}, seq ${seq}) fails authentication: damaged, or moved from another block or volume`,
    { path: key, offset, block },
  );
}
/** Damaged records remembered so each is logged once (beyond this, one line says so). */
const DAMAGE_LOG_LIMIT = 10_000;
/**
 * Largest single backend read: a longer run (a large read, a readahead window) is
 * split into reads of this size that go out in parallel. Against S3 one GET
 * streams at the speed of one connection; several in flight fill the link.
 */
const MAX_RUN_BYTES = 1024 * 1024;
/** Readahead reads in flight at once (each up to MAX_RUN_BYTES). */
const MAX_READAHEADS = 16;
/** Sequential streams followed at once (a VM or a filesystem on the volume reads several files). */
const MAX_STREAMS = 8;

/**
 * One sequential reader: `end` is the last block it read, `ahead` the first block
 * after what readahead has covered for it.
 */
interface Stream {
  end: number;
  ahead: number;
}

/**
 * The read path: one index lookup per block. Hot and Pending blocks are copied
 * from the write buffer, Cached ones from the read cache, Empty ones are zeros,
 * and Persisted blocks that are adjacent records of one chunk object are fetched
 * with one ranged backend read (a run), verified record by record and kept in the
 * cache. Sequential reads start a readahead of the next window into the cache.
 * A record that fails verification is damage: the read fails with VBFS_CORRUPT
 * (EIO), logged once per record, and is never cached.
 */
export class Reader {
  private readonly damageLogged = new Set<string>();
  /** Sequential streams, most recently used last. */
  private readonly streams: Stream[] = [];
  /** Readahead reads in flight, and the first block after what readahead has covered. */
  private readonly readaheads = new Set<{ start: number; end: number; done: Promise<void> }>();
  /** Buffers the runs are read into, reused (run-buffers.ts). */
  // As many per size class as can be in flight at once (every readahead plus a few
  // requests): a buffer dropped and allocated again is fresh memory, whose first touch
  // costs ~4 ms of CPU per MiB on this kind of VM.
  readonly runBuffers = new RunBuffers(MAX_READAHEADS + 4);

  constructor(
    private readonly core: VolumeCore,
    /** Called after every backend read (dead chunks wait until no read may be using them). */
    private readonly afterBackendRead: () => void,
  ) {}

  /** Read `out.length` bytes at `offset` (already checked) into `out`. */
  async readInto(offset: number, out: Buffer): Promise<void> {
    const { index, arena, cache, blockSize: bs, tunables } = this.core;
    const length = out.length;
    const c = this.core.counters;
    c.reads++;
    c.readBytes += length;
    this.core.lastIo = performance.now();
    if (length === 0) return;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const stream = this.streamOf(first, last);
    const sequential = stream !== null;
    // Readaheads in flight over these blocks: wait for them rather than read them twice.
    const overlapping: Promise<void>[] = [];
    for (const ra of this.readaheads) if (first < ra.end && last >= ra.start) overlapping.push(ra.done);
    if (overlapping.length > 0) await Promise.all(overlapping);
    let runStart = -1;
    const fetches: Promise<void>[] = [];
    const maxRun = Math.max(1, Math.floor(MAX_RUN_BYTES / bs));
    const flushRun = (endExclusive: number, readahead: boolean): void => {
      if (runStart < 0) return;
      // A long run goes out as several ranged reads in parallel.
      for (let b = runStart; b < endExclusive; b += maxRun) {
        const e = Math.min(endExclusive, b + maxRun);
        fetches.push(this.readRun(b, e, e, out, offset));
      }
      if (readahead) this.startReadahead(stream as Stream, endExclusive);
      runStart = -1;
    };
    for (let b = first; b <= last; b++) {
      const st = index.state(b);
      if (st === PERSISTED) {
        if (runStart >= 0 && !this.contiguous(b - 1, b)) flushRun(b, false);
        if (runStart < 0) runStart = b;
        continue;
      }
      flushRun(b, false);
      const [from, to, dst] = this.clip(b, offset, length);
      if (st === HOT || st === PENDING) {
        arena.copyOut(this.plainSlot(index.slot(b)), out, dst, from, to);
      } else if (st === CACHED) {
        if (!cache.copyOut(b, out, dst, from, to)) fetches.push(this.readRun(b, b + 1, b + 1, out, offset));
      } else {
        out.fill(0, dst, dst + (to - from));
      }
    }
    const ahead = sequential && tunables.readaheadBytes > 0;
    if (runStart >= 0) flushRun(last + 1, ahead);
    else if (ahead) this.startReadahead(stream, last + 1);
    if (fetches.length > 0) {
      // Wait for every fetch, failed or not: `out` may be the kernel's buffer, which
      // must not be written after our promise settles (and the reply is sent).
      const results = await Promise.allSettled(fetches);
      for (const r of results) {
        if (r.status === 'rejected') {
          if (isVbfsError(r.reason, 'VBFS_CORRUPT')) c.corruptReads++;
          throw r.reason;
        }
      }
    }
  }

  /**
   * `slot`, its plaintext in place: a block sealed inline straight from the
   * writer's buffer has only its sealed payload in the slot (arena.ts,
   * plainMissing), opened (authenticated) into the slot on its first read.
   */
  private plainSlot(slot: number): number {
    const { arena, cipher, blockSize: bs } = this.core;
    if (arena.hasPlain(slot)) return slot;
    const sealed = arena.packedOf(slot) as Buffer;
    const h = { len: sealed.length, seq: arena.seqOf(slot), block: arena.blockOf(slot), flags: arena.recordFlags(slot), rawLen: bs };
    const { data, base } = openRecordPayload(cipher, h, sealed, 0, bs, { path: 'write buffer', offset: 0 });
    arena.copyIn(slot, data, base);
    arena.setPlainMissing(slot, false);
    return slot;
  }

  /** The block's current bytes if they are in memory (arena or cache); null if it is Empty, undefined if only on the backend. */
  inMemoryBlock(block: number): Buffer | null | undefined {
    const { index } = this.core;
    const st = index.state(block);
    if (st === EMPTY) return null;
    if (st === HOT || st === PENDING) return this.core.arena.view(this.plainSlot(index.slot(block)));
    if (st === CACHED) return this.core.cache.view(block);
    return undefined;
  }

  /** The block's bytes from its chunk (a read-modify-write of a block not in memory). */
  async fetchBlock(block: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(this.core.blockSize);
    await this.readRun(block, block + 1, block + 1, out, block * this.core.blockSize);
    return out;
  }

  /** Where block b's bytes go: [from, to) within the block, at out[dst]. */
  private clip(b: number, offset: number, length: number): [number, number, number] {
    const bs = this.core.blockSize;
    const start = b * bs;
    const from = Math.max(offset, start) - start;
    const to = Math.min(offset + length, start + bs) - start;
    return [from, to, start + from - offset];
  }

  /**
   * The sequential stream a read of [first, last] continues, or null (and it may
   * start one). A read continues a stream if it starts at most two request sizes
   * before or one after where the stream's furthest read ended: the kernel splits a large
   * read into 128 KiB requests and, with several in flight, they can arrive out of
   * order; a read that lands just behind a stream's end is still that stream.
   * Several streams are followed at once, so interleaved sequential readers each
   * keep their readahead.
   */
  private streamOf(first: number, last: number): Stream | null {
    const n = last - first + 1;
    const list = this.streams;
    for (let i = list.length - 1; i >= 0; i--) {
      const st = list[i] as Stream;
      if (first < st.end + 1 - 2 * n || first > st.end + 1 + n) continue;
      if (last > st.end) st.end = last;
      if (i !== list.length - 1) {
        list.splice(i, 1);
        list.push(st);
      }
      return st;
    }
    // Not sequential (yet): remember it as a possible stream start.
    if (list.length >= MAX_STREAMS) list.shift();
    list.push({ end: last, ahead: 0 });
    return null;
  }

  /** b and b+1 are adjacent records of the same chunk: one backend read covers both. */
  private contiguous(a: number, b: number): boolean {
    return this.core.index.contiguous(a, b);
  }

  /**
   * Sequential reads: keep the next readaheadBytes after `from` being fetched into
   * the cache in the background, so the request that triggered it does not wait
   * for it and the next requests find their blocks cached (or wait for these
   * fetches instead of issuing their own). Only what is not covered yet is
   * fetched, as runs of blocks adjacent in one chunk, up to MAX_RUN_BYTES each and
   * MAX_READAHEADS in flight: a stream of reads keeps a window of parallel fetches
   * ahead of it (what makes a remote backend fast). Errors are ignored (the read
   * that needs the block fetches it again and reports).
   */
  private startReadahead(stream: Stream, from: number): void {
    const { index, tunables, blockCount } = this.core;
    if (tunables.cacheBytes < tunables.readaheadBytes) return;
    const bs = this.core.blockSize;
    const window = Math.floor(tunables.readaheadBytes / bs);
    const maxRun = Math.max(1, Math.floor(MAX_RUN_BYTES / bs));
    const limit = Math.min(blockCount, from + window);
    // Continue where the last readahead stopped if it is inside this window; start over after a jump.
    let b = stream.ahead > from && stream.ahead <= limit ? stream.ahead : from;
    while (b < limit && this.readaheads.size < MAX_READAHEADS) {
      if (index.state(b) !== PERSISTED) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < limit && e - b < maxRun && index.state(e) === PERSISTED && this.contiguous(e - 1, e)) e++;
      const ra = {
        start: b,
        end: e,
        done: this.readRun(b, b, e, EMPTY_BUFFER, b * bs)
          .catch(() => undefined)
          .finally(() => {
            this.readaheads.delete(ra);
          }),
      };
      this.readaheads.add(ra);
      b = e;
    }
    stream.ahead = b;
  }

  /**
   * Fetch blocks [b0, fetchEnd) with one ranged backend read; copy [b0, outEnd)
   * into `out`, and keep verified blocks in the read cache (the readahead part only
   * goes to the cache).
   */
  private async readRun(b0: number, outEnd: number, fetchEnd: number, out: Buffer, offset: number, refetched = false): Promise<void> {
    const core = this.core;
    const ix = core.index;
    const chunk = ix.persistedChunk(b0);
    const start = ix.persistedOff(b0);
    const lastB = fetchEnd - 1;
    const end = ix.persistedOff(lastB) + RECORD_HEADER + ix.persistedLen(lastB);
    const seqs: number[] = [];
    for (let b = b0; b < fetchEnd; b++) seqs.push(ix.persistedSeq(b));
    const key = chunkKey(core.info.id, chunk);
    core.readsInFlight++;
    // Given back once no view of it is in use: after the loop below, or on a failure
    // other than a timeout (a read given up on may still write into it).
    const whole = this.runBuffers.take(end - start);
    let buf: Buffer;
    try {
      buf = await this.fetch(key, start, whole.subarray(0, end - start));
    } catch (err) {
      if (!isVbfsError(err, 'VBFS_IO') || err.details['timedOut'] !== true) this.runBuffers.give(whole);
      core.counters.errors++;
      throw err;
    } finally {
      core.readsInFlight--;
    }
    try {
      return await this.openRun(b0, outEnd, fetchEnd, out, offset, refetched, buf, key, start, seqs);
    } finally {
      this.runBuffers.give(whole);
    }
  }

  /** The records of a fetched run: verify, open, copy out, cache (readRun). */
  private async openRun(
    b0: number,
    outEnd: number,
    fetchEnd: number,
    out: Buffer,
    offset: number,
    refetched: boolean,
    buf: Buffer,
    key: string,
    start: number,
    seqs: number[],
  ): Promise<void> {
    const core = this.core;
    // A readahead run (nothing to copy out: no request waits for it) is opened in the
    // crypto worker, so the event loop answers requests meanwhile; so is a very large
    // run a request waits for. A request's ordinary run is opened inline: the request
    // waits for it either way, and a trip to the worker only adds latency (measured:
    // on a loaded machine each trip can wait milliseconds for a core).
    const background = outEnd <= b0;
    const pooled =
      core.cipherPool !== null && fetchEnd - b0 >= 2 && (background || fetchEnd - b0 >= core.tunables.cryptoBatchBlocks)
        ? await this.openInPool(buf, b0, fetchEnd, seqs, key, start)
        : null;
    if (pooled) buf = pooled.buf;
    try {
      return await this.openRecords(b0, outEnd, fetchEnd, out, offset, refetched, buf, key, start, seqs, pooled);
    } finally {
      // Nothing below keeps a view of the opened run: the cache and `out` get copies.
      if (pooled) (core.cipherPool as CipherPool).giveBack(pooled.buf);
    }
  }

  private async openRecords(
    b0: number,
    outEnd: number,
    fetchEnd: number,
    out: Buffer,
    offset: number,
    refetched: boolean,
    buf: Buffer,
    key: string,
    start: number,
    seqs: number[],
    pooled: { buf: Buffer; ok: Uint8Array; checked: number } | null,
  ): Promise<void> {
    const core = this.core;
    const ix = core.index;
    const bs = core.blockSize;
    let at = 0;
    for (let b = b0; b < fetchEnd; b++) {
      const seq = seqs[b - b0] as number;
      let data: Buffer;
      let base: number;
      const len = buf.length >= at + 8 ? buf.readUInt32LE(at + 4) : 0;
      try {
        if (pooled && b - b0 < pooled.checked) {
          // Checked (CRC, identity) before the worker opened it: the payload is now plaintext.
          const flags = buf.readUInt32LE(at + 24);
          if (pooled.ok[b - b0] !== 1) throw openFailed(key, start + at, b, seq);
          ({ data, base } = openRecordPayload(
            null,
            { len: len - TAG_BYTES, seq, block: b, flags: flags & ~FLAG_SEALED, rawLen: bs },
            buf,
            at + RECORD_HEADER,
            bs,
            {
              path: key,
              label: `chunk object ${key}`,
              offset: start + at,
            },
          ));
        } else {
          const flags = verifyChunkRecord(buf, at, b, seq, bs, key, start + at);
          // Raw payloads are used in place in the run buffer: no copy, no allocation per block.
          // Sealed ones are authenticated and decrypted here (the cache holds plaintext);
          // a payload that fails, or that LZ4 rejects, is damage: never data.
          ({ data, base } = openRecordPayload(core.cipher, { len, seq, block: b, flags, rawLen: bs }, buf, at + RECORD_HEADER, bs, {
            path: key,
            label: `chunk object ${key}`,
            offset: start + at,
          }));
        }
      } catch (err) {
        if (!refetched && core.ctx.backend.invalidate && (isVbfsError(err, 'VBFS_CORRUPT') || !isVbfsError(err))) {
          // Damage may be in a local copy (the disk chunk cache): drop it and read
          // the object itself once more; damage there too is reported below.
          await core.ctx.backend.invalidate(key);
          return this.readRun(b0, outEnd, fetchEnd, out, offset, true);
        }
        core.counters.errors++;
        throw this.damaged(err, key);
      }
      if (b < outEnd) {
        const [from, to, dst] = this.clip(b, offset, out.length);
        copyBytes(data, out, dst, base + from, base + to);
      }
      // Cache only if the block still has exactly this version and no newer in-memory one.
      if (ix.persistedSeq(b) === seq && ix.state(b) === PERSISTED && core.cache.set(b, data, base)) ix.setCached(b, true);
      at += RECORD_HEADER + len;
    }
    this.afterBackendRead();
  }

  /**
   * One ranged backend read, failed with VBFS_IO (EIO) if it has no answer within
   * backendReadTimeoutMs (0: no limit here, the backend's own deadline applies): a
   * read of data that is only in an unreachable bucket never hangs. A late answer
   * is dropped: nothing is copied into the caller's buffer after we gave up.
   */
  private fetch(key: string, offset: number, dst: Buffer): Promise<Buffer> {
    const { ctx, tunables } = this.core;
    const length = dst.length;
    const backend = ctx.backend;
    const get = backend.getInto ? backend.getInto(key, offset, dst).then((n) => (n === length ? dst : dst.subarray(0, n))) : backend.get(key, offset, length);
    const ms = tunables.backendReadTimeoutMs;
    if (ms <= 0) return get;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new VbfsError('VBFS_IO', `read of ${ctx.backend.describe?.(key) ?? key} got no answer within ${ms} ms (backend down?)`, {
            key,
            offset,
            length,
            timedOut: true,
          }),
        );
      }, ms);
      get.then(
        (b) => {
          clearTimeout(timer);
          resolve(b);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  /**
   * Open a run's sealed records in the crypto worker (cipher-pool.ts). Each record's
   * CRC and identity are checked here first, as the inline path does, up to the
   * first that fails (`checked`: the records before it; the caller meets the failure
   * again when it reaches that record). Returns the opened copy of the run.
   */
  private async openInPool(
    run: Buffer,
    b0: number,
    end: number,
    seqs: number[],
    key: string,
    start: number,
  ): Promise<{ buf: Buffer; ok: Uint8Array; checked: number } | null> {
    const bs = this.core.blockSize;
    const n = end - b0;
    const meta = new Float64Array(3 * n);
    const offs = new Uint32Array(n);
    const lens = new Uint32Array(n);
    let k = 0;
    for (let at = 0; k < n; k++) {
      const b = b0 + k;
      let flags: number;
      try {
        flags = verifyChunkRecord(run, at, b, seqs[k] as number, bs, key, start + at);
      } catch {
        break;
      }
      if ((flags & FLAG_SEALED) === 0) break; // refused by the inline path, with its reason
      const len = run.readUInt32LE(at + 4);
      meta[3 * k] = b;
      meta[3 * k + 1] = seqs[k] as number;
      meta[3 * k + 2] = flags;
      offs[k] = at + RECORD_HEADER;
      lens[k] = len;
      at += RECORD_HEADER + len;
    }
    if (k === 0) return null;
    const r = await (this.core.cipherPool as CipherPool).open(run, meta.subarray(0, 3 * k), offs.subarray(0, k), lens.subarray(0, k));
    return { ...r, checked: k };
  }

  /**
   * A record that failed verification: log it once per object and offset (every
   * read of the block meets it again, and a flood of identical lines would bury
   * other messages), and mark the error as logged for the callers. The damaged
   * record is never cached, so each read of it fails the same way.
   */
  private damaged(err: unknown, key: string): unknown {
    if (!isVbfsError(err, 'VBFS_CORRUPT')) return err;
    const { ctx, name } = this.core;
    const offset = err.details['offset'];
    const id = `${key}@${String(offset)}`;
    // Marked as logged in every branch: beyond the limit, one line has said so.
    err.details['logged'] = true;
    if (this.damageLogged.has(id)) return err;
    if (this.damageLogged.size < DAMAGE_LOG_LIMIT) {
      this.damageLogged.add(id);
      const file = ctx.backend.describe?.(key) ?? key;
      ctx.logger.error(
        `damaged data in ${file} at offset ${String(offset)}: reads of block ${String(err.details['block'])} fail with an I/O error (${err.message})`,
        {
          volume: name,
          file,
          offset,
          block: err.details['block'],
        },
      );
    } else if (this.damageLogged.size === DAMAGE_LOG_LIMIT) {
      this.damageLogged.add('(limit)');
      ctx.logger.error(`more than ${DAMAGE_LOG_LIMIT} damaged records in volume '${name}': further ones are not logged individually`, { volume: name });
    }
    return err;
  }
}
