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
 *   An unmount done by someone else (`umount`, `fusermount -u`, `vbfs unmount`) is
 *   noticed through the mount table and leads to the same close.
 */
import * as fsp from 'node:fs/promises';
import { VbfsError, isVbfsError } from '../errors';
import type { Logger, VolumeOpenOptions } from '../store/types';
import {
  canonicalMountpoint,
  checkFuseAvailable,
  findMount,
  isVbfsMount,
  loopDevicesUnder,
  loopRefusal,
  pidAlive,
  sleep,
  statErrno,
  unmountPath,
} from './system';
import type { FuseOps, MountableStore } from './types';
import { VolumeFs } from './volume-fs';

/** Largest write the kernel sends with big_writes (fuse 2.9 caps max_write at 128 KiB). */
export const MAX_WRITE = 131072;

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
  debug?: boolean;
  /** How often to look for an unmount done by someone else (ms). */
  watchIntervalMs?: number;
}

interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
}
type FuseConstructor = new (mnt: string, ops: FuseOps, opts: Record<string, unknown>) => FuseInstance;

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
export function fsnameFor(storeDir: string): string {
  // The store path in the source column lets `vbfs unmount <mnt>` find the store.
  // libfuse splits options on ',' and a space would be escaped: keep such paths out.
  const source = /^[^,\s\\]+$/.test(storeDir) ? `vbfs:${storeDir}` : 'vbfs';
  return `${source},big_writes,max_write=${MAX_WRITE}`;
}

/**
 * If `mountpoint` holds a dead FUSE mount (ENOTCONN: its process was killed),
 * unmount it. A live mount there is an error. Returns true if something was cleaned.
 */
export async function recoverStaleMount(mountpoint: string, log: Logger): Promise<boolean> {
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

    await openAllRetryingDeadHolders(m.fs, m.log, hadStaleMount);
    const fuse = new Fuse(mnt, m.fs.ops(), {
      fsname: fsnameFor(opts.storeDir),
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

  /** Notice an unmount done by someone else, then close the volumes. */
  private watch(intervalMs: number): void {
    this.watchTimer = setInterval(() => {
      findMount(this.mountpoint).then(
        (entry) => {
          if (entry && isVbfsMount(entry)) return;
          if (this.shutdownPromise) return;
          this.log.info(`${this.mountpoint} was unmounted externally: closing volumes`);
          // Errors reach the owner through `closed`.
          this.shutdown({ force: false }).catch(() => undefined);
        },
        () => undefined,
      );
    }, intervalMs);
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

  private async doShutdown(force: boolean): Promise<void> {
    const mnt = this.mountpoint;
    const stillMounted = async (): Promise<boolean> => {
      const e = await findMount(mnt);
      return e !== null && isVbfsMount(e);
    };
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
