import * as fs from 'node:fs';

/**
 * Processes and the boot, as Linux's /proc shows them: enough to tell whether the
 * process named in a lock or a mount record is still the one that wrote it. The
 * volume lock (store/lock.ts), the mount records (cli/store.ts) and the mount
 * (fuse/mount.ts) share these, so there is one /proc/<pid>/stat parser.
 */

/** State and start time of a process from /proc/<pid>/stat, or null if it is gone. */
export function processStat(pid: number): { state: string; start: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // "pid (comm) S ppid ...": comm may contain spaces or parentheses, so split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
  return { state: fields[0] ?? '', start: Number(fields[19]) };
}

/**
 * The start time of a process (clock ticks since boot, field 22 of /proc/<pid>/stat),
 * or null. A pid and its start time name one process even after the pid is reused.
 */
export function processStart(pid: number): number | null {
  const s = processStat(pid);
  return s && Number.isFinite(s.start) ? s.start : null;
}

/** processStart() as the mount records store it (a string), or null. */
export function processStartTime(pid: number): string | null {
  const start = processStart(pid);
  return start === null ? null : String(start);
}

/** Is pid alive (and ours to signal)? */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie has exited; in a container whose init does not reap, it lingers.
  const stat = processStat(pid);
  return stat === null || stat.state !== 'Z';
}

/** This boot's id (/proc/sys/kernel/random/boot_id), or undefined without /proc. */
export function bootId(): string | undefined {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

let bootMs: number | null | undefined;
/** When this boot started (ms since the epoch), from /proc/stat btime. */
export function bootTimeMs(): number | null {
  if (bootMs === undefined) {
    try {
      const m = /^btime (\d+)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'));
      bootMs = m ? Number(m[1]) * 1000 : null;
    } catch {
      bootMs = null;
    }
  }
  return bootMs;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
