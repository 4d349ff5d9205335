import * as fs from 'node:fs';
import * as os from 'node:os';
import { randomBytes } from 'node:crypto';
import { VbfsError, isVbfsError } from '../errors';
import type { FileIO } from '../io/file-io';
import { bootId, bootTimeMs, processStart, processStat } from '../os/process';

/**
 * Single-writer lock of a volume: a LOCK file holding one line of JSON
 * {pid, host, boot, start, token} (docs/FORMAT.md).
 *
 * Taking it is atomic: the content is written to a unique temp file, synced, and
 * hard-linked to LOCK; link() fails with EEXIST if LOCK exists. So a reader never
 * sees a half-made lock (an O_EXCL create followed by a write would show an empty
 * file in between, which an earlier version took for stale and deleted: two writers).
 *
 * A lock is stale only when its owner is provably gone: same host, and the boot is
 * another one, or the pid does not exist (or is a zombie), or the pid belongs to a
 * process started at another time (pid reuse; compared with the start time in
 * /proc/<pid>/stat). Removing a stale lock is itself race-free: only the opener that
 * creates `LOCK.claim-<token of the stale lock>` (again by link) may remove it, and
 * only after checking that LOCK still holds that token. A claim left by an opener
 * that died is taken over the same way (a claim on the claim), so nothing is stuck.
 *
 * Locks held by this process are also tracked in memory (per file layer), so a
 * second open in the same process is refused too, while a LOCK left behind by a
 * simulated crash of an earlier in-process instance is recognised as stale.
 */
const held = new WeakMap<FileIO, Set<string>>();
/** Paths an acquire() of this process is working on: a concurrent second one is refused at once. */
const acquiring = new WeakMap<FileIO, Set<string>>();

export interface LockInfo {
  pid: number;
  host: string;
  token: string;
  /** /proc/sys/kernel/random/boot_id of the owner's boot (absent in older locks). */
  boot?: string;
  /** Start time of the owner process, clock ticks after boot (/proc/<pid>/stat field 22). */
  start?: number;
  /** The file was not a complete lock (written by an older version, or damaged). */
  torn?: boolean;
  mtimeMs?: number;
}

/** Who this process is, in the terms a lock records. */
export interface Owner {
  pid: number;
  host: string;
  boot?: string;
  start?: number;
}

let self: Owner | null = null;
export function currentOwner(): Owner {
  if (!self) self = { pid: process.pid, host: os.hostname(), boot: bootId(), start: processStart(process.pid) ?? undefined };
  return self;
}

const MAX_ATTEMPTS = 100;

export class VolumeLock {
  private constructor(
    private readonly fileIO: FileIO,
    readonly path: string,
    readonly token: string,
  ) {}

  static async acquire(fileIO: FileIO, path: string, what: string): Promise<VolumeLock> {
    let set = held.get(fileIO);
    if (!set) held.set(fileIO, (set = new Set()));
    let busy = acquiring.get(fileIO);
    if (!busy) acquiring.set(fileIO, (busy = new Set()));
    if (set.has(path) || busy.has(path)) throw new VbfsError('VBFS_LOCKED', `${what} is already open for writing in this process`, { path });
    busy.add(path);
    try {
      return await VolumeLock.take(fileIO, path, what, set);
    } finally {
      busy.delete(path);
    }
  }

  private static async take(fileIO: FileIO, path: string, what: string, set: Set<string>): Promise<VolumeLock> {
    const token = randomBytes(8).toString('hex');
    const tmp = `${path}.tmp-${token}`;
    try {
      await writeComplete(fileIO, tmp, Buffer.from(JSON.stringify({ ...currentOwner(), token }) + '\n'));
    } catch (err) {
      await fileIO.unlink(tmp).catch(() => undefined);
      throw new VbfsError('VBFS_IO', `${what}: could not take the lock ${path}: ${(err as Error).message}`, { path, errno: errnoOf(err) }, { cause: err });
    }
    try {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        try {
          await fileIO.link(tmp, path);
          set.add(path);
          await sweepLeftovers(fileIO, path, set).catch(() => undefined);
          return new VolumeLock(fileIO, path, token);
        } catch (err) {
          if (errnoOf(err) !== 'EEXIST') {
            throw new VbfsError(
              'VBFS_IO',
              `${what}: could not take the lock ${path}: ${(err as Error).message}`,
              { path, errno: errnoOf(err) },
              { cause: err },
            );
          }
        }
        const holder = await readLock(fileIO, path);
        if (!holder) continue; // released between our link and our read: try again
        if (isAlive(holder, set, path)) throw lockedError(what, path, holder);
        await removeStale(fileIO, path, holder, tmp, set, 0);
      }
      throw new VbfsError('VBFS_LOCKED', `${what}: could not take the lock ${path} (it kept changing hands)`, { path });
    } finally {
      await fileIO.unlink(tmp).catch(() => undefined);
    }
  }

  async release(): Promise<void> {
    held.get(this.fileIO)?.delete(this.path);
    // Only the owner or the holder of a claim on our token removes LOCK, and nobody
    // claims a live owner's lock: reading, then unlinking, is safe.
    const holder = await readLock(this.fileIO, this.path).catch(() => null);
    if (holder && holder.token === this.token) await this.fileIO.unlink(this.path);
  }
}

function lockedError(what: string, path: string, holder: LockInfo): VbfsError {
  if (holder.torn) {
    return new VbfsError(
      'VBFS_LOCKED',
      `${what}: the lock ${path} is not a complete lock file (an older vbfs opening it right now, or damage); ` +
        'if no vbfs process uses the volume, remove that file',
      { path },
    );
  }
  return new VbfsError('VBFS_LOCKED', `${what} is already open for writing by process ${holder.pid} on ${holder.host}; close it there first`, {
    path,
    pid: holder.pid,
  });
}

/**
 * Remove the stale lock (or stale claim) `holder` found at `path`, unless somebody
 * else is already doing so. `mine` is our complete lock content (linked as the claim,
 * so the claim says who claims). Returns when the caller should look again.
 */
async function removeStale(fileIO: FileIO, path: string, holder: LockInfo, mine: string, set: Set<string>, depth: number): Promise<void> {
  const claim = `${path}.claim-${holder.torn ? 'torn' : holder.token}`;
  try {
    await fileIO.link(mine, claim);
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw err;
    const claimant = await readLock(fileIO, claim);
    if (!claimant) return; // finished meanwhile
    if (isAlive(claimant, set, claim)) {
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 8)); // it is taking over right now
      return;
    }
    // A claimant that died mid-takeover: its claim is stale in turn. Tokens are unique,
    // so each level is a new name and this ends (a few levels at most in practice).
    if (depth >= 8) throw new VbfsError('VBFS_LOCKED', `too many stale claims on ${path}`, { path });
    await removeStale(fileIO, claim, claimant, mine, set, depth + 1);
    return;
  }
  try {
    const now = await readLock(fileIO, path);
    if (now && sameLock(now, holder)) await fileIO.unlink(path);
  } finally {
    await fileIO.unlink(claim);
  }
}

/**
 * Remove `LOCK.tmp-*` and `LOCK.claim-*` files of openers that died between creating
 * and removing them (kill -9 at the wrong moment). Only files whose owner is provably
 * gone: a live opener's temp file or claim is in use.
 */
async function sweepLeftovers(fileIO: FileIO, path: string, set: Set<string>): Promise<void> {
  const dir = path.slice(0, path.lastIndexOf('/'));
  const base = path.slice(path.lastIndexOf('/') + 1);
  for (const n of await fileIO.readdir(dir)) {
    if (!n.startsWith(`${base}.tmp-`) && !n.startsWith(`${base}.claim-`)) continue;
    const file = `${dir}/${n}`;
    const owner = await readLock(fileIO, file);
    if (owner && !owner.torn && !isAlive(owner, set, file)) await fileIO.unlink(file);
  }
}

function sameLock(a: LockInfo, b: LockInfo): boolean {
  if (a.torn || b.torn) return a.torn === true && b.torn === true && a.mtimeMs === b.mtimeMs;
  return a.token === b.token && a.pid === b.pid;
}

async function writeComplete(fileIO: FileIO, path: string, data: Buffer): Promise<void> {
  const fd = await fileIO.open(path, 'wx');
  try {
    await fd.write(data, 0);
    await fd.datasync();
  } finally {
    await fd.close();
  }
}

export async function readLock(fileIO: FileIO, path: string): Promise<LockInfo | null> {
  const st = await fileIO.stat(path);
  if (!st) return null;
  let text: string;
  try {
    text = (await fileIO.readFile(path)).toString('utf8');
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return null;
    throw err;
  }
  try {
    const v = JSON.parse(text) as LockInfo;
    if (typeof v.pid === 'number' && typeof v.host === 'string') {
      return {
        pid: v.pid,
        host: v.host,
        token: typeof v.token === 'string' ? v.token : '',
        boot: typeof v.boot === 'string' ? v.boot : undefined,
        start: typeof v.start === 'number' ? v.start : undefined,
      };
    }
  } catch {
    /* not JSON: see below */
  }
  return { pid: 0, host: '', token: '', torn: true, mtimeMs: st.mtimeMs };
}

/** Is the lock described by `holder` held by a live opener? */
export function isLockHeld(fileIO: FileIO, holder: LockInfo, path: string): boolean {
  return isAlive(holder, held.get(fileIO) ?? new Set(), path);
}

function isAlive(holder: LockInfo, set: Set<string>, path: string): boolean {
  if (holder.torn) {
    // Never written by this version (it links complete files only). Provably stale only
    // if it is older than this boot; otherwise an older vbfs may be writing it now.
    const boot = bootTimeMs();
    return !(holder.mtimeMs !== undefined && boot !== null && holder.mtimeMs < boot);
  }
  return isOwnerAlive(holder, set.has(path));
}

/**
 * Is the process `o` still running? Provably gone: same host and another boot, no
 * such pid, a zombie, or a pid now used by a process started at another time.
 * `inThisProcess` decides for our own pid (same start): whether this instance holds it.
 */
export function isOwnerAlive(o: Owner, inThisProcess: boolean): boolean {
  const me = currentOwner();
  if (o.host !== me.host) return true; // cannot check another host: assume held
  if (o.boot !== undefined && me.boot !== undefined && o.boot !== me.boot) return false;
  if (o.pid <= 0) return false;
  if (o.pid === process.pid && (o.start === undefined || o.start === me.start)) return inThisProcess;
  try {
    process.kill(o.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = processStat(o.pid);
  if (stat === null) return !fs.existsSync('/proc/self/stat'); // no /proc: trust kill(0)
  if (stat.state === 'Z') return false; // exited, not reaped yet: holds nothing
  return o.start === undefined || stat.start === o.start;
}

function errnoOf(err: unknown): string | undefined {
  if (isVbfsError(err)) return err.details['errno'] as string | undefined;
  return (err as NodeJS.ErrnoException | undefined)?.code;
}
