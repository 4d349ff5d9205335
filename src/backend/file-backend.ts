import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { type Backend, checkRange, validKey } from './backend';
import type { FileHandle, FileIO } from '../io/file-io';
import { VbfsError, ioError } from '../errors';

/**
 * Objects as files under `root`; the '/' of a key becomes a subdirectory.
 *
 * put() is atomic and durable when it resolves, also across power loss:
 *   write `<name>.<pid>-<n>-<rand>.vbfs-tmp` in the target directory, fdatasync it, rename it over
 *   the final name, fsync the directory. A crash leaves either the old object (plus
 *   maybe a stray temp file, which list() ignores) or the new one, never a torn one.
 *   Directories created on the way are made durable by fsyncing their parents, or a
 *   crash could lose a whole subdirectory of durable objects.
 * Keys whose last part ends in the temp suffix are refused so list() stays exact.
 */
const TEMP_SUFFIX = '.vbfs-tmp';
const READ_HANDLES = 64;

interface CachedHandle {
  fh: FileHandle;
  users: number; // reads in flight on it
  doomed: boolean; // out of the cache: close when the last read ends
}

export class FileBackend implements Backend {
  readonly kind = 'file';
  private readonly root: string;
  private tempCounter = 0;
  private readonly handles = new Map<string, CachedHandle>();
  private readonly doomedHandles = new Map<FileHandle, CachedHandle>();
  /** Bumped by every put/delete of a key, so an open that raced one is not cached. */
  private readonly generation = new Map<string, number>();
  private closed = false;

  constructor(
    root: string,
    private readonly fileIO: FileIO,
  ) {
    this.root = path.resolve(root);
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    const file = this.pathOf(key);
    const dir = path.dirname(file);
    await this.ensureDir(dir);
    // Random too: a process that crashed earlier with the same pid (pids repeat after a
    // reboot) and counter may have left a temp file under the name pid-counter alone.
    const tmp = `${file}.${process.pid}-${++this.tempCounter}-${randomBytes(4).toString('hex')}${TEMP_SUFFIX}`;
    let fh: FileHandle | undefined;
    try {
      fh = await this.fileIO.open(tmp, 'wx');
      await fh.write(data, 0);
      await fh.datasync();
      await fh.close();
      fh = undefined;
      await this.fileIO.rename(tmp, file);
      this.forget(key); // a cached read handle would still see the replaced object
      await this.fileIO.fsyncDir(dir);
    } catch (err) {
      if (fh !== undefined) await fh.close().catch(() => {});
      await this.fileIO.unlink(tmp).catch(() => {});
      throw ioError(`backend put '${key}'`, err, { key, path: file });
    }
  }

  describe(key: string): string {
    return this.pathOf(key);
  }

  async get(key: string, offset = 0, length?: number): Promise<Buffer> {
    const file = this.pathOf(key);
    checkRange(offset, length);
    const fh = await this.readHandle(key, file);
    try {
      const want = length ?? Math.max(0, (await fh.size()) - offset);
      const buf = Buffer.allocUnsafe(want);
      const n = want === 0 ? 0 : await fh.read(buf, offset);
      return n === want ? buf : buf.subarray(0, n);
    } catch (err) {
      throw ioError(`backend get '${key}'`, err, { key, path: file });
    } finally {
      this.releaseHandle(key, fh);
    }
  }

  async getInto(key: string, offset: number, dst: Buffer): Promise<number> {
    const file = this.pathOf(key);
    checkRange(offset, dst.length);
    const fh = await this.readHandle(key, file);
    try {
      return dst.length === 0 ? 0 : await fh.read(dst, offset);
    } catch (err) {
      throw ioError(`backend get '${key}'`, err, { key, path: file });
    } finally {
      this.releaseHandle(key, fh);
    }
  }

  /**
   * Read handles are kept open (LRU, READ_HANDLES of them): objects are written once
   * and replaced only by rename, so a handle stays valid, and a cold read costs one
   * pread instead of open + fstat + pread + close. A handle is closed when it falls
   * out of the LRU (after its in-flight reads), on delete and put of its key, and on close().
   */
  private async readHandle(key: string, file: string): Promise<FileHandle> {
    const cached = this.handles.get(key);
    if (cached) {
      this.handles.delete(key);
      this.handles.set(key, cached);
      cached.users++;
      return cached.fh;
    }
    let fh: FileHandle;
    const gen = this.generation.get(key) ?? 0;
    try {
      fh = await this.fileIO.open(file, 'r');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') {
        throw new VbfsError('VBFS_NOT_FOUND', `backend object '${key}' not found`, { key, path: file });
      }
      throw ioError(`backend get '${key}'`, err, { key, path: file });
    }
    const raced = this.handles.get(key);
    if (raced) {
      // Count ourselves in before any await, or the raced handle could be evicted
      // and closed under us while we close our duplicate.
      raced.users++;
      void fh.close().catch(() => {});
      return raced.fh;
    }
    if ((this.generation.get(key) ?? 0) !== gen) {
      // A put or delete of this key ran while we opened: our handle may be of the
      // old object. Use it for this read only (it raced the change anyway), never cache it.
      const once: CachedHandle = { fh, users: 1, doomed: true };
      this.doomedHandles.set(fh, once);
      return fh;
    }
    this.handles.set(key, { fh, users: 1, doomed: false });
    while (this.handles.size > READ_HANDLES) {
      const [oldKey, old] = this.handles.entries().next().value as [string, CachedHandle];
      this.handles.delete(oldKey);
      old.doomed = true;
      if (old.users === 0) await old.fh.close().catch(() => {});
      else this.doomedHandles.set(old.fh, old);
    }
    return fh;
  }

  private releaseHandle(key: string, fh: FileHandle): void {
    const h = this.handles.get(key);
    const entry = h && h.fh === fh ? h : this.doomedHandles.get(fh);
    if (!entry) {
      void fh.close().catch(() => {});
      return;
    }
    entry.users--;
    if (entry.doomed && entry.users === 0) {
      this.doomedHandles.delete(fh);
      void fh.close().catch(() => {});
    }
  }

  private forget(key: string): void {
    this.generation.set(key, (this.generation.get(key) ?? 0) + 1);
    const h = this.handles.get(key);
    if (!h) return;
    this.handles.delete(key);
    h.doomed = true;
    if (h.users === 0) void h.fh.close().catch(() => {});
    else this.doomedHandles.set(h.fh, h);
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    this.forget(key);
    const dir = path.dirname(file);
    try {
      await this.fileIO.unlink(file);
      // Also after an unlink of a missing file: an earlier delete may have crashed
      // between unlink and fsyncDir, and this call promises durability.
      if ((await this.fileIO.stat(dir)) !== null) await this.fileIO.fsyncDir(dir);
    } catch (err) {
      throw ioError(`backend delete '${key}'`, err, { key, path: file });
    }
  }

  async removeEmpty(prefix: string): Promise<void> {
    const rel = prefix.replace(/\/+$/, '');
    validKey(rel);
    if ((await this.list(`${rel}/`)).length > 0) return; // not empty after all: keep it
    const dir = path.join(this.root, rel);
    try {
      if ((await this.fileIO.stat(dir)) === null) return;
      await this.fileIO.rmdir(dir); // only temp files of crashed puts can be left inside
      await this.fileIO.fsyncDir(path.dirname(dir));
    } catch (err) {
      throw ioError(`backend remove '${rel}'`, err, { path: dir });
    }
  }

  async list(prefix: string): Promise<string[]> {
    this.checkOpen();
    const out: string[] = [];
    try {
      await this.walk(this.root, '', prefix, out);
    } catch (err) {
      throw ioError(`backend list '${prefix}'`, err, { prefix, path: this.root });
    }
    return out.sort();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const key of [...this.handles.keys()]) this.forget(key);
  }

  private async walk(dir: string, keyPrefix: string, prefix: string, out: string[]): Promise<void> {
    for (const name of await this.fileIO.readdir(dir)) {
      if (name.endsWith(TEMP_SUFFIX)) continue;
      const key = keyPrefix + name;
      const st = await this.fileIO.stat(path.join(dir, name));
      if (st === null) continue; // removed while we were listing
      if (st.isDirectory) {
        const sub = key + '/';
        // Only descend where keys with this prefix can live.
        if (sub.startsWith(prefix) || prefix.startsWith(sub)) await this.walk(path.join(dir, name), sub, prefix, out);
      } else if (key.startsWith(prefix)) {
        out.push(key);
      }
    }
  }

  /**
   * Create `dir` and any missing parents, each made durable in its parent. Not cached:
   * a directory can disappear under us (volume deletion), and one stat per 4 MiB put
   * costs nothing.
   */
  private async ensureDir(dir: string): Promise<void> {
    const missing: string[] = [];
    try {
      for (let d = dir; ; d = path.dirname(d)) {
        const st = await this.fileIO.stat(d);
        if (st !== null) {
          if (!st.isDirectory) throw new VbfsError('VBFS_IO', `backend path ${d} is not a directory`, { path: d });
          break;
        }
        missing.push(d);
        if (d === path.dirname(d)) break;
      }
      if (missing.length > 0) {
        await this.fileIO.mkdir(dir);
        // Parents first: an entry is only reachable after a crash if its parent is.
        for (const d of missing.reverse()) await this.fileIO.fsyncDir(path.dirname(d));
      }
    } catch (err) {
      throw ioError(`backend mkdir ${dir}`, err, { path: dir });
    }
  }

  private pathOf(key: string): string {
    this.checkOpen();
    validKey(key);
    if (key.split('/').some((p) => p.endsWith(TEMP_SUFFIX))) {
      throw new VbfsError('VBFS_INVALID_ARGUMENT', `backend key '${key}' uses the reserved suffix ${TEMP_SUFFIX}`, { key });
    }
    return path.join(this.root, ...key.split('/'));
  }

  private checkOpen(): void {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'backend is closed');
  }
}

function errnoOf(err: unknown): string | undefined {
  if (err instanceof VbfsError) return err.details.errno as string | undefined;
  return (err as NodeJS.ErrnoException | undefined)?.code;
}
