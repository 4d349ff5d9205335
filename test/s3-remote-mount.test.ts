import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { S3Backend } from '../src/backend/s3-backend';
import { cleanupUnder, isMounted, loopsUnder, must, requireFuse, run, sha256, sha256File, tmpDir, vbfs, VBFS_BIN, waitFor } from './helpers/fuse-env';
import { TEST_BUCKET, requireRgw, rgwOptions, rgwTestPrefix, type RgwCluster } from './helpers/rgw';

const MiB = 1024 * 1024;

/**
 * `--durability remote` through bin/vbfs, a real FUSE mount and ext4 on a loop device
 * against a real Ceph RGW (issue 11): files written and `sync`ed, then the mount is
 * SIGKILLed and its store directory (WAL included) wiped, as when a cloud instance
 * loses its local disk. Mounted from a new, empty store directory with --backend, the
 * ext4 is clean and the synced files are intact: every fsync the loop device sent
 * returned only once the bucket had it. (With `batched` the same run loses them: the
 * flush interval is 5 s and the kill comes right after the sync.)
 */
describe('--durability remote through the mount, kill -9 and a lost disk (Ceph RGW)', function () {
  this.timeout(300_000);
  let env: NodeJS.ProcessEnv;
  let root = '';
  const started: ChildProcess[] = [];

  before(async function () {
    this.timeout(300_000);
    requireFuse(this);
    const rgw: RgwCluster = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.close();
    env = {
      ...process.env,
      AWS_ENDPOINT_URL_S3: rgw.endpoint,
      AWS_ACCESS_KEY_ID: rgw.accessKeyId,
      AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey,
      AWS_REGION: rgw.region,
    };
    root = await tmpDir('s3remote');
  });

  after(async () => {
    for (const c of started) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  const cli = (args: string[], store: string) => vbfs(args, store, { env, timeoutMs: 120_000 });

  /** A foreground `vbfs mount` (its pid is the one to kill), ready once the mountpoint is served. */
  async function mountForeground(store: string, mnt: string, extra: string[]): Promise<ChildProcess> {
    const child = spawn(process.execPath, [VBFS_BIN, 'mount', mnt, '--store', store, ...extra], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    started.push(child);
    await waitFor(`mount at ${mnt}`, async () => {
      if (child.exitCode !== null) throw new Error(`mount exited ${child.exitCode}: ${err}`);
      return isMounted(mnt);
    });
    return child;
  }

  it('remote needs a remote backend: refused (exit 2) on a local store', async () => {
    const local = path.join(root, 'local');
    const c = await cli(['create', 'v', '--size', '8M', '--durability', 'remote'], local);
    assert.equal(c.code, 2, c.stdout + c.stderr);
    assert.equal((await cli(['create', 'v', '--size', '8M'], local)).code, 0, 'a batched volume is fine');
  });

  it('ext4 on a loop device, files synced, kill -9, store directory wiped, mounted from a new one: fsck.ext4 clean, synced files intact', async function () {
    requireFuse(this);
    const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
    const store = path.join(root, 'k-store');
    const store2 = path.join(root, 'k-store2');
    const mnt = path.join(root, 'mnt');
    const ext = path.join(root, 'ext');
    await fsp.mkdir(mnt);
    await fsp.mkdir(ext);
    try {
      const c = await cli(['create', 'disk', '--size', '128M', '--durability', 'remote', '--backend', url], store);
      assert.equal(c.code, 0, c.stderr);
      // A short lease: the killed holder's lease must expire before the new mount can take it.
      const child = await mountForeground(store, mnt, ['--lease-ttl', '3']);
      const loop = (await must('losetup', ['-f', '--show', path.join(mnt, 'disk')])).trim();
      const sums = new Map<string, string>();
      await must('mkfs.ext4', ['-q', '-F', loop]);
      await must('mount', [loop, ext]);
      for (let f = 0; f < 20; f++) {
        const rel = path.join(`d${f % 3}`, `file${f}`);
        await fsp.mkdir(path.join(ext, `d${f % 3}`), { recursive: true });
        const data = randomBytes(1 + ((f * 104729) % (300 * 1024)));
        await fsp.writeFile(path.join(ext, rel), data);
        sums.set(rel, sha256(data));
      }
      const big = randomBytes(6 * MiB);
      await fsp.writeFile(path.join(ext, 'big'), big);
      sums.set('big', sha256(big));
      // sync(1): ext4 commits its journal and the loop device fsyncs the volume file.
      await must('sync', []);
      process.kill(child.pid as number, 'SIGKILL');
      await new Promise((r) => child.once('exit', r));

      // Clean up what the dead mount leaves: ext4 off the loop device, the loop device
      // detached, and only then the dead FUSE mount (ENOTCONN) unmounted.
      await run('umount', [ext]);
      if (await isMounted(ext)) await run('umount', ['-l', ext]);
      await run('losetup', ['-d', loop]);
      await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 20_000);
      await run('fusermount', ['-u', mnt]);
      if (await isMounted(mnt)) await run('umount', ['-l', mnt]);
      assert.equal(await isMounted(mnt), false);

      // The machine's local disk is gone: WAL, LOCK, caches.
      await fsp.rm(store, { recursive: true, force: true });
      let m2 = { code: -1, stdout: '', stderr: '' };
      await waitFor(
        'the killed mount lease to expire',
        async () => {
          m2 = await cli(['mount', mnt, '--daemon', '--backend', url], store2);
          if (m2.code !== 0 && !/lease|held/i.test(m2.stderr)) throw new Error(`mount failed: ${m2.stderr}`);
          return m2.code === 0;
        },
        60_000,
      );
      const loop2 = (await must('losetup', ['-f', '--show', path.join(mnt, 'disk')])).trim();
      try {
        const fsck = await run('fsck.ext4', ['-fn', loop2]);
        assert.equal(fsck.code, 0, `fsck.ext4 -fn is not clean:\n${fsck.stdout}${fsck.stderr}`);
        await must('mount', ['-o', 'ro', loop2, ext]);
        try {
          for (const [rel, sum] of sums) assert.equal(await sha256File(path.join(ext, rel)), sum, rel);
        } finally {
          await must('umount', [ext]);
        }
      } finally {
        await run('losetup', ['-d', loop2]);
        await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
      }
      assert.equal((await cli(['unmount', mnt], store2)).code, 0);
    } finally {
      await cleanupUnder(root, [mnt], [ext], fs.existsSync(store2) ? store2 : store);
    }
  });
});
