/**
 * Helpers for tests that really mount: run commands asynchronously (a FUSE server
 * in this same process would deadlock on a synchronous child), drive bin/vbfs,
 * and clean up mounts and loop devices in the right order (filesystem, then loop
 * device, then the FUSE mount).
 */
import * as assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';

export const REPO = path.resolve(__dirname, '..', '..', '..');
export const VBFS_BIN = path.join(REPO, 'bin', 'vbfs');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Run and insist on success, with the output in the failure message. */
export async function must(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}:\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

export function vbfs(args: string[], store: string, opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  const env = { ...process.env, ...(opts.env ?? {}), VBFS_STORE: store };
  return run(process.execPath, [VBFS_BIN, ...args], { ...opts, env });
}

/** Why real mounts cannot run here, or null if they can. */
export function fuseUnavailableReason(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root (losetup and mount need root)';
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse is missing';
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- only whether the native addon loads
    require('fuse-native');
  } catch (err) {
    return `fuse-native does not load: ${(err as Error).message}`;
  }
  return null;
}

/**
 * In a `before` hook: skip the suite with a visible reason when FUSE is missing,
 * but fail loudly in CI, where these tests must run.
 */
export function requireFuse(ctx: Mocha.Context): void {
  const why = fuseUnavailableReason();
  if (!why) return;
  if (process.env['CI'] === 'true') throw new Error(`FUSE tests cannot run in CI: ${why}`);
  console.log(`      SKIPPED (FUSE unavailable: ${why}; set CI=true to make this a failure)`);
  ctx.skip();
}

export async function tmpDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), `vbfs-${prefix}-`));
}

export function sha256(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

export async function sha256File(file: string, offset = 0, length?: number): Promise<string> {
  const h = createHash('sha256');
  const fh = await fsp.open(file, 'r');
  try {
    const end = length === undefined ? (await fh.stat()).size : offset + length;
    const buf = Buffer.alloc(1 << 20);
    for (let pos = offset; pos < end;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

export async function isMounted(mountpoint: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === mountpoint);
}

export async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Loop devices whose backing file is under `dir`. */
export async function loopsUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await fsp.readdir('/sys/block').catch(() => [] as string[])) {
    if (!name.startsWith('loop')) continue;
    const f = await fsp.readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '');
    if (f.trim().startsWith(dir + '/')) out.push(`/dev/${name}`);
  }
  return out;
}

/** A foreground `vbfs mount` we started (so we can SIGKILL it by pid). */
export interface ForegroundMount {
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
}

export function spawnForegroundMount(store: string, mountpoint: string, extra: string[] = []): ForegroundMount {
  let output = '';
  const child = spawn(process.execPath, [VBFS_BIN, 'mount', mountpoint, '--store', store, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, output: () => output };
}

/**
 * Tear down everything under `root` in the safe order: filesystems mounted on
 * loop devices, the loop devices (losetup -d BEFORE the FUSE unmount), then the
 * FUSE mounts. Best effort; used in `after` hooks.
 */
export async function cleanupUnder(root: string, fuseMounts: string[], loopMounts: string[], store?: string): Promise<void> {
  for (const m of loopMounts) if (await isMounted(m)) await run('umount', [m]);
  for (const dev of await loopsUnder(root)) await run('losetup', ['-d', dev]);
  // losetup -d is asynchronous in the kernel: wait until the backing files are released.
  await waitFor('loop devices to detach', async () => (await loopsUnder(root)).length === 0, 10_000).catch(() => undefined);
  for (const m of fuseMounts) {
    if (!(await isMounted(m))) continue;
    const r = store ? await vbfs(['unmount', m], store) : await run('fusermount', ['-u', m]);
    if (r.code !== 0 && (await isMounted(m))) {
      await run('fusermount', ['-u', m]);
      if (await isMounted(m)) await run('umount', ['-l', m]);
    }
  }
}

/**
 * The ext4 check every real-mount test ends with: attach `disk` (a volume file in the
 * FUSE mount `mnt`) to a loop device, `fsck.ext4 -fn` must be clean, mount it
 * read-only at `ext` and compare every file with its SHA-256 in `sums`. The loop
 * device is detached, and gone from under `mnt`, before this returns, so the caller
 * may unmount the FUSE mount (never the other way round).
 */
export async function verifyExt4OnLoop(disk: string, ext: string, mnt: string, sums: Map<string, string>): Promise<void> {
  const loop = (await must('losetup', ['-f', '--show', disk])).trim();
  try {
    await checkExt4(loop, ext, sums);
  } finally {
    await run('losetup', ['-d', loop]);
    await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
  }
}

/** The ext4 on an attached (and unmounted) loop device: fsck.ext4 -fn clean, then mounted read-only, every file of `sums` has its checksum. */
export async function checkExt4(loop: string, ext: string, sums: Map<string, string>): Promise<void> {
  const fsck = await run('fsck.ext4', ['-fn', loop]);
  assert.equal(fsck.code, 0, `fsck.ext4 -fn is not clean:\n${fsck.stdout}${fsck.stderr}`);
  await must('mount', ['-o', 'ro', loop, ext]);
  try {
    for (const [rel, sum] of sums) assert.equal(await sha256File(path.join(ext, rel)), sum, rel);
  } finally {
    await must('umount', [ext]);
  }
}
