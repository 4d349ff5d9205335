import * as fs from 'node:fs';
import * as os from 'node:os';
import { randomBytes } from 'node:crypto';
import { VbfsError } from '../errors';
import type { FileIO } from '../io/file-io';

/**
 * Single-writer lock of a volume: a LOCK file created with O_EXCL holding
 * {pid, host, token}. A lock whose process is gone (same host) is stale and taken
 * over. Locks held by this process are also tracked in memory (per file layer), so
 * a second open in the same process is refused too, while a LOCK left behind by a
 * simulated crash of an earlier in-process instance is recognised as stale.
 */
const held = new WeakMap<FileIO, Set<string>>();

export interface LockInfo {
  pid: number;
  host: string;
  token: string;
}

export class VolumeLock {
  private constructor(private readonly fileIO: FileIO, readonly path: string, readonly token: string) {}

  static async acquire(fileIO: FileIO, path: string, what: string): Promise<VolumeLock> {
    let set = held.get(fileIO);
    if (!set) held.set(fileIO, (set = new Set()));
    if (set.has(path)) throw new VbfsError('VBFS_LOCKED', `${what} is already open for writing in this process`, { path });
    for (let attempt = 0; attempt < 3; attempt++) {
      const holder = await readLock(fileIO, path);
      if (holder) {
        if (isAlive(holder, set, path)) {
          throw new VbfsError('VBFS_LOCKED', `${what} is already open for writing by process ${holder.pid} on ${holder.host}; close it there first`, { path, pid: holder.pid });
        }
        await fileIO.unlink(path);
      }
      const token = randomBytes(8).toString('hex');
      try {
        const fd = await fileIO.open(path, 'wx');
        await fd.write(Buffer.from(JSON.stringify({ pid: process.pid, host: os.hostname(), token }) + '\n'), 0);
        await fd.datasync();
        await fd.close();
      } catch {
        continue; // somebody else created it between our check and our create: look again
      }
      set.add(path);
      return new VolumeLock(fileIO, path, token);
    }
    throw new VbfsError('VBFS_LOCKED', `${what}: could not take the lock ${path}`, { path });
  }

  async release(): Promise<void> {
    held.get(this.fileIO)?.delete(this.path);
    const holder = await readLock(this.fileIO, this.path).catch(() => null);
    if (holder && holder.token === this.token) await this.fileIO.unlink(this.path);
  }
}

export async function readLock(fileIO: FileIO, path: string): Promise<LockInfo | null> {
  if (!(await fileIO.stat(path))) return null;
  try {
    const v = JSON.parse((await fileIO.readFile(path)).toString('utf8')) as LockInfo;
    if (typeof v.pid === 'number' && typeof v.host === 'string') return v;
  } catch {
    /* a torn lock file (crash during create) is stale */
  }
  return { pid: 0, host: os.hostname(), token: '' };
}

/** Is the lock described by `holder` held by a live opener? */
export function isLockHeld(fileIO: FileIO, holder: LockInfo, path: string): boolean {
  return isAlive(holder, held.get(fileIO) ?? new Set(), path);
}

function isAlive(holder: LockInfo, set: Set<string>, path: string): boolean {
  if (holder.host !== os.hostname()) return true; // cannot check another host: assume held
  if (holder.pid <= 0) return false;
  if (holder.pid === process.pid) return set.has(path);
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  return !isZombie(holder.pid);
}

/** A process that has exited but was not reaped yet still answers kill(0); it holds nothing. */
function isZombie(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) S ...": comm may contain spaces or parentheses, so look after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return false;
  }
}
