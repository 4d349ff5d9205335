/**
 * The FUSE handlers: a flat directory with one fixed-size file per volume plus the
 * read-only `.stats`. This file does not import fuse-native (mount.ts does), so the
 * handlers can be driven directly by tests without a kernel.
 *
 * Rules every handler follows (from how fuse-native 2.2.6 behaves):
 *  - errors go to the kernel as negative errno (errno.ts has the one table);
 *    `read`/`write` answer with a byte count, never `cb(null)`;
 *  - the kernel's buffer is only valid until `cb` is called, so it is handed to the
 *    engine without a copy and `cb` comes only after the engine's promise settles:
 *    a write's data is read (into the arena and the WAL buffer) before then, a read
 *    fills the buffer in place (readInto) before then (the contract is in
 *    store/ports.ts);
 *  - a callback is called exactly once and never throws back into fuse-native,
 *    whatever the handler does: ops() wraps every handler so that a synchronous
 *    throw still answers (EIO) and a second answer is dropped (fuse-native posts
 *    a per-thread semaphore: a stray second post could answer that thread's next
 *    request with this one's result).
 *    An unanswered request leaves its caller in D state until the process exits.
 *  - what a reply needs travels with the request (the handle holds its volume
 *    entry): shutdown empties the volume map while requests are still in flight.
 *
 * Why one file of ~650 lines: every handler must follow the rules above, and a
 * reviewer checks that by reading the handlers side by side; the pieces that do not
 * need the rules (errno table, stats text, types) are already in their own files.
 */
import * as fsp from 'node:fs/promises';
import { constants } from 'node:fs';
import type { KeyMaterial } from '../crypto/key-source';
import { VbfsError, isVbfsError } from '../errors';
import type { Logger } from '../types';
import { errno, toErrno } from './errno';
import { renderStats } from './stats-file';
import type { MountableStore, MountableVolume } from '../store/ports';
import type { ErrCb, FuseOps, FuseStat, FuseStatfs, ValueCb } from './types';

/* eslint-disable @typescript-eslint/only-throw-error -- handlers throw a negative errno (`throw errno.ENOENT`) as a deliberate answer: call() replies with a thrown number as is and counts only other throws as failures */

export const STATS_NAME = '.stats';
const S_IFDIR = 0o040000;
/** fallocate(2) mode bits (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
const S_IFREG = 0o100000;
const O_ACCMODE = 3;
/** Re-read the volume list at most this often when a lookup misses. */
const RESCAN_MS = 250;
/** An operation slower than this is logged (fuse-native timeouts are off, see mount.ts). */
const SLOW_OP_MS = 10_000;

interface VolumeEntry {
  vol: MountableVolume;
  mtimeMs: number;
}

/**
 * An open file. A volume handle holds its entry, not a name to look up again: the
 * entry outlives closeVolumes(), so a reply never depends on the volume map.
 */
type Handle =
  | { kind: 'stats'; text: Buffer } // snapshot taken at open, so one `cat` sees one consistent text
  | {
      kind: 'volume';
      entry: VolumeEntry;
      writable: boolean;
      deferredError: number; // first error since the last flush, reported again by close()
    };

/** A FUSE callback; `read`/`write` pass a byte count or a negative errno as `err`. */
type Cb<V> = (err: number, value?: V) => void;
/** A callback that goes through once; `answered` tells whether it has. */
type Answer<V> = Cb<V> & { answered: boolean };

export interface VolumeFsOptions {
  store: MountableStore;
  storeDir: string;
  logger: Logger;
  readOnly?: boolean;
  /** Open options for every volume (durability override, tunables). */
  openOptions?: Record<string, unknown>;
  /** Key of the encrypted volumes (only they get it). Missing or not theirs: that volume is not served. */
  key?: KeyMaterial;
}

export class VolumeFs {
  private readonly store: MountableStore;
  private readonly storeDir: string;
  private readonly log: Logger;
  private readonly readOnly: boolean;
  private readonly openOptions: Record<string, unknown>;
  private readonly volumes = new Map<string, VolumeEntry>();
  private readonly opening = new Map<string, Promise<VolumeEntry | null>>();
  /** Volumes that failed to open because they are damaged: not served (no file), reason logged once. */
  private readonly damaged = new Map<string, { id: string | undefined; why: string }>();
  /** Names of the encrypted volumes in the last listing: only they are given the key. */
  private knownEncrypted = new Set<string>();
  private readonly key: KeyMaterial | undefined;
  private knownIds = new Map<string, string>();
  private readonly handles = new Map<number, Handle>();
  private readonly inflight = new Map<number, { op: string; path: string; start: number }>();
  private readonly mountTime = new Date();
  private knownNames: string[] = [];
  private lastScan = 0;
  private scanning: Promise<void> | null = null;
  private nextFd = 1;
  private nextOpId = 1;
  private fuseErrors = 0;
  private accepting = true;
  private closed = false;
  private readonly uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  private readonly gid = typeof process.getgid === 'function' ? process.getgid() : 0;
  private slowTimer: NodeJS.Timeout | null = null;

  constructor(opts: VolumeFsOptions) {
    this.store = opts.store;
    this.storeDir = opts.storeDir;
    this.log = opts.logger;
    this.readOnly = opts.readOnly === true;
    this.openOptions = { ...(opts.openOptions ?? {}), ...(this.readOnly ? { readOnly: true } : {}) };
    this.key = opts.key;
  }

  /** Open every volume of the store up front; they stay open (locked) until close(). */
  async openAll(): Promise<void> {
    this.closed = false; // a failed attempt closed what it had opened; this is a new one
    await this.rescan(true);
    try {
      for (const name of this.knownNames) {
        const entry = await this.openVolume(name);
        if (entry === null && !this.damaged.has(name)) throw new Error(`volume ${name} disappeared while mounting`);
      }
      // A key that opens none of the encrypted volumes is a mistake (a wrong file, a
      // stale variable), not a choice: refuse the mount rather than serve none of them.
      const encrypted = this.knownNames.filter((n) => this.knownEncrypted.has(n));
      if (this.key && encrypted.length > 0 && !encrypted.some((n) => this.volumes.has(n))) {
        throw new VbfsError('VBFS_BAD_KEY', `the key from ${this.key.source} opens none of the encrypted volumes (${encrypted.join(', ')})`);
      }
    } catch (err) {
      await this.closeVolumes().catch(() => undefined);
      throw err;
    }
    this.slowTimer = setInterval(() => this.reportSlowOps(), 5000);
    this.slowTimer.unref();
  }

  /** New opens fail with EBUSY while a shutdown is being attempted. */
  setAccepting(on: boolean): void {
    this.accepting = on;
  }

  openHandleCount(): number {
    return this.handles.size;
  }

  openVolumes(): MountableVolume[] {
    return [...this.volumes.values()].map((e) => e.vol);
  }

  /** fsync every open volume (before an unmount attempt: cheap insurance). */
  async syncAll(): Promise<void> {
    await Promise.all(this.openVolumes().map((v) => v.fsync()));
  }

  /** Close every volume: flush, sync, checkpoint, release locks. Idempotent. */
  async closeVolumes(): Promise<void> {
    this.closed = true;
    if (this.slowTimer) clearInterval(this.slowTimer);
    await Promise.all([...this.opening.values()].map((p) => p.catch(() => null)));
    const entries = [...this.volumes.entries()];
    this.volumes.clear();
    const errors: unknown[] = [];
    await Promise.all(
      entries.map(async ([name, e]) => {
        try {
          await e.vol.close();
          this.log.info('volume closed', { volume: name });
        } catch (err) {
          this.log.error(`closing volume ${name} failed: ${(err as Error).message}`, { volume: name });
          errors.push(err);
        }
      }),
    );
    if (errors.length) throw errors[0];
  }

  statsText(): string {
    return renderStats(
      { uptimeSeconds: (Date.now() - this.mountTime.getTime()) / 1000, openHandles: this.handles.size, fuseErrors: this.fuseErrors },
      [...this.volumes.values()].map((e) => ({
        name: e.vol.name,
        durability: e.vol.durability,
        size: e.vol.size,
        stats: e.vol.stats(),
      })),
    );
  }

  // ---- volume discovery ------------------------------------------------------

  /** Re-read the store's volume list (volumes created while mounted appear here). */
  private rescan(force = false): Promise<void> {
    // A forced rescan must not reuse a listing that started before the caller asked.
    if (this.scanning) return force ? this.scanning.then(() => this.rescan(true)) : this.scanning;
    if (!force && Date.now() - this.lastScan < RESCAN_MS) return Promise.resolve();
    this.scanning = this.store
      .listVolumes()
      .then((list) => {
        this.knownNames = list.map((v) => v.name).sort();
        this.knownIds = new Map(list.map((v) => [v.name, v.id]));
        this.knownEncrypted = new Set(list.filter((v) => v.encrypted).map((v) => v.name));
        // A damaged volume deleted (and maybe created again: a new id) since: look at it afresh.
        for (const [n, d] of this.damaged) if (this.knownIds.get(n) !== d.id) this.damaged.delete(n);
        this.lastScan = Date.now();
      })
      .finally(() => {
        this.scanning = null;
      });
    return this.scanning;
  }

  private openVolume(name: string): Promise<VolumeEntry | null> {
    const open = this.volumes.get(name);
    if (open) return Promise.resolve(open);
    if (this.closed) return Promise.resolve(null);
    let p = this.opening.get(name);
    if (!p) {
      const opts = this.key && this.knownEncrypted.has(name) ? { ...this.openOptions, key: this.key } : this.openOptions;
      p = this.store
        .openVolume(name, opts)
        .then((vol) => {
          const entry = { vol, mtimeMs: Date.now() };
          if (this.closed) {
            // Shutdown started while we were opening: do not leak the lock.
            return vol.close().then(() => null);
          }
          this.volumes.set(name, entry);
          this.log.info('volume opened', { volume: name, size: vol.size, durability: vol.durability });
          return entry;
        })
        .catch((err: unknown) => {
          // One damaged volume must not take the others down: serve no file for it.
          // Nor must an encrypted one this mount has no key for (or another key).
          const locked = isVbfsError(err, 'VBFS_KEY_REQUIRED') || isVbfsError(err, 'VBFS_BAD_KEY');
          if (!isDamage(err) && !locked) throw err;
          const why = (err as Error).message;
          this.damaged.set(name, { id: this.knownIds.get(name), why });
          const code = (err as { code?: string }).code;
          if (locked) {
            const hint = this.key ? 'it takes another key' : 'mount with --key-file or --key-env to serve it';
            this.log.warn(`volume ${name} is encrypted and not served: ${hint}`, { volume: name, code });
          } else {
            this.log.warn(`volume ${name} is damaged and not served: ${why}`, { volume: name, code });
          }
          return null;
        })
        .finally(() => this.opening.delete(name));
      this.opening.set(name, p);
    }
    return p;
  }

  /** The volume for a path like '/name', opening it if it was created after mount. */
  private async lookup(path: string): Promise<VolumeEntry | null> {
    const name = path.slice(1);
    if (!name || name.includes('/')) return null;
    const open = this.volumes.get(name);
    if (open) return open;
    await this.rescan(); // also forgets a damaged volume that was deleted since
    if (!this.knownNames.includes(name)) {
      // Not in a recent listing: it may have been created since (`vbfs create` while
      // mounted prints the path and users stat it right away). Look once more, fresh.
      await this.rescan(true);
      if (!this.knownNames.includes(name)) return null;
    }
    if (this.damaged.has(name)) return null;
    return this.openVolume(name);
  }

  // ---- plumbing --------------------------------------------------------------

  /**
   * `cb` wrapped to go through exactly once and never throw into fuse-native: a
   * second call is logged and dropped, a throwing fuse-native callback is logged.
   */
  private once<V>(op: string, path: string, cb: Cb<V>): Answer<V> {
    // Already wrapped (ops() wraps every handler, call() runs inside one): reuse it.
    if ((cb as Partial<Answer<V>>).answered === false) return cb as Answer<V>;
    const answer = ((...args: Parameters<Cb<V>>) => {
      if (answer.answered) {
        this.log.error(`fuse reply for ${op} ${path} sent twice: dropped (bug)`, { op, path });
        return;
      }
      answer.answered = true;
      try {
        cb(...args);
      } catch (err) {
        this.log.error(`fuse callback for ${op} threw: ${(err as Error)?.message ?? String(err)}`, { op, path });
      }
    }) as Answer<V>;
    answer.answered = false;
    return answer;
  }

  /**
   * Run an async handler and answer exactly once: `reply` turns the result into
   * the answer; if it throws or returns without answering, the kernel gets EIO.
   * Failures answer `cb(errno)` after `onError` (which must not throw either, but
   * is guarded the same way). Engine errors are counted and logged, unless the
   * engine has logged them already (`details.logged`: damaged data is reported
   * once by the volume, not once per request that meets it).
   */
  private call<T, V>(op: string, path: string, cb: Cb<V>, fn: () => Promise<T>, reply: (v: T, answer: Cb<V>) => void, onError?: (errno: number) => void): void {
    const answer = this.once(op, path, cb);
    const id = this.nextOpId++;
    this.inflight.set(id, { op, path, start: Date.now() });
    let p: Promise<T>;
    try {
      p = fn();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (v) => {
        this.inflight.delete(id);
        try {
          reply(v, answer);
        } catch (err) {
          this.fuseErrors++;
          this.log.error(`reply to ${op} ${path} threw: ${(err as Error)?.message ?? String(err)}`, { op, path });
        }
        if (!answer.answered) answer(errno.EIO);
      },
      (err: unknown) => {
        this.inflight.delete(id);
        const n = typeof err === 'number' ? err : toErrno(err);
        if (typeof err !== 'number') {
          // Counted: engine failures. Not counted: deliberate answers such as
          // ENOENT for a lookup of a name that is not a volume.
          this.fuseErrors++;
          if (!(isVbfsError(err) && err.details['logged'] === true)) {
            this.log.warn(`${op} ${path} failed: ${(err as Error)?.message ?? String(err)}`, {
              op,
              path,
              code: (err as { code?: string })?.code,
            });
          }
        }
        try {
          onError?.(n);
        } catch (e) {
          this.log.error(`error hook of ${op} ${path} threw: ${(e as Error)?.message ?? String(e)}`, { op, path });
        }
        answer(n);
      },
    );
  }

  private reportSlowOps(): void {
    const now = Date.now();
    for (const o of this.inflight.values()) {
      if (now - o.start > SLOW_OP_MS) {
        this.log.warn(`${o.op} ${o.path} has been waiting ${Math.round((now - o.start) / 1000)}s (backpressure or a slow backend)`, { op: o.op });
      }
    }
  }

  private volumeStat(e: VolumeEntry): FuseStat {
    return {
      mode: S_IFREG | (this.readOnly ? 0o444 : 0o644),
      uid: this.uid,
      gid: this.gid,
      size: e.vol.size,
      nlink: 1,
      // Reported as fully allocated: tools that see st_blocks == 0 may skip reading the file.
      blocks: Math.ceil(e.vol.size / 512),
      blksize: 131072,
      mtime: new Date(e.mtimeMs),
      atime: new Date(e.mtimeMs),
      ctime: new Date(e.mtimeMs),
    };
  }

  // ---- the operations --------------------------------------------------------

  /** `fallocate`: register the handler (only when the fuse-native binding has the op). */
  ops(opts: { fallocate?: boolean } = {}): FuseOps {
    return this.guarded({
      ...(opts.fallocate ? { fallocate: this.fallocate.bind(this) } : {}),
      init: (cb) => cb(0),

      getattr: (path, cb) => this.getattr(path, cb),
      fgetattr: (path, _fd, cb) => this.getattr(path, cb),

      readdir: (path, cb) => {
        this.call(
          'readdir',
          path,
          cb,
          async () => {
            if (path !== '/') throw errno.ENOENT;
            await this.rescan();
            // Also list volumes we hold open even if a rescan raced with a delete.
            const names = new Set([...this.knownNames.filter((n) => !this.damaged.has(n)), ...this.volumes.keys()]);
            return ['.', '..', STATS_NAME, ...[...names].sort()];
          },
          (names, answer) => answer(0, names),
        );
      },

      statfs: (path, cb) => {
        this.call(
          'statfs',
          path,
          cb,
          () => this.statfs(),
          (s, answer) => answer(0, s),
        );
      },

      open: (path, flags, cb) => {
        this.call(
          'open',
          path,
          cb,
          async () => {
            const writable = (flags & O_ACCMODE) !== constants.O_RDONLY;
            if (path === '/' + STATS_NAME) {
              if (writable) throw errno.EACCES;
              const h: Handle = { kind: 'stats', text: Buffer.alloc(0) };
              const fd = this.addHandle(h);
              h.text = Buffer.from(this.statsText()); // after addHandle: counts itself in open_handles
              return fd;
            }
            if (!this.accepting) throw errno.EBUSY;
            const entry = await this.lookup(path);
            if (!entry) throw path === '/' ? errno.EISDIR : errno.ENOENT;
            if (writable && this.readOnly) throw errno.EROFS;
            return this.addHandle({ kind: 'volume', entry, writable, deferredError: 0 });
          },
          (fd, answer) => answer(0, fd),
        );
      },

      release: (_path, fd, cb) => {
        this.handles.delete(fd);
        cb(0);
      },

      read: (path, fd, buf, len, pos, cb) => {
        const h = this.handles.get(fd);
        if (!h) return cb(errno.EBADF);
        if (h.kind === 'stats') {
          const n = Math.max(0, Math.min(len, h.text.length - pos));
          if (n > 0) h.text.copy(buf, 0, pos, pos + n);
          return cb(n);
        }
        const vol = h.entry.vol;
        const n = Math.max(0, Math.min(len, vol.size - pos));
        if (n === 0) return cb(0);
        // Read straight into the kernel's buffer: it stays valid until cb (fuse-native
        // detaches it then), and the engine is done with it when its promise settles.
        this.call(
          'read',
          path,
          cb,
          () => vol.readInto(pos, n === len ? buf : buf.subarray(0, n)),
          (_v, answer) => answer(n),
        );
      },

      write: (path, fd, buf, len, pos, cb) => {
        const h = this.handles.get(fd);
        if (!h || h.kind !== 'volume' || !h.writable) return cb(errno.EBADF);
        const entry = h.entry;
        const vol = entry.vol;
        if (len === 0) return cb(0);
        if (pos >= vol.size) return cb(errno.ENOSPC);
        const n = Math.min(len, vol.size - pos);
        // No copy: the engine reads `buf` only until its promise settles, and the
        // kernel's buffer stays valid until we call cb.
        this.call(
          'write',
          path,
          cb,
          () => vol.write(pos, n === len ? buf : buf.subarray(0, n)),
          (_v, answer) => {
            answer(n);
            entry.mtimeMs = Date.now();
          },
          (e) => {
            if (h.deferredError === 0) h.deferredError = e;
          },
        );
      },

      // flush runs on every close(2) (and on every dup'd fd close). close() is not a
      // sync point in POSIX, and each durability mode already bounds its loss window
      // without it (strict: synced per write; batched: group commit within ms;
      // relaxed/async: by contract until fsync). So flush does no I/O: it only
      // reports a write error this handle saw since the last flush, like the kernel's
      // write-back error reporting on close.
      flush: (_path, fd, cb) => {
        const h = this.handles.get(fd);
        if (!h || h.kind !== 'volume') return cb(0);
        const e = h.deferredError;
        h.deferredError = 0;
        cb(e);
      },

      // fuse-native calls fsync(path, datasync, fd, cb) (its README has another order).
      fsync: (path, _datasync, fd, cb) => {
        const h = this.handles.get(fd);
        if (!h) return cb(errno.EBADF);
        if (h.kind === 'stats') return cb(0);
        const vol = h.entry.vol;
        this.call(
          'fsync',
          path,
          cb,
          () => vol.fsync(),
          (_v, answer) => answer(0),
        );
      },

      truncate: (path, size, cb) => this.truncate(path, size, cb),
      ftruncate: (path, _fd, size, cb) => this.truncate(path, size, cb),

      utimens: (path, _atime, mtime, cb) => {
        this.call(
          'utimens',
          path,
          cb,
          async () => {
            if (path === '/' || path === '/' + STATS_NAME) return;
            const e = await this.lookup(path);
            if (!e) throw errno.ENOENT;
            e.mtimeMs = typeof mtime === 'number' && Number.isFinite(mtime) ? mtime : Date.now();
          },
          (_v, answer) => answer(0),
        );
      },

      // The namespace is the store's volume list: change it with the vbfs command.
      chmod: (_p, _m, cb) => cb(errno.EPERM),
      chown: (_p, _u, _g, cb) => cb(errno.EPERM),
      create: (_p, _m, cb) => cb(errno.EPERM),
      unlink: (_p, cb) => cb(errno.EPERM),
      rename: (_s, _d, cb) => cb(errno.EPERM),
      mkdir: (_p, _m, cb) => cb(errno.EPERM),
    });
  }

  /**
   * fallocate(2) on a volume file, i.e. discard from a loop device (fstrim, mount -o
   * discard, blkdiscard: PUNCH_HOLE|KEEP_SIZE) and zeroing (blkdiscard -z: ZERO_RANGE,
   * with or without KEEP_SIZE). Both trim the range: whole blocks become Empty and
   * free their chunk space, partial ones are zeroed like a write. The file has a
   * fixed size, so a plain allocate inside it has nothing to do (success), and
   * anything that would grow it, or a mode we do not know, is EOPNOTSUPP.
   */
  private fallocate(path: string, mode: number, offset: number, length: number, fd: number, cb: ErrCb): void {
    const h = this.handles.get(fd);
    if (!h || h.kind !== 'volume' || !h.writable) return cb(errno.EBADF);
    const entry = h.entry;
    const vol = entry.vol;
    if (offset < 0 || length <= 0) return cb(errno.EINVAL);
    const inside = offset + length <= vol.size;
    const punch = mode === (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
    const zero = mode === FALLOC_FL_ZERO_RANGE || mode === (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
    if (mode === 0 || mode === FALLOC_FL_KEEP_SIZE) return cb(inside || mode === FALLOC_FL_KEEP_SIZE ? 0 : errno.EOPNOTSUPP);
    if (!punch && !zero) return cb(errno.EOPNOTSUPP);
    // Past the end: KEEP_SIZE means only the part inside counts; without it the file would grow.
    if (!inside && !(mode & FALLOC_FL_KEEP_SIZE)) return cb(errno.EOPNOTSUPP);
    const n = Math.max(0, Math.min(length, vol.size - offset));
    if (n === 0) return cb(0);
    this.call(
      'fallocate',
      path,
      cb,
      () => vol.trim(offset, n),
      (_v, answer) => {
        answer(0);
        entry.mtimeMs = Date.now();
      },
      (e) => {
        if (h.deferredError === 0) h.deferredError = e;
      },
    );
  }

  /**
   * Every handler with its callback (always the last argument) made answer-once,
   * and a synchronous throw turned into EIO, so no path can leave the kernel
   * without an answer or give it two.
   */
  private guarded(ops: FuseOps): FuseOps {
    const out: Record<string, unknown> = {};
    for (const [op, handler] of Object.entries(ops) as Array<[string, (...args: unknown[]) => void]>) {
      out[op] = (...args: unknown[]): void => {
        const path = typeof args[0] === 'string' ? args[0] : '';
        const answer = this.once(op, path, args[args.length - 1] as Cb<unknown>);
        args[args.length - 1] = answer;
        try {
          handler(...args);
        } catch (err) {
          this.fuseErrors++;
          this.log.error(`${op} ${path} threw: ${(err as Error)?.message ?? String(err)}`, { op, path });
          if (!answer.answered) answer(errno.EIO);
        }
      };
    }
    return out as unknown as FuseOps;
  }

  private addHandle(h: Handle): number {
    const fd = this.nextFd++;
    this.handles.set(fd, h);
    return fd;
  }

  private getattr(path: string, cb: ValueCb<FuseStat>): void {
    if (path === '/') {
      return cb(0, {
        mode: S_IFDIR | 0o755,
        uid: this.uid,
        gid: this.gid,
        size: 4096,
        nlink: 2,
        blocks: 8,
        blksize: 4096,
        mtime: this.mountTime,
        atime: this.mountTime,
        ctime: this.mountTime,
      });
    }
    if (path === '/' + STATS_NAME) {
      const now = new Date();
      return cb(0, {
        mode: S_IFREG | 0o444,
        uid: this.uid,
        gid: this.gid,
        size: Buffer.byteLength(this.statsText()),
        nlink: 1,
        blocks: 8,
        blksize: 4096,
        mtime: now,
        atime: now,
        ctime: now,
      });
    }
    const known = this.volumes.get(path.slice(1));
    if (known) return cb(0, this.volumeStat(known));
    this.call(
      'getattr',
      path,
      cb,
      async () => {
        const e = await this.lookup(path);
        if (!e) throw errno.ENOENT;
        return this.volumeStat(e);
      },
      (st, answer) => answer(0, st),
    );
  }

  private truncate(path: string, size: number, cb: ErrCb): void {
    this.call(
      'truncate',
      path,
      cb,
      async () => {
        if (path === '/' + STATS_NAME) throw errno.EACCES;
        const e = await this.lookup(path);
        if (!e) throw errno.ENOENT;
        // Volumes have a fixed size; `open(O_TRUNC)` lands here too (use dd conv=notrunc).
        if (size !== e.vol.size) throw errno.EOPNOTSUPP;
        if (this.readOnly) throw errno.EROFS;
      },
      (_v, answer) => answer(0),
    );
  }

  /**
   * The numbers of the filesystem holding the store: volumes are thin (sparse), so
   * the sum of their sizes says nothing about space; where the data really goes, and
   * how much room is left there, does. `vbfs list` shows the volume sizes.
   */
  private async statfs(): Promise<FuseStatfs> {
    let total = 0;
    let free = 0;
    let avail = 0;
    try {
      const st = await fsp.statfs(this.storeDir);
      total = st.blocks * st.bsize;
      free = st.bfree * st.bsize;
      avail = st.bavail * st.bsize;
    } catch {
      // store directory unreadable: report an empty filesystem rather than fail df
    }
    // statfs counts are 32-bit in fuse-native: grow the fragment size until they fit.
    let frsize = 4096;
    while (total / frsize >= 2 ** 32 - 1) frsize *= 2;
    return {
      bsize: 131072,
      frsize,
      blocks: Math.floor(total / frsize),
      bfree: Math.floor(free / frsize),
      bavail: Math.floor(avail / frsize),
      files: this.volumes.size + 1,
      ffree: 0,
      favail: 0,
      fsid: 0,
      flag: this.readOnly ? 1 : 0,
      namemax: 255,
    };
  }
}

/** An error that says the volume's own data is broken (not the store, the disk or a lock). */
function isDamage(err: unknown): boolean {
  return isVbfsError(err, 'VBFS_CORRUPT') || isVbfsError(err, 'VBFS_UNSUPPORTED_VERSION') || (isVbfsError(err, 'VBFS_IO') && err.details['errno'] === 'EIO');
}
