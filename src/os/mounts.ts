/**
 * The host's mounts as vbfs sees them: the mount table, loop devices, the unmount
 * helpers. Nothing here imports fuse-native, so the CLI uses it (`vbfs unmount`,
 * stale-mount checks) on a machine where libfuse is missing, and the FUSE mount
 * (fuse/mount.ts) uses the same code to watch and leave its own mount.
 *
 * Every external command runs asynchronously on purpose: the process that serves a
 * mount must never block its event loop while the kernel unmounts, because the
 * kernel may need that same process to answer FLUSH/RELEASE first (a synchronous
 * `fusermount -u` from inside the daemon deadlocks).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VbfsError } from '../errors';

export interface MountEntry {
  mountId: number;
  mountpoint: string;
  fstype: string; // e.g. 'fuse.vbfs'
  source: string; // e.g. 'vbfs:/var/lib/vbfs'
  options: string;
}

/** Mount table lines escape space, tab, newline and backslash as \ooo octal. */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const id = Number(left[0]);
    const mnt = left[4];
    if (!Number.isFinite(id) || mnt === undefined) continue;
    out.push({
      mountId: id,
      mountpoint: unescapeMountField(mnt),
      fstype: right[0] ?? '',
      source: unescapeMountField(right[1] ?? ''),
      options: right[2] ?? '',
    });
  }
  return out;
}

async function readMounts(): Promise<MountEntry[]> {
  return parseMountInfo(await fsp.readFile('/proc/self/mountinfo', 'utf8'));
}

/** The topmost mount at exactly `mountpoint` (absolute), or null. */
export async function findMount(mountpoint: string): Promise<MountEntry | null> {
  const mounts = await readMounts();
  let found: MountEntry | null = null;
  for (const m of mounts) if (m.mountpoint === mountpoint) found = m; // later lines are stacked on top
  return found;
}

export function isVbfsMount(m: MountEntry): boolean {
  return m.fstype === 'fuse.vbfs' || m.source === 'vbfs' || m.source.startsWith('vbfs:');
}

/** The store directory recorded in the mount's source ('vbfs:<store>'), if any. */
export function storeFromMount(m: MountEntry): string | null {
  return m.source.startsWith('vbfs:') && m.source.length > 5 ? m.source.slice(5) : null;
}

export interface LoopDevice {
  device: string; // /dev/loopN
  backingFile: string;
}

/** Every attached loop device and its backing file, from /sys (no losetup needed). */
async function listLoopDevices(sysBlock = '/sys/block'): Promise<LoopDevice[]> {
  let names: string[];
  try {
    names = await fsp.readdir(sysBlock);
  } catch {
    return [];
  }
  const out: LoopDevice[] = [];
  for (const name of names) {
    if (!name.startsWith('loop')) continue;
    try {
      const file = (await fsp.readFile(path.join(sysBlock, name, 'loop', 'backing_file'), 'utf8')).trim();
      if (file) out.push({ device: `/dev/${name}`, backingFile: file.replace(/ \(deleted\)$/, '') });
    } catch {
      // Not attached (no loop/backing_file) or detached while we looked.
    }
  }
  return out;
}

/** Loop devices whose backing file lives inside `mountpoint`. */
export async function loopDevicesUnder(mountpoint: string, sysBlock?: string): Promise<LoopDevice[]> {
  const prefix = mountpoint.endsWith('/') ? mountpoint : mountpoint + '/';
  return (await listLoopDevices(sysBlock)).filter((l) => l.backingFile.startsWith(prefix));
}

export function loopRefusal(mountpoint: string, loops: LoopDevice[]): VbfsError {
  const list = loops.map((l) => `${l.device} (${l.backingFile})`).join(', ');
  const first = loops[0]?.device ?? '/dev/loopN';
  return new VbfsError(
    'VBFS_BUSY',
    `refusing to unmount ${mountpoint}: loop device ${list} is still attached; ` +
      `unmount the filesystem on it and run 'losetup -d ${first}' first, or use --force (the loop device will see I/O errors)`,
    { mountpoint, loops },
  );
}

interface RunResult {
  ok: boolean;
  missing: boolean; // command not found
  out: string;
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const out = `${stdout}${stderr}`.trim();
      if (!err) return resolve({ ok: true, missing: false, out });
      const code = (err as NodeJS.ErrnoException).code;
      resolve({ ok: false, missing: code === 'ENOENT', out: out || err.message });
    });
  });
}

export function commandExists(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (!dir) continue;
    try {
      fs.accessSync(path.join(dir, cmd), fs.constants.X_OK);
      return true;
    } catch {
      // keep looking
    }
  }
  return false;
}

/**
 * Unmount `mountpoint` with the first helper that exists: fusermount (package
 * `fuse`), fusermount3 (package `fuse3`, which replaces `fuse` on Debian), then
 * umount(8) (root only). Non-lazy unless `lazy`: a busy mount stays mounted and we
 * report why, instead of detaching it under a loop device that still uses it.
 * Resolves when the mount is gone; rejects with VBFS_BUSY or VBFS_IO otherwise.
 */
export async function unmountPath(mountpoint: string, opts: { lazy?: boolean } = {}): Promise<void> {
  const lazy = opts.lazy === true;
  const attempts: Array<[string, string[]]> = [
    ['fusermount', [lazy ? '-uz' : '-u', mountpoint]],
    ['fusermount3', [lazy ? '-uz' : '-u', mountpoint]],
    ['umount', lazy ? ['-l', mountpoint] : [mountpoint]],
  ];
  const failures: string[] = [];
  for (const [cmd, args] of attempts) {
    if ((await findMount(mountpoint)) === null) return;
    const r = await run(cmd, args);
    if (r.missing) continue;
    if (r.ok || (await findMount(mountpoint)) === null) return;
    failures.push(`${cmd}: ${r.out}`);
    if (/busy/i.test(r.out)) {
      throw new VbfsError('VBFS_BUSY', `${mountpoint} is busy: a process still has a volume file open (see 'fuser -vm ${mountpoint}')`, {
        mountpoint,
        output: r.out,
      });
    }
  }
  if ((await findMount(mountpoint)) === null) return;
  throw new VbfsError(
    'VBFS_IO',
    failures.length
      ? `cannot unmount ${mountpoint}: ${failures.join('; ')}`
      : `cannot unmount ${mountpoint}: none of fusermount, fusermount3, umount is installed (Debian package 'fuse')`,
    { mountpoint },
  );
}

/**
 * The path the kernel records for a mountpoint: every symlink resolved, the last
 * component too (a mountpoint given as a symlink is mounted on its target). The
 * mountpoint itself may be a dead mount (stat gives ENOTCONN): then its parent is
 * resolved and a symlink in the last component is followed by hand.
 *
 * Never call this from the process that serves a mount on a path below that mount:
 * the stat calls would wait on this same process.
 */
export function canonicalMountpoint(p: string): string {
  let abs = path.resolve(p);
  for (let hops = 0; hops < 40; hops++) {
    try {
      return fs.realpathSync(abs);
    } catch {
      // dead mount or missing: resolve the parent and look at the last component
    }
    let joined: string;
    try {
      joined = path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
    } catch {
      return abs;
    }
    let target: string;
    try {
      target = fs.readlinkSync(joined);
    } catch {
      return joined; // not a symlink (or a dead mount): this is the path
    }
    abs = path.resolve(path.dirname(joined), target);
  }
  return abs;
}

/** errno of stat(mountpoint): 'ENOTCONN' is the mark of a mount whose process died. */
export async function statErrno(p: string): Promise<string | null> {
  try {
    await fsp.stat(p);
    return null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'EIO';
  }
}
