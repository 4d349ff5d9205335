/**
 * `vbfs mount` (foreground, --daemon, and the detached child the daemon form starts),
 * and `vbfs unmount`.
 *
 * Daemon readiness: the parent starts a detached copy of itself with an extra pipe
 * on fd 3 (named by VBFS_READY_FD). The child writes one JSON line there once the
 * kernel has completed the FUSE handshake (or the error that stopped it) and closes
 * the pipe. The parent exits 0 only on that "ready" line, so `vbfs mount --daemon`
 * and mount(8) return when the volume files are usable.
 */
import { keyFromArgs } from './key-options';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VbfsError } from '../errors';
import { StoreMount } from '../fuse/mount';
import { mkdirPrivate, openAppendPrivateSync } from '../io/private-mode';
import { canonicalMountpoint, findMount, isVbfsMount, loopDevicesUnder, loopRefusal, statErrno, storeFromMount, unmountPath } from '../os/mounts';
import { pidAlive, sleep } from '../os/process';
import type { CliLogger } from './logger';
import { EXIT_FAILURE, EXIT_OK, ExitError, exitCodeFor } from './exit-codes';
import { compactOptionStrings, type MountFlags } from './mount-options';
import { openStore, readMountRecord, readMountRecordAt, removeMountRecord, runRecordPath, writeMountRecord } from './store';

export const READY_FD_ENV = 'VBFS_READY_FD';

export interface CliContext {
  storeDir: string;
  logger: CliLogger;
  logFile?: string;
  logLevel: string;
  out(line: string): void;
  /** `--backend s3://BUCKET/PREFIX` and `--s3-path-style`, if given (else the store's own). */
  backend?: string;
  s3PathStyle?: boolean;
}

export interface MountArgs extends MountFlags {
  mountpoint: string;
  daemon: boolean;
  timeoutSeconds: number;
  /** Seconds a SIGTERM/SIGINT waits for open files and loop devices (see StoreMount.stop). */
  stopTimeoutSeconds?: number;
  /** The mount.fuse/fstab form: refuse a store that does not exist unless `create`. */
  requireStore?: boolean;
  debugFuse?: boolean;
}

const DEFAULT_STOP_TIMEOUT_SECONDS = 60;

/**
 * Checks on the store path that must happen before anything is created (the daemon's
 * log file, the store itself): a file is not a store, and the fstab form must not
 * turn a mistyped path into a new, empty store.
 */
async function checkStorePath(storeDir: string, args: MountArgs): Promise<void> {
  const st = await fsp.stat(storeDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return null;
    throw new VbfsError('VBFS_IO', `cannot use store ${storeDir}: ${err.message}`, { errno: err.code });
  });
  if (st && !st.isDirectory()) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `store path ${storeDir} exists and is not a directory`, { path: storeDir });
  }
  if (args.requireStore && !args.create) {
    const volumes = st ? await fsp.stat(path.join(storeDir, 'volumes')).catch(() => null) : null;
    if (!volumes?.isDirectory()) {
      throw new VbfsError(
        'VBFS_NOT_FOUND',
        `store ${storeDir} does not exist (no ${path.join(storeDir, 'volumes')}): check the path, or add -o create to create an empty store there`,
        { path: storeDir },
      );
    }
  }
}

/** Can we write in `dir`? (false on a read-only filesystem, or without permission) */
async function writable(dir: string): Promise<boolean> {
  try {
    await fsp.access(dir, fs.constants.W_OK);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT'; // it will be created
  }
}

interface ReadyMessage {
  ok: boolean;
  exitCode?: number;
  message?: string;
}

function readyFd(): number | null {
  const v = process.env[READY_FD_ENV];
  if (!v) return null;
  const fd = Number(v);
  return Number.isInteger(fd) && fd > 2 ? fd : null;
}

function sendReady(msg: ReadyMessage): void {
  const fd = readyFd();
  if (fd === null) return;
  try {
    fs.writeSync(fd, JSON.stringify(msg) + '\n');
    fs.closeSync(fd);
  } catch {
    // The parent gave up waiting; nothing to tell.
  }
  delete process.env[READY_FD_ENV];
}

/** `vbfs mount <mountpoint>`: serve until unmounted or signalled. Resolves with the exit status. */
export async function runMount(ctx: CliContext, args: MountArgs): Promise<number> {
  const mountpoint = canonicalMountpoint(args.mountpoint);
  await checkStorePath(ctx.storeDir, args);
  if (args.daemon && readyFd() === null) return startDaemon(ctx, { ...args, mountpoint });

  const log = ctx.logger;
  const stopTimeoutMs = (args.stopTimeoutSeconds ?? DEFAULT_STOP_TIMEOUT_SECONDS) * 1000;
  let ready = false;
  // Signals are handled from the start: a Ctrl-C while volumes are still being opened
  // must not kill the process between the kernel mount and our handlers (that would
  // leave a dead mount behind). Before the mount exists it is remembered and acted
  // on as soon as the mount is up.
  let mount: StoreMount | null = null;
  let pending: { sig: NodeJS.Signals; force: boolean } | null = null;
  const stop = (sig: NodeJS.Signals, force: boolean): void => {
    if (!mount) {
      pending = { sig, force };
      log.info(`${sig}: will unmount ${mountpoint} as soon as it is mounted`);
      return;
    }
    log.info(`${sig}: unmounting ${mountpoint}${force ? ' (forced)' : ''}`);
    // A busy mount is not a reason to drop the request: stop() retries until it is
    // free, within the stop timeout (then forces, unless a loop device is attached).
    const p = force ? mount.force() : mount.stop({ timeoutMs: stopTimeoutMs });
    p.catch((err: Error) => {
      log.error(`${err.message}; still mounted and serving`);
    });
  };
  const graceful = (sig: NodeJS.Signals): void => stop(sig, false);
  const forced = (sig: NodeJS.Signals): void => stop(sig, true); // SIGUSR2: like `vbfs unmount --force`
  // SIGHUP is ignored on purpose: it comes when the terminal that started a
  // foreground mount goes away (an SSH drop), and that must not take the disk away
  // from a loop device or a filesystem on it. Stop with SIGTERM or `vbfs unmount`.
  const hangup = (): void => log.info(`SIGHUP ignored (stop with SIGTERM or 'vbfs unmount ${mountpoint}')`);
  const signals: Array<[NodeJS.Signals, (sig: NodeJS.Signals) => void]> = [
    ['SIGINT', graceful],
    ['SIGTERM', graceful],
    ['SIGHUP', hangup],
    ['SIGUSR2', forced],
  ];
  for (const [sig, fn] of signals) process.on(sig, fn);

  let recorded = false;
  try {
    const running = await readMountRecord(ctx.storeDir);
    if (running && running.pid !== process.pid) {
      throw new VbfsError('VBFS_BUSY', `store ${ctx.storeDir} is already mounted at ${running.mountpoint} (pid ${running.pid}); a store can be mounted once`);
    }
    // Read before anything is created: a missing key file is a usage error, not a half mount.
    const key = await keyFromArgs(args);
    const store = await openStore(ctx.storeDir, log, {
      memoryBytes: args.memoryBytes,
      backend: { url: ctx.backend, pathStyle: ctx.s3PathStyle },
      leaseTtlSeconds: args.leaseTtlSeconds,
      diskCacheBytes: args.diskCacheBytes,
    });
    let m: StoreMount;
    try {
      // Everything that can fail is done before the kernel mount: a failure after it
      // would leave a mount nobody serves (ENOTCONN).
      await writeMountRecord(ctx.storeDir, { pid: process.pid, mountpoint, started: new Date().toISOString() }, log);
      recorded = true;
      m = await StoreMount.mount({
        mountpoint,
        store,
        storeDir: ctx.storeDir,
        logger: log,
        readOnly: args.readOnly,
        allowOther: args.allowOther,
        allowRoot: args.allowRoot,
        defaultPermissions: args.defaultPermissions,
        nonempty: args.nonempty,
        openOptions:
          args.durability || args.compact || args.walPreallocate !== undefined
            ? {
                ...(args.durability ? { durability: args.durability } : {}),
                ...args.compact,
                ...(args.walPreallocate !== undefined ? { walPreallocate: args.walPreallocate } : {}),
              }
            : undefined,
        key,
        debug: args.debugFuse,
      });
    } catch (err) {
      await store.close().catch(() => undefined);
      throw err;
    }
    mount = m;
    try {
      const names = m.fs.openVolumes().map((v) => v.name);
      if (readyFd() !== null) {
        // Detached child: no terminal to hold on to.
        process.chdir('/');
      } else {
        ctx.out(
          `mounted ${ctx.storeDir} at ${mountpoint} (${names.length ? names.map((n) => path.join(mountpoint, n)).join(', ') : 'no volumes yet'}); ` +
            `stop with Ctrl-C or 'vbfs unmount ${mountpoint}'`,
        );
      }
      sendReady({ ok: true });
      ready = true;
      log.info(`serving ${mountpoint}`, { pid: process.pid, volumes: names });
    } catch (err) {
      // Nothing should fail here, but if it does, take the mount down with us.
      await m.force().catch(() => undefined);
      await store.close().catch(() => undefined);
      throw err;
    }
    const early = pending as { sig: NodeJS.Signals; force: boolean } | null;
    if (early) stop(early.sig, early.force);

    const closeErr = await m.closed;
    let status = EXIT_OK;
    if (closeErr) {
      log.error(`closing volumes failed: ${closeErr.message}`);
      status = EXIT_FAILURE;
    }
    try {
      await store.close();
    } catch (err) {
      log.error(`closing the store failed: ${(err as Error).message}`);
      status = EXIT_FAILURE;
    }
    if (status === EXIT_OK) log.info(`${mountpoint} unmounted cleanly`);
    return status;
  } catch (err) {
    if (!ready) sendReady({ ok: false, exitCode: exitCodeFor(err), message: (err as Error).message });
    throw err;
  } finally {
    if (recorded) await removeMountRecord(ctx.storeDir, process.pid, mountpoint);
    for (const [sig, fn] of signals) process.off(sig, fn);
  }
}

function binPath(): string {
  const fromDist = path.resolve(__dirname, '..', '..', '..', 'bin', 'vbfs');
  return fs.existsSync(fromDist) ? fromDist : process.argv[1]!;
}

/** Start the detached child and wait for its readiness line. */
async function startDaemon(ctx: CliContext, args: MountArgs): Promise<number> {
  // A read-only store (mounted --read-only) has no room for the log: use the run directory.
  const logFile =
    ctx.logFile ?? ((await writable(ctx.storeDir)) ? path.join(ctx.storeDir, 'mount.log') : runRecordPath(args.mountpoint).replace(/\.json$/, '.log'));
  await mkdirPrivate(path.dirname(logFile));
  const childArgs = [binPath(), 'mount', args.mountpoint, '--store', ctx.storeDir, '--log-file', logFile, '--log-level', ctx.logLevel];
  childArgs.push('--stop-timeout', String(args.stopTimeoutSeconds ?? DEFAULT_STOP_TIMEOUT_SECONDS));
  if (args.nonempty) childArgs.push('-o', 'nonempty');
  if (args.readOnly) childArgs.push('--read-only');
  if (args.allowOther) childArgs.push('--allow-other');
  if (args.allowRoot) childArgs.push('--allow-root');
  if (args.defaultPermissions) childArgs.push('--default-permissions');
  if (args.durability) childArgs.push('--durability', args.durability);
  if (args.memoryBytes !== undefined) childArgs.push('--memory', String(args.memoryBytes));
  if (args.diskCacheBytes !== undefined) childArgs.push('--disk-cache-bytes', String(args.diskCacheBytes));
  if (args.leaseTtlSeconds !== undefined) childArgs.push('--lease-ttl', String(args.leaseTtlSeconds));
  if (args.debugFuse) childArgs.push('--debug-fuse');
  for (const o of compactOptionStrings(args.compact)) childArgs.push('-o', o);
  if (args.walPreallocate !== undefined) childArgs.push('-o', `wal_prealloc=${args.walPreallocate ? 'on' : 'off'}`);
  if (ctx.backend !== undefined) childArgs.push('--backend', ctx.backend);
  if (ctx.s3PathStyle !== undefined) childArgs.push(`--s3-path-style=${ctx.s3PathStyle}`);
  // The key's source, never the key: the child reads the file or its inherited environment.
  if (args.keyFile !== undefined) childArgs.push('--key-file', path.resolve(args.keyFile));
  if (args.keyEnv !== undefined) childArgs.push('--key-env', args.keyEnv);
  // The child's stderr goes to the log file too, so even a crash trace is kept.
  const errFd = openAppendPrivateSync(logFile);
  const child = spawn(process.execPath, childArgs, {
    detached: true,
    stdio: ['ignore', 'ignore', errFd, 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  });
  fs.closeSync(errFd);
  const pipe = child.stdio[3] as NodeJS.ReadableStream | null;
  const msg = await new Promise<ReadyMessage>((resolve) => {
    let buf = '';
    let settled = false;
    const done = (m: ReadyMessage): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(m);
    };
    const timer = setTimeout(() => {
      done({ ok: false, exitCode: EXIT_FAILURE, message: `mount not ready after ${args.timeoutSeconds}s; stopped it (log: ${logFile})` });
      if (child.pid) process.kill(child.pid, 'SIGTERM');
    }, args.timeoutSeconds * 1000);
    pipe?.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        try {
          done(JSON.parse(buf.slice(0, nl)) as ReadyMessage);
        } catch {
          done({ ok: false, exitCode: EXIT_FAILURE, message: `unreadable readiness message from the mount process (log: ${logFile})` });
        }
      }
    });
    child.on('error', (err) => done({ ok: false, exitCode: EXIT_FAILURE, message: `cannot start the mount process: ${err.message}` }));
    child.on('exit', (code, signal) =>
      done({
        ok: false,
        exitCode: EXIT_FAILURE,
        message: `the mount process exited (${signal ?? `status ${code}`}) before the mount was ready; see ${logFile}`,
      }),
    );
  });
  pipe?.removeAllListeners('data');
  (pipe as unknown as { destroy?: () => void } | null)?.destroy?.();
  child.removeAllListeners('exit');
  child.unref();
  if (!msg.ok) {
    throw new ExitError(msg.message ?? 'mount failed', msg.exitCode ?? EXIT_FAILURE);
  }
  ctx.out(`mounted ${ctx.storeDir} at ${args.mountpoint} (pid ${child.pid}, log ${logFile}); unmount with 'vbfs unmount ${args.mountpoint}'`);
  return EXIT_OK;
}

export interface UnmountArgs {
  mountpoint: string;
  force: boolean;
  timeoutSeconds: number;
}

/**
 * `vbfs unmount <mountpoint>`: refuse while a loop device uses a volume file,
 * unmount non-lazily ourselves (so "busy" is reported here, to the user), then
 * signal the mount process and wait until it has closed its volumes and exited.
 */
export async function runUnmount(ctx: CliContext, args: UnmountArgs): Promise<number> {
  const mnt = canonicalMountpoint(args.mountpoint);
  const entry = await findMount(mnt);
  if (!entry) throw new VbfsError('VBFS_NOT_FOUND', `${mnt} is not mounted`);
  if (!isVbfsMount(entry)) throw new VbfsError('VBFS_INVALID_ARGUMENT', `${mnt} is not a vbfs mount (${entry.fstype} ${entry.source})`);

  // The record keyed by the mountpoint names the serving process whatever the store
  // path is; the mount source (absent when the store path has a space or comma) and
  // the store's mount.pid are the fallback for mounts made by older versions.
  let rec = await readMountRecordAt(mnt);
  if (!rec) {
    const old = await readMountRecord(storeFromMount(entry) ?? ctx.storeDir);
    rec = old && old.mountpoint === mnt ? old : null;
  }
  const pid = rec ? rec.pid : null;

  if (!args.force) {
    // `losetup -d` returns before the kernel lets go of the file: give it a moment.
    let loops = await loopDevicesUnder(mnt);
    for (let i = 0; loops.length && i < 20; i++) {
      await sleep(100);
      loops = await loopDevicesUnder(mnt);
    }
    if (loops.length) throw loopRefusal(mnt, loops);
  }

  if ((await statErrno(mnt)) === 'ENOTCONN' || pid === null) {
    // Stale (its process died) or a process we cannot find: just take the mount away.
    if (pid === null && (await statErrno(mnt)) !== 'ENOTCONN') {
      ctx.logger.warn(`no running vbfs process recorded for ${mnt}; unmounting anyway`);
    }
    await unmountPath(mnt, { lazy: args.force });
    ctx.out(`unmounted ${mnt}`);
    return EXIT_OK;
  }

  try {
    await unmountPath(mnt);
  } catch (err) {
    if (!args.force) throw err;
    ctx.logger.warn(`${(err as Error).message}; forcing a lazy unmount`);
    await unmountPath(mnt, { lazy: true });
  }
  // Wake the process now instead of waiting for its mount-table poll. After a forced
  // (lazy) unmount the kernel may still send requests for open files; SIGUSR2 tells
  // the process to close anyway instead of serving them until they are closed.
  try {
    process.kill(pid, args.force ? 'SIGUSR2' : 'SIGTERM');
  } catch {
    // already exiting
  }
  const deadline = Date.now() + args.timeoutSeconds * 1000;
  while (pidAlive(pid)) {
    if (Date.now() > deadline) {
      throw new VbfsError('VBFS_BUSY', `${mnt} is unmounted but vbfs process ${pid} has not finished closing its volumes after ${args.timeoutSeconds}s`);
    }
    await sleep(100);
  }
  ctx.out(`unmounted ${mnt}; volumes flushed and closed`);
  return EXIT_OK;
}
