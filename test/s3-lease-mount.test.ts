import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { cleanupUnder, isMounted, requireFuse, run, sha256, tmpDir, vbfs, VBFS_BIN, waitFor } from './helpers/fuse-env';
import { TEST_BUCKET, requireRgw, rgwCliEnv, rgwTestPrefix, type RgwCluster } from './helpers/rgw';

const MiB = 1024 * 1024;

/**
 * One writer per bucket volume across machines (issue 11), through bin/vbfs and real
 * FUSE mounts against a real Ceph RGW: store directories stand in for machines. A
 * second mount is refused while the lease is live; a holder paused (SIGSTOP) past its
 * TTL is taken over, and when it wakes up its writes fail with EIO and the new
 * writer's data stays intact.
 */
describe('bucket volume lease through the mount (Ceph RGW)', function () {
  this.timeout(120_000);
  let env: NodeJS.ProcessEnv;
  let root = '';
  const started: ChildProcess[] = [];
  /** What each foreground mount wrote to stderr so far. */
  const stderrOf = new Map<ChildProcess, () => string>();
  const mounts: string[] = [];

  before(async function () {
    this.timeout(300_000);
    requireFuse(this);
    const rgw: RgwCluster = await requireRgw(this);
    env = { ...process.env, ...(await rgwCliEnv(rgw)) };
    root = await tmpDir('s3lease');
  });

  after(async () => {
    // A stopped mount must run again to be unmounted; only the processes we started, by pid.
    for (const c of started) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGCONT');
    for (const m of mounts) if (await isMounted(m)) await run('fusermount', ['-u', m]);
    await cleanupUnder(root, mounts, []).catch(() => undefined);
    for (const c of started) {
      if (c.exitCode !== null || c.signalCode !== null || !c.pid) continue;
      const gone = new Promise((r) => c.once('exit', r));
      await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
      if (c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
    }
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  const cli = (args: string[], store: string) => vbfs(args, store, { env, timeoutMs: 60_000 });

  /** A foreground `vbfs mount` (we need its pid to stop it), ready once the mountpoint is served. */
  async function mountForeground(store: string, mnt: string, extra: string[]): Promise<ChildProcess> {
    await fsp.mkdir(mnt, { recursive: true });
    mounts.push(mnt);
    const child = spawn(process.execPath, [VBFS_BIN, 'mount', mnt, '--store', store, ...extra], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    started.push(child);
    stderrOf.set(child, () => err);
    await waitFor(`mount at ${mnt} (${err})`, async () => {
      if (child.exitCode !== null) throw new Error(`mount exited ${child.exitCode}: ${err}`);
      return isMounted(mnt);
    });
    return child;
  }

  async function mountDaemon(store: string, mnt: string, extra: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    await fsp.mkdir(mnt, { recursive: true });
    mounts.push(mnt);
    return cli(['mount', mnt, '--daemon', ...extra], store);
  }

  async function writeAt(file: string, data: Buffer, offset: number): Promise<void> {
    const fh = await fsp.open(file, 'r+');
    try {
      await fh.write(data, 0, data.length, offset);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
    const fh = await fsp.open(file, 'r');
    try {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  }

  /** Wait until the mount has flushed everything of `vol` to the bucket (a flush runs every 5 s). */
  async function flushed(mnt: string, vol: string): Promise<void> {
    await waitFor('the flush to the bucket', async () => {
      const text = await fsp.readFile(path.join(mnt, '.stats'), 'utf8');
      const section = text.split(`[${vol}]`)[1] ?? '';
      const pending = /pending_bytes\s+(\d+)/.exec(section);
      const persisted = /blocks_persisted\s+(\d+)/.exec(section);
      return pending?.[1] === '0' && Number(persisted?.[1] ?? 0) > 0;
    });
  }

  it('a second mount of a volume whose lease is live, from another store directory, exits 1 with one line naming the holder', async () => {
    const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
    const storeA = path.join(root, 'r-a');
    const storeB = path.join(root, 'r-b');
    const mntA = path.join(root, 'r-mnt-a');
    assert.equal((await cli(['create', 'v', '--size', '16M', '--backend', url], storeA)).code, 0);
    const a = await mountForeground(storeA, mntA, []);
    const b = await mountDaemon(storeB, path.join(root, 'r-mnt-b'), ['--backend', url]);
    assert.equal(b.code, 1, b.stdout + b.stderr);
    const lines = b.stderr.trim().split('\n');
    assert.equal(lines.length, 1, b.stderr);
    const line = lines[0] ?? '';
    assert.ok(line.includes("volume 'v'") && line.includes(os.hostname()) && line.includes(`pid ${a.pid}`) && /since \d{4}-\d\d-\d\dT/.test(line), line);
    assert.ok(!(await isMounted(path.join(root, 'r-mnt-b'))));
    const u = await cli(['unmount', mntA], storeA);
    assert.equal(u.code, 0, u.stderr);
    // Released on unmount: the next mount from elsewhere need not wait for the TTL.
    const b2 = await mountDaemon(storeB, path.join(root, 'r-mnt-b'), []);
    assert.equal(b2.code, 0, b2.stderr);
    assert.equal((await cli(['unmount', path.join(root, 'r-mnt-b')], storeB)).code, 0);
  });

  it('a holder stopped past its --lease-ttl is taken over (epoch 2); woken up, its writes and fsyncs fail with EIO and the new data stays intact', async () => {
    const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
    const [storeA, storeB, storeC] = ['t-a', 't-b', 't-c'].map((d) => path.join(root, d)) as [string, string, string];
    const [mntA, mntB, mntC] = ['t-mnt-a', 't-mnt-b', 't-mnt-c'].map((d) => path.join(root, d)) as [string, string, string];
    assert.equal((await cli(['create', 'v', '--size', '16M', '--backend', url], storeA)).code, 0);
    const d1 = randomBytes(MiB);
    const d2 = randomBytes(MiB);
    const d3 = randomBytes(64 * 1024);

    const a = await mountForeground(storeA, mntA, ['--lease-ttl', '3']);
    await writeAt(path.join(mntA, 'v'), d1, 0);
    await flushed(mntA, 'v');
    // Acknowledged (fsync) but not flushed yet when A stops: it never reaches the bucket.
    await writeAt(path.join(mntA, 'v'), d3, 12 * MiB);

    process.kill(a.pid as number, 'SIGSTOP');
    // The taker needs the server's Date minus the lease's Last-Modified past TTL + 1 s (whole seconds).
    await new Promise((r) => setTimeout(r, 5500));
    let b = await mountDaemon(storeB, mntB, ['--backend', url]);
    for (let i = 0; i < 5 && b.code === 1 && /in use by/.test(b.stderr); i++) {
      await new Promise((r) => setTimeout(r, 1000));
      b = await mountDaemon(storeB, mntB, []);
    }
    assert.equal(b.code, 0, b.stderr);
    assert.equal(sha256(await readAt(path.join(mntB, 'v'), 0, MiB)), sha256(d1), 'B reads what A flushed');
    await writeAt(path.join(mntB, 'v'), d2, 4 * MiB);

    process.kill(a.pid as number, 'SIGCONT');
    // A's next write or its fsync fails: EIO (the kernel may buffer the write itself).
    let failure: NodeJS.ErrnoException | null = null;
    try {
      await writeAt(path.join(mntA, 'v'), d3, 8 * MiB);
    } catch (err) {
      failure = err as NodeJS.ErrnoException;
    }
    assert.equal(failure?.code, 'EIO', `A's write after the takeover: ${String(failure)}`);
    // And again, now that the volume has failed.
    await assert.rejects(writeAt(path.join(mntA, 'v'), d3, 0), (e: NodeJS.ErrnoException) => e.code === 'EIO');

    assert.equal((await cli(['unmount', mntB], storeB)).code, 0);
    const c = await mountDaemon(storeC, mntC, ['--backend', url]);
    assert.equal(c.code, 0, c.stderr);
    const vc = path.join(mntC, 'v');
    assert.equal(sha256(await readAt(vc, 0, MiB)), sha256(d1), 'D1');
    assert.equal(sha256(await readAt(vc, 4 * MiB, MiB)), sha256(d2), 'D2');
    assert.ok((await readAt(vc, 8 * MiB, d3.length)).equals(Buffer.alloc(d3.length)), "the fenced writer's data is not there");
    assert.equal((await cli(['unmount', mntC], storeC)).code, 0);

    // A still serves its (failed) mount: take it down; then a mount from A's directory
    // must not replay A's WAL over what B wrote.
    await run('fusermount', ['-u', mntA]);
    await new Promise((r) => (a.exitCode !== null || a.signalCode !== null ? r(null) : a.once('exit', r)));
    // Its close could not flush the write at 12 MiB: it says so and exits 1, not "unmounted cleanly".
    const aErr = stderrOf.get(a)?.() ?? '';
    assert.equal(a.exitCode, 1, aErr);
    assert.match(aErr, /lease lost, \d+ bytes of writes/);
    assert.doesNotMatch(aErr, /unmounted cleanly/);
    const a2 = await mountDaemon(storeA, mntA, []);
    assert.equal(a2.code, 0, a2.stderr);
    assert.equal(sha256(await readAt(path.join(mntA, 'v'), 0, MiB)), sha256(d1), 'D1 from A again');
    assert.equal(sha256(await readAt(path.join(mntA, 'v'), 4 * MiB, MiB)), sha256(d2), 'D2 from A again');
    assert.equal((await cli(['unmount', mntA], storeA)).code, 0);
  });
});
