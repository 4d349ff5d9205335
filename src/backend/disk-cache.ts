import { createHash } from 'node:crypto';
import { type Backend, type BackendCounters, checkRange, validKey } from './backend';
import type { FileHandle, FileIO } from '../io/file-io';
import { VbfsError, isVbfsError } from '../errors';
import { silentLogger, type Logger } from '../types';

/**
 * A local disk cache of chunk objects in front of a remote backend (S3), so warm
 * reads never touch the bucket. A Backend decorator: puts and deletes go through to
 * the backend, ranged reads of cacheable keys (chunk objects) are served from
 * `dir` when the cache holds them.
 *
 * Objects are cached in aligned pieces of `pieceBytes` (1 MiB), one file per piece:
 * a random 4 KiB read fetches (and keeps) one piece, not a whole 4 MiB chunk, and a
 * large read that misses fetches its pieces with one ranged GET each, in parallel.
 * A put also writes its pieces (write-through): freshly flushed data reads warm.
 *
 * Piece file `<dir>/<sha256(key)[0..32]>-<piece>`, mode 0600 (the FileIO), dir 0700:
 *
 *   0   8  magic "VBFSDC01"
 *   8   4  payload length (u32 LE; < pieceBytes only for an object's last piece)
 *   12  2  key length (u16 LE)
 *   14  2  zero
 *   16  k  key (UTF-8): a hash collision is caught, never served
 *   16+k   payload
 *
 * Crash safety: a piece is written to `.tmp-*` and renamed into place, and a file
 * whose size is not exactly header + key + payload length (or whose header is not
 * ours) is never served: it is deleted and fetched again. Pieces are not fsynced
 * (it is a cache): a file that lost its data in a power cut is caught by those
 * checks, and anything else by the chunk records' own CRCs, after which the reader
 * calls invalidate() and reads the bucket once more.
 *
 * Bounded in bytes (files counted whole), LRU. The index is rebuilt at open by one
 * readdir and a stat per file (LRU order from mtimes: reads do not touch mtimes, so
 * after a restart the order is by arrival); leftover temp files are removed.
 */
export interface DiskCacheOptions {
  dir: string;
  fileIO: FileIO;
  /** Bytes of piece files the cache keeps at most. */
  maxBytes: number;
  /** Piece size (default 1 MiB). Pieces of different sizes are never mixed in one directory: keep it fixed. */
  pieceBytes?: number;
  /** Keys worth caching (default: chunk objects, `.../chunks/...`; never mutable objects such as a lease). */
  cacheable?: (key: string) => boolean;
  logger?: Logger;
}

const MAGIC = Buffer.from('VBFSDC01');
const HEADER = 16;
const NAME_RE = /^([0-9a-f]{32})-(\d+)$/;
/**
 * Piece files kept open (LRU): a warm read is then one pread, not open + header
 * check + pread + close. 256 covers 256 MiB of hot pieces within a small part of
 * the usual 1024 descriptors.
 */
const READ_HANDLES = 256;

interface Entry {
  /** Whole file size (what the budget counts). */
  bytes: number;
}

interface OpenPiece {
  fh: FileHandle;
  /** Where the payload starts in the file, and its length (checked at open). */
  payloadAt: number;
  payload: number;
  users: number;
  doomed: boolean;
}

export class DiskCacheBackend implements Backend {
  readonly kind: string;
  readonly remote: boolean | undefined;
  readonly pieceBytes: number;
  readonly maxBytes: number;
  hits = 0;
  misses = 0;
  /** Bytes of piece files held. */
  bytes = 0;
  /** LRU order: oldest first (Map keeps insertion order; a hit moves an entry to the end). */
  private readonly entries = new Map<string, Entry>();
  /** Pieces held per key hash, so a put or delete drops them all. */
  private readonly byHash = new Map<string, Set<number>>();
  private readonly handles = new Map<string, OpenPiece>();
  /** Pieces being fetched: a second reader waits for the same GET. */
  private readonly fetching = new Map<string, Promise<Buffer>>();
  /** Piece files being written (close waits for them). */
  private readonly writing = new Set<Promise<void>>();
  /** Bumped per key hash by every put/delete/invalidate: a fetch that raced one is not stored. */
  private readonly generation = new Map<string, number>();
  private tempCounter = 0;
  private closed = false;
  private readonly cacheable: (key: string) => boolean;
  private readonly logger: Logger;

  /**
   * The inner backend's conditional create and server-stamped read, passed through
   * when it has them (S3): the lease and fencing (backend/lease.ts) need both, and
   * must not lose them because a cache sits in front. Defined only then, so a check
   * for the capability (`typeof b.createIfAbsent === 'function'`) sees the truth.
   */
  readonly createIfAbsent?: (key: string, data: Uint8Array) => Promise<boolean>;
  readonly getStamped?: (key: string) => Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }>;

  private constructor(
    readonly inner: Backend,
    private readonly dir: string,
    private readonly fileIO: FileIO,
    opts: DiskCacheOptions,
  ) {
    this.kind = inner.kind;
    this.remote = inner.remote;
    const conditional = inner as Backend & {
      createIfAbsent?: (key: string, data: Uint8Array) => Promise<boolean>;
      getStamped?: (key: string) => Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }>;
    };
    const createIfAbsent = conditional.createIfAbsent?.bind(inner);
    if (createIfAbsent) {
      this.createIfAbsent = async (key, data) => {
        this.checkOpen();
        // Whether or not it is created, no cached piece of an older object under this key is served.
        await this.drop(key);
        return createIfAbsent(key, data);
      };
    }
    const getStamped = conditional.getStamped?.bind(inner);
    if (getStamped) this.getStamped = (key) => getStamped(key);
    this.pieceBytes = opts.pieceBytes ?? 1024 * 1024;
    this.maxBytes = opts.maxBytes;
    this.cacheable = opts.cacheable ?? ((k) => k.includes('/chunks/'));
    this.logger = opts.logger ?? silentLogger;
    if (!Number.isSafeInteger(this.pieceBytes) || this.pieceBytes < 4096 || this.pieceBytes > 0xffffffff) {
      throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid disk cache piece size ${this.pieceBytes}`);
    }
    if (!Number.isSafeInteger(this.maxBytes) || this.maxBytes < 0)
      throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid diskCacheBytes: ${String(opts.maxBytes)}`);
  }

  /** Open the cache in `opts.dir` (created 0700 if missing) in front of `inner`; rebuilds the index from the files there. */
  static async open(inner: Backend, opts: DiskCacheOptions): Promise<DiskCacheBackend> {
    const c = new DiskCacheBackend(inner, opts.dir, opts.fileIO, opts);
    await c.scan();
    return c;
  }

  private async scan(): Promise<void> {
    await this.fileIO.mkdir(this.dir);
    const found: { name: string; bytes: number; mtime: number }[] = [];
    for (const name of await this.fileIO.readdir(this.dir)) {
      const file = `${this.dir}/${name}`;
      if (name.startsWith('.tmp-')) {
        await this.fileIO.unlink(file).catch(() => undefined); // a write cut short
        continue;
      }
      if (!NAME_RE.test(name)) continue;
      const st = await this.fileIO.stat(file);
      if (st === null || st.isDirectory) continue;
      if (st.size < HEADER) {
        await this.fileIO.unlink(file).catch(() => undefined);
        continue;
      }
      found.push({ name, bytes: st.size, mtime: st.mtimeMs ?? 0 });
    }
    found.sort((a, b) => a.mtime - b.mtime);
    for (const f of found) this.add(f.name, f.bytes);
    await this.evict();
  }

  describe(key: string): string {
    return this.inner.describe?.(key) ?? key;
  }

  counters(): BackendCounters {
    return { ...(this.inner.counters?.() ?? {}), diskCacheHits: this.hits, diskCacheMisses: this.misses, diskCacheBytes: this.bytes };
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    this.checkOpen();
    if (!this.cacheable(key) || this.maxBytes === 0) return this.inner.put(key, data);
    // Old pieces go first: whatever happens next, none of them is served for the new object.
    await this.drop(key);
    await this.inner.put(key, data);
    // Write-through, awaited: the caller may reuse `data` once put resolves. A
    // failure only costs the cache its copy.
    const h = hashOf(key);
    const gen = this.generation.get(h) ?? 0;
    const n = Math.max(1, Math.ceil(data.byteLength / this.pieceBytes));
    const writes: Promise<void>[] = [];
    for (let p = 0; p < n; p++) {
      const piece = Buffer.from(data.buffer, data.byteOffset + p * this.pieceBytes, Math.min(this.pieceBytes, data.byteLength - p * this.pieceBytes));
      writes.push(this.store(key, h, p, piece, gen));
    }
    await Promise.all(writes);
  }

  async delete(key: string): Promise<void> {
    this.checkOpen();
    await this.drop(key);
    await this.inner.delete(key);
  }

  async invalidate(key: string): Promise<void> {
    this.checkOpen();
    validKey(key);
    await this.drop(key);
    await this.inner.invalidate?.(key);
  }

  list(prefix: string): Promise<string[]> {
    return this.inner.list(prefix);
  }

  async removeEmpty(prefix: string): Promise<void> {
    await this.inner.removeEmpty?.(prefix);
  }

  async get(key: string, offset = 0, length?: number): Promise<Buffer> {
    this.checkOpen();
    validKey(key);
    checkRange(offset, length);
    // A whole-object read (length unknown) and zero-length probes go straight through.
    if (!this.cacheable(key) || this.maxBytes === 0 || length === undefined || length === 0) return this.inner.get(key, offset, length);
    const out = Buffer.allocUnsafe(length);
    const n = await this.fill(key, offset, out);
    return n === length ? out : out.subarray(0, n);
  }

  /**
   * get() into the caller's buffer (the reader's reused run buffers): a warm read is
   * then a pread straight into it. A fresh 1 MiB buffer per read cost the warm bench
   * page faults and a third more CPU per pass than the file backend, which reads
   * into the same reused buffers.
   */
  async getInto(key: string, offset: number, dst: Buffer): Promise<number> {
    this.checkOpen();
    validKey(key);
    checkRange(offset, dst.length);
    if (dst.length === 0) return 0;
    if (!this.cacheable(key) || this.maxBytes === 0) {
      if (this.inner.getInto) return this.inner.getInto(key, offset, dst);
      const got = await this.inner.get(key, offset, dst.length);
      return got.copy(dst, 0);
    }
    return this.fill(key, offset, dst);
  }

  /** Bytes [offset, offset + out.length) of `key` into `out`, piece by piece; how many (short at the object's end). */
  private async fill(key: string, offset: number, out: Buffer): Promise<number> {
    const length = out.length;
    const P = this.pieceBytes;
    const h = hashOf(key);
    const first = Math.floor(offset / P);
    const last = Math.floor((offset + length - 1) / P);
    // Each piece's bytes: from the disk, from a fetch in flight, or from a new fetch
    // (consecutive missing pieces are fetched in parallel, one ranged GET each).
    // Cached pieces are read straight into `out` (no copy); fetched ones are copied in.
    const parts: Promise<PiecePart>[] = [];
    let missed = false;
    for (let p = first; p <= last; p++) {
      const name = `${h}-${p}`;
      const inFlight = this.fetching.get(name);
      if (inFlight) {
        parts.push(inFlight.then(wholePiece));
      } else if (this.entries.has(name)) {
        parts.push(this.readPiece(key, h, p, name, offset, out));
      } else {
        missed = true;
        parts.push(this.fetchPiece(key, h, p, name).then(wholePiece));
      }
    }
    if (missed) this.misses++;
    else this.hits++;
    // Every part settled before we return or throw: a cached piece is read into `out`,
    // which may be a reused buffer the caller hands to another read after a failure.
    const settled = await Promise.allSettled(parts);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const got = settled.map((r) => (r as PromiseFulfilledResult<PiecePart>).value);
    // Assemble [offset, offset + length) from the pieces; an object ends at its first short piece.
    let n = 0;
    for (let p = first; p <= last; p++) {
      const part = got[p - first] as PiecePart;
      const pieceStart = p * P;
      const from = Math.max(offset, pieceStart) - pieceStart;
      const to = Math.min(offset + length - pieceStart, part.pieceLength);
      if (to > from) {
        part.data?.copy(out, n, from - part.at, to - part.at);
        n += to - from;
      }
      if (part.pieceLength < P) break;
    }
    return n;
  }

  /** Resolves when the pieces being written in the background are on disk (tests, benches). */
  async idle(): Promise<void> {
    while (this.writing.size > 0) await Promise.allSettled([...this.writing]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.writing]);
    for (const name of [...this.handles.keys()]) this.forgetHandle(name);
    await this.inner.close();
  }

  // ------------------------------------------------------------ pieces

  /** Fetch piece p of `key` from the backend and keep it (in the background). Resolves with the whole piece. */
  private fetchPiece(key: string, h: string, p: number, name: string): Promise<Buffer> {
    const gen = this.generation.get(h) ?? 0;
    const fetch = this.inner.get(key, p * this.pieceBytes, this.pieceBytes);
    this.fetching.set(name, fetch);
    const done = (): void => {
      if (this.fetching.get(name) === fetch) this.fetching.delete(name);
    };
    // The piece is written to disk in the background (the read does not wait for
    // it); until it is there, readers of the piece share the fetched bytes.
    fetch.then((buf) => {
      if (buf.length === 0) return done();
      const w = this.store(key, h, p, buf, gen).finally(() => {
        this.writing.delete(w);
        done();
      });
      this.writing.add(w);
    }, done);
    return fetch;
  }

  /** Bytes [offset, offset + length) ∩ piece p from its file, or null if the file is not usable (then fetched again). */
  private async readPiece(key: string, h: string, p: number, name: string, offset: number, out: Buffer): Promise<PiecePart> {
    const length = out.length;
    let op: OpenPiece | null = null;
    try {
      op = await this.openPiece(key, name);
      if (op === null) return wholePiece(await this.refetch(key, h, p, name));
      const entry = this.entries.get(name);
      if (entry) {
        this.entries.delete(name);
        this.entries.set(name, entry); // most recently used
      }
      const pieceStart = p * this.pieceBytes;
      const from = Math.max(offset, pieceStart) - pieceStart;
      const to = Math.min(offset + length - pieceStart, op.payload);
      const dst = pieceStart + from - offset;
      const buf = out.subarray(dst, dst + Math.max(0, to - from));
      const got = buf.length === 0 ? 0 : await op.fh.read(buf, op.payloadAt + from);
      if (got !== buf.length) {
        // Shorter than its header said: truncated under us. Not served.
        this.forgetHandle(name);
        await this.remove(name);
        return wholePiece(await this.refetch(key, h, p, name));
      }
      return { data: null, at: from, pieceLength: op.payload };
    } finally {
      if (op) this.releaseHandle(op);
    }
  }

  private refetch(key: string, h: string, p: number, name: string): Promise<Buffer> {
    return this.fetching.get(name) ?? this.fetchPiece(key, h, p, name);
  }

  /** An open, checked handle of piece `name` (kept open, LRU), or null if its file is missing or not a good piece of `key`. */
  private async openPiece(key: string, name: string): Promise<OpenPiece | null> {
    const cached = this.handles.get(name);
    if (cached) {
      this.handles.delete(name);
      this.handles.set(name, cached);
      cached.users++;
      return cached;
    }
    const file = `${this.dir}/${name}`;
    let fh: FileHandle;
    try {
      fh = await this.fileIO.open(file, 'r');
    } catch {
      this.forgetEntry(name); // evicted or removed under us
      return null;
    }
    const keyBytes = Buffer.from(key, 'utf8');
    const head = Buffer.alloc(HEADER + keyBytes.length);
    let ok: boolean;
    let payload = 0;
    try {
      const n = await fh.read(head, 0);
      payload = head.readUInt32LE(8);
      // The size from the index (stat at open, or what we wrote) saves an fstat.
      const size = this.entries.get(name)?.bytes ?? (await fh.size());
      ok =
        n === head.length &&
        head.subarray(0, 8).equals(MAGIC) &&
        head.readUInt16LE(12) === keyBytes.length &&
        head.subarray(HEADER).equals(keyBytes) &&
        size === HEADER + keyBytes.length + payload &&
        payload <= this.pieceBytes;
    } catch {
      ok = false;
    }
    if (!ok) {
      await fh.close().catch(() => undefined);
      this.logger.debug('disk cache: dropped a damaged or foreign piece file', { file });
      await this.remove(name);
      return null;
    }
    const raced = this.handles.get(name);
    if (raced) {
      raced.users++;
      void fh.close().catch(() => undefined);
      return raced;
    }
    const op: OpenPiece = { fh, payloadAt: HEADER + keyBytes.length, payload, users: 1, doomed: false };
    this.handles.set(name, op);
    while (this.handles.size > READ_HANDLES) {
      const [oldName] = this.handles.keys();
      this.forgetHandle(oldName as string);
    }
    return op;
  }

  private releaseHandle(op: OpenPiece): void {
    op.users--;
    if (op.doomed && op.users === 0) void op.fh.close().catch(() => undefined);
  }

  private forgetHandle(name: string): void {
    const op = this.handles.get(name);
    if (!op) return;
    this.handles.delete(name);
    op.doomed = true;
    if (op.users === 0) void op.fh.close().catch(() => undefined);
  }

  /** Write piece p of `key` (temp file + rename), unless a put/delete of the key came in between. */
  private async store(key: string, h: string, p: number, payload: Uint8Array, gen: number): Promise<void> {
    if (this.closed || payload.byteLength > this.maxBytes) return;
    const name = `${h}-${p}`;
    const keyBytes = Buffer.from(key, 'utf8');
    const head = Buffer.alloc(HEADER + keyBytes.length);
    MAGIC.copy(head, 0);
    head.writeUInt32LE(payload.byteLength, 8);
    head.writeUInt16LE(keyBytes.length, 12);
    keyBytes.copy(head, HEADER);
    const tmp = `${this.dir}/.tmp-${process.pid}-${++this.tempCounter}`;
    let fh: FileHandle | undefined;
    try {
      fh = await this.fileIO.open(tmp, 'wx');
      await fh.writev([head, payload], 0);
      await fh.close();
      fh = undefined;
      if (this.closed || (this.generation.get(h) ?? 0) !== gen) {
        await this.fileIO.unlink(tmp);
        return;
      }
      this.forgetHandle(name);
      await this.fileIO.rename(tmp, `${this.dir}/${name}`);
      if ((this.generation.get(h) ?? 0) !== gen) {
        // A put or delete of the key ran while we renamed: it may have missed this file.
        await this.remove(name);
        return;
      }
      this.forgetEntry(name);
      this.add(name, head.length + payload.byteLength);
      await this.evict();
    } catch (err) {
      if (fh) await fh.close().catch(() => undefined);
      await this.fileIO.unlink(tmp).catch(() => undefined);
      // A full or failing cache disk costs hits, not reads or writes.
      this.logger.debug('disk cache: could not keep a piece', { key, piece: p, error: String((err as Error)?.message ?? err) });
    }
  }

  private add(name: string, bytes: number): void {
    const m = NAME_RE.exec(name);
    if (!m) return;
    this.entries.set(name, { bytes });
    this.bytes += bytes;
    let set = this.byHash.get(m[1] as string);
    if (!set) this.byHash.set(m[1] as string, (set = new Set()));
    set.add(Number(m[2]));
  }

  private forgetEntry(name: string): void {
    const e = this.entries.get(name);
    if (!e) return;
    this.entries.delete(name);
    this.bytes -= e.bytes;
    const m = NAME_RE.exec(name);
    if (!m) return;
    const set = this.byHash.get(m[1] as string);
    set?.delete(Number(m[2]));
    if (set?.size === 0) this.byHash.delete(m[1] as string);
  }

  private async remove(name: string): Promise<void> {
    this.forgetEntry(name);
    this.forgetHandle(name);
    await this.fileIO.unlink(`${this.dir}/${name}`).catch((err: unknown) => {
      if (!(isVbfsError(err) && err.details['errno'] === 'ENOENT')) this.logger.debug('disk cache: could not remove a piece', { name, error: String(err) });
    });
  }

  /** Drop every piece of `key` (before a put or delete of it, or after damage). */
  private async drop(key: string): Promise<void> {
    const h = hashOf(key);
    this.generation.set(h, (this.generation.get(h) ?? 0) + 1);
    const pieces = this.byHash.get(h);
    if (!pieces) return;
    await Promise.all([...pieces].map((p) => this.remove(`${h}-${p}`)));
  }

  /** Least recently used pieces out until the cache fits its budget. */
  private async evict(): Promise<void> {
    const victims: string[] = [];
    let over = this.bytes - this.maxBytes;
    for (const [name, e] of this.entries) {
      if (over <= 0) break;
      victims.push(name);
      over -= e.bytes;
    }
    await Promise.all(victims.map((n) => this.remove(n)));
  }

  private checkOpen(): void {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'backend is closed');
  }
}

/** Bytes of one piece: `data` holds the piece's bytes [at, at + data.length) (null: already read into place); the piece is pieceLength long. */
interface PiecePart {
  data: Buffer | null;
  at: number;
  pieceLength: number;
}

function wholePiece(buf: Buffer): PiecePart {
  return { data: buf, at: 0, pieceLength: buf.length };
}

function hashOf(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 32);
}
