/**
 * Mounting a store: the only file that loads fuse-native.
 *
 * Life of a mount:
 *   mount():   check libfuse, recover a stale mount left by a killed process, open
 *              every volume, mount with big_writes, start watching the mount table.
 *   shutdown(): refuse while a loop device is attached to a volume file (unless
 *              forced), fsync every volume, unmount NON-lazily, then close every
 *              volume (flush, sync, checkpoint). Unmounting before closing means the
 *              kernel has handed us every write it will ever send; a busy mount
 *              stays mounted and keeps serving instead of being detached under its
 *              users. fuse-native's own unmount is a lazy `fusermount -uz`, which
 *              would leave a loop device writing into a dead process: not used.
 *   stop():    shutdown() deferred: retried until the open files are closed and the
 *              loop devices detached, for at most the stop timeout (see stop()).
 *   An unmount done by someone else (`umount`, `fusermount -u`, `vbfs unmount`) is
 *   noticed through the mount table and leads to the same close. A LAZY unmount by
 *   someone else (`umount -l`, `fusermount -uz`) removes the mount from the table
 *   while the kernel still sends requests for the files in use (a loop device): we
 *   keep serving until the kernel releases the connection (libfuse then closes
 *   /dev/fuse), and only then close the volumes.
 */
import * as fsp from 'node:fs/promises';
import { VbfsError, isVbfsError } from '../errors';
import type { KeyMaterial } from '../crypto/key-source';
import type { VolumeOpenOptions } from '../store/types';
import type { Logger } from '../types';
import { canonicalMountpoint, findMount, isVbfsMount, loopDevicesUnder, loopRefusal, statErrno, unmountPath } from '../os/mounts';
import { pidAlive, sleep } from '../os/process';
import { checkFuseAvailable, holdsFuseConnection } from './system';
import type { MountableStore } from '../store/ports';
import type { FuseOps } from './types';
import { VolumeFs } from './volume-fs';

/** Largest write the kernel sends with big_writes (fuse 2.9 caps max_write at 128 KiB). */
const MAX_WRITE = 131072;

export interface MountOptions {
  mountpoint: string;
  store: MountableStore;
  storeDir: string;
  logger: Logger;
  readOnly?: boolean;
  allowOther?: boolean;
  allowRoot?: boolean;
  defaultPermissions?: boolean;
  openOptions?: VolumeOpenOptions;
  /** Key of the encrypted volumes: given to those only; the ones it does not open are not served. */
  key?: KeyMaterial;
  debug?: boolean;
  /** Mount over a non-empty directory (libfuse's `nonempty`), hiding what is in it. */
  nonempty?: boolean;
  /** How often to look for an unmount done by someone else (ms). */
  watchIntervalMs?: number;
}

interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
}
type FuseConstructor = (new (mnt: string, ops: FuseOps, opts: Record<string, unknown>) => FuseInstance) & {
  /** Set by the fallocate patch (scripts/fuse-native-fallocate.js) when the binding has the op. */
  supportsFallocate?: boolean;
};

/** Load fuse-native, turning "libfuse.so.2: cannot open shared object" into one clear line. */
export function loadFuse(load: (id: string) => unknown = require): FuseConstructor {
  try {
    return load('fuse-native') as FuseConstructor;
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    if (/libfuse\.so/.test(msg)) {
      throw new VbfsError('VBFS_IO', "libfuse.so.2 not found: install the Debian package 'libfuse2' (apt-get install libfuse2)", {
        cause: msg,
      });
    }
    throw new VbfsError('VBFS_IO', `cannot load fuse-native: ${msg} (try 'npm rebuild fuse-native')`);
  }
}

/** libfuse options: placed in fsname because fuse-native has no switch for big_writes. */
export function fsnameFor(storeDir: string, opts: { readOnly?: boolean; nonempty?: boolean } = {}): string {
  // The store path in the source column lets `vbfs unmount <mnt>` find the store.
  // libfuse splits options on ',' and a space would be escaped: keep such paths out.
  const source = /^[^,\s\\]+$/.test(storeDir) ? `vbfs:${storeDir}` : 'vbfs';
  // `ro` makes the kernel mount read-only too (the mount table then says so, and
  // writes fail in the kernel without a round trip to us).
  return `${source},big_writes,max_write=${MAX_WRITE}${opts.readOnly ? ',ro' : ''}${opts.nonempty ? ',nonempty' : ''}`;
}

/**
 * If `mountpoint` holds a dead FUSE mount (ENOTCONN: its process was killed),
 * unmount it. A live mount there is an error. Returns true if something was cleaned.
 */
async function recoverStaleMount(mountpoint: string, log: Logger): Promise<boolean> {
  const m = await findMount(mountpoint);
  if (!m) return false;
  const e = await statErrno(mountpoint);
  if (e !== 'ENOTCONN' && e !== 'ENXIO') {
    throw new VbfsError(
      'VBFS_BUSY',
      isVbfsMount(m)
        ? `${mountpoint} is already mounted (${m.source}): run 'vbfs unmount ${mountpoint}' first`
        : `${mountpoint} is already a mount point (${m.fstype} ${m.source})`,
      { mountpoint },
    );
  }
  const loops = await loopDevicesUnder(mountpoint);
  if (loops.length) {
    throw new VbfsError(
      'VBFS_BUSY',
      `${mountpoint} is a stale mount of a process that died, and loop device ${loops.map((l) => l.device).join(', ')} still uses it: ` +
        `unmount the filesystem on it and run 'losetup -d ${loops[0]!.device}', then mount again`,
      { mountpoint, loops },
    );
  }
  log.warn(`cleaning up stale mount at ${mountpoint} (its process died)`, { mountpoint });
  await unmountPath(mountpoint);
  return true;
}

/**
 * Open every volume. A volume lock held by a process that was just killed (kill -9
 * of the previous mount) stays "held" until the kernel has finished tearing that
 * process down and its parent has reaped it (a zombie still answers kill(pid, 0)):
 * wait for such a holder for a few seconds instead of failing the remount. After
 * cleaning up a stale mount, any holder is presumed to be its dying process.
 */
async function openAllRetryingDeadHolders(fs: VolumeFs, log: Logger, afterStaleMount: boolean, waitMs = 10_000): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await fs.openAll();
    } catch (err) {
      const holder = isVbfsError(err, 'VBFS_LOCKED') ? err.details['pid'] : undefined;
      const dying = typeof holder === 'number' && holder !== process.pid && (afterStaleMount || !pidAlive(holder));
      if (!dying || Date.now() > deadline) throw err;
      log.info(`waiting for the lock holder ${holder} (exited) to be reaped`);
      await sleep(200);
    }
  }
}

export class StoreMount {
  readonly mountpoint: string;
  readonly fs: VolumeFs;
  private readonly log: Logger;
  private watchTimer: NodeJS.Timeout | null = null;
  private shutdownPromise: Promise<void> | null = null;
  private stopPromise: Promise<void> | null = null;
  private forceRequested = false;
  /** Consecutive watcher ticks that found us out of the mount table but still connected. */
  private detachedTicks = 0;
  private resolveClosed!: (err: Error | null) => void;
  /**
   * Resolves once the mount is gone and the volumes are closed (after our unmount or
   * someone else's): with null, or with the error closing a volume gave.
   */
  readonly closed: Promise<Error | null>;

  private constructor(opts: MountOptions) {
    this.mountpoint = canonicalMountpoint(opts.mountpoint);
    this.log = opts.logger;
    this.fs = new VolumeFs({
      store: opts.store,
      storeDir: opts.storeDir,
      logger: opts.logger,
      readOnly: opts.readOnly,
      openOptions: opts.openOptions as Record<string, unknown> | undefined,
      key: opts.key,
    });
    this.closed = new Promise((r) => (this.resolveClosed = r));
  }

  static async mount(opts: MountOptions): Promise<StoreMount> {
    checkFuseAvailable();
    const Fuse = loadFuse();
    const m = new StoreMount(opts);
    const mnt = m.mountpoint;

    const hadStaleMount = await recoverStaleMount(mnt, m.log);
    const st = await fsp.stat(mnt).catch((err: NodeJS.ErrnoException) => {
      throw new VbfsError('VBFS_NOT_FOUND', `mountpoint ${mnt} does not exist (mkdir -p ${mnt})`, { errno: err.code });
    });
    if (!st.isDirectory()) throw new VbfsError('VBFS_INVALID_ARGUMENT', `mountpoint ${mnt} is not a directory`);
    if (!opts.nonempty && !hadStaleMount) {
      // libfuse refuses this too, but fuse-native reduces its reason to "fuse failed".
      const entries = await fsp.readdir(mnt).catch(() => [] as string[]);
      if (entries.length > 0) {
        throw new VbfsError(
          'VBFS_BUSY',
          `mountpoint ${mnt} is not empty (${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}, e.g. ${entries[0]}): ` +
            'use an empty directory, or mount with -o nonempty to hide its contents while mounted',
          { mountpoint: mnt },
        );
      }
    }

    await openAllRetryingDeadHolders(m.fs, m.log, hadStaleMount);
    // Without the patched binding, fallocate stays unregistered: the kernel answers EOPNOTSUPP.
    const fuse = new Fuse(mnt, m.fs.ops({ fallocate: Fuse.supportsFallocate === true }), {
      fsname: fsnameFor(opts.storeDir, { readOnly: opts.readOnly, nonempty: opts.nonempty }),
      subtype: 'vbfs',
      // fuse-native answers ETIMEDOUT after its timer (15 s by default) and crashes on
      // the late callback. Writes and fsyncs may legitimately wait on backpressure, and
      // a loop device turns ETIMEDOUT into filesystem corruption, so no timer at all:
      // like a disk, we answer when done. Slow operations are logged by VolumeFs.
      timeout: false,
      force: false, // stale mounts are recovered above, non-lazily
      mkdir: false,
      allowOther: opts.allowOther === true,
      allowRoot: opts.allowRoot === true,
      defaultPermissions: opts.defaultPermissions === true,
      maxRead: MAX_WRITE,
      debug: opts.debug === true,
    });
    try {
      await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
    } catch (err) {
      await m.fs.closeVolumes().catch(() => undefined);
      throw new VbfsError('VBFS_IO', `mounting ${mnt} failed: ${(err as Error).message}`, {}, { cause: err });
    }
    m.watch(opts.watchIntervalMs ?? 1000);
    m.log.info(`mounted ${opts.storeDir} at ${mnt}`, { volumes: m.fs.openVolumes().map((v) => v.name) });
    return m;
  }

  /**
   * Notice an unmount done by someone else, then close the volumes. Leaving the mount
   * table is not enough: after a lazy unmount the kernel keeps the connection (and
   * sends requests) while a loop device or an open file still uses a volume file.
   */
  private watch(intervalMs: number): void {
    this.watchTimer = setInterval(() => {
      if (this.shutdownPromise) return;
      void (async () => {
        const entry = await findMount(this.mountpoint);
        if (entry && isVbfsMount(entry)) {
          this.detachedTicks = 0;
          return;
        }
        if (this.shutdownPromise) return;
        if (await holdsFuseConnection()) {
          // A plain unmount also leaves the table a moment before libfuse closes
          // /dev/fuse: say something only when it lasts.
          if (++this.detachedTicks === 2) {
            this.log.warn(
              `${this.mountpoint} was detached lazily by someone else, but the kernel still uses it (a loop device or an open file): ` +
                'serving until it lets go, then closing the volumes',
            );
          }
          return;
        }
        this.log.info(`${this.mountpoint} was unmounted externally: closing volumes`);
        // Errors reach the owner through `closed`.
        this.shutdown({ force: false }).catch(() => undefined);
      })().catch(() => undefined);
    }, intervalMs);
  }

  /**
   * A stop request (SIGTERM): shutdown() now if possible, else retry every
   * `retryMs` while open files and loop devices keep the mount busy, refusing new
   * opens meanwhile (requests on files already open are served as usual). After
   * `timeoutMs`:
   *   - only open files keep it busy: unmount as with `force` (lazily; the volumes
   *     are still synced and closed; those files then get errors), so the process
   *     ends within a bounded time;
   *   - a loop device is attached (or the mount was detached lazily and is still in
   *     use): keep serving and keep waiting, as `vbfs unmount` refuses to do then,
   *     because forcing would corrupt the filesystem on the loop device. An error
   *     says so once; SIGUSR2 (force()) still forces.
   * Resolves once closed; rejects only on an error that retrying cannot fix.
   */
  stop(opts: { timeoutMs: number; retryMs?: number }): Promise<void> {
    if (this.stopPromise) return this.stopPromise;
    const p = this.runStop(opts.timeoutMs, opts.retryMs ?? 250);
    this.stopPromise = p;
    p.catch(() => {
      if (this.stopPromise === p) this.stopPromise = null;
    });
    return p;
  }

  /** SIGUSR2 / `--force`: stop now, lazily if busy. Also ends a pending stop(). */
  force(): Promise<void> {
    this.forceRequested = true;
    return this.shutdown({ force: true });
  }

  private async runStop(timeoutMs: number, retryMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let reported = '';
    let expiredReported = false;
    for (;;) {
      try {
        await this.shutdown({ force: this.forceRequested });
        return;
      } catch (err) {
        if (!isVbfsError(err, 'VBFS_BUSY')) throw err;
        if (this.forceRequested) return this.shutdown({ force: true });
        this.fs.setAccepting(false);
        if (err.message !== reported) {
          reported = err.message;
          this.log.warn(`${err.message}; will unmount as soon as it is free (stop timeout ${Math.round(timeoutMs / 1000)}s)`);
        }
        if (Date.now() >= deadline) {
          const loops = await loopDevicesUnder(this.mountpoint);
          const detachedInUse = (await findMount(this.mountpoint)) === null && (await holdsFuseConnection());
          if (loops.length === 0 && !detachedInUse) {
            this.log.warn(`stop timeout (${Math.round(timeoutMs / 1000)}s) expired with files still open: unmounting lazily; they get errors from now on`);
            this.forceRequested = true;
            return this.shutdown({ force: true });
          }
          if (!expiredReported) {
            expiredReported = true;
            this.log.error(
              `stop timeout (${Math.round(timeoutMs / 1000)}s) expired, but ${loops.length ? `loop device ${loops.map((l) => l.device).join(', ')} still uses` : 'the kernel still uses'} ` +
                `${this.mountpoint}: not forcing (that would corrupt the filesystem on it); still serving, and unmounting as soon as it is free (SIGUSR2 forces)`,
            );
          }
        }
      }
      await sleep(retryMs);
    }
  }

  /**
   * Unmount and close. Rejects with VBFS_BUSY (and keeps serving) while a loop device
   * is attached or a file is open, unless `force`: then the mount is detached lazily.
   */
  shutdown(opts: { force?: boolean } = {}): Promise<void> {
    if (this.shutdownPromise) return this.shutdownPromise;
    const p = this.doShutdown(opts.force === true);
    this.shutdownPromise = p;
    p.catch(() => {
      // Refused: we are still mounted and serving; a later attempt may succeed.
      if (this.shutdownPromise === p) this.shutdownPromise = null;
    });
    return p;
  }

  /**
   * Is the kernel still using our connection, `graceMs` from now? Right after a plain
   * unmount libfuse needs a moment to see the end and close /dev/fuse.
   */
  private async stillConnected(graceMs: number): Promise<boolean> {
    const deadline = Date.now() + graceMs;
    while (await holdsFuseConnection()) {
      if (Date.now() >= deadline) return true;
      await sleep(100);
    }
    return false;
  }

  private async doShutdown(force: boolean): Promise<void> {
    const mnt = this.mountpoint;
    const stillMounted = async (): Promise<boolean> => {
      const e = await findMount(mnt);
      return e !== null && isVbfsMount(e);
    };
    if (!(await stillMounted()) && !force && (await this.stillConnected(1000))) {
      // Detached lazily by someone else, but a loop device or an open file still
      // sends requests through the kernel: closing now would fail them.
      throw new VbfsError(
        'VBFS_BUSY',
        `${mnt} was detached lazily but is still in use (a loop device or an open file): ` +
          'serving until it is released; detach the loop device (losetup -d) or close the file',
        { mountpoint: mnt },
      );
    }
    if (await stillMounted()) {
      const loops = await loopDevicesUnder(mnt);
      if (loops.length && !force) throw loopRefusal(mnt, loops);
      this.fs.setAccepting(false);
      try {
        // Make everything acknowledged so far durable while the mount still exists.
        await this.fs.syncAll();
        try {
          await unmountPath(mnt);
        } catch (err) {
          if (!force) throw err;
          this.log.warn(`forcing a lazy unmount of ${mnt}: ${(err as Error).message}`);
          await unmountPath(mnt, { lazy: true });
        }
      } catch (err) {
        this.fs.setAccepting(true);
        throw err;
      }
    }
    if (this.watchTimer) clearInterval(this.watchTimer);
    try {
      await this.fs.closeVolumes();
    } catch (err) {
      this.resolveClosed(err as Error);
      throw err;
    }
    this.log.info(`unmounted ${mnt}; volumes closed`);
    this.resolveClosed(null);
  }
}
