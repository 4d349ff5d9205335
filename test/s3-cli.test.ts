import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupUnder, loopsUnder, must, requireFuse, sha256, tmpDir, vbfs, waitFor, verifyExt4OnLoop } from './helpers/fuse-env';
import { TEST_BUCKET, requireRgw, rgwCliEnv, rgwTestPrefix, type RgwCluster } from './helpers/rgw';

const MiB = 1024 * 1024;

/**
 * `--backend s3://BUCKET/PREFIX` through bin/vbfs against a real Ceph RGW: the SDK's
 * environment variables carry endpoint and credentials, the store directory remembers
 * the backend (store.json, no secret in it), and a volume written through a real
 * mount (ext4 on a loop device) is mounted again from a new, empty store directory.
 */
describe('vbfs --backend s3:// (Ceph RGW)', function () {
  this.timeout(300_000);
  let rgw: RgwCluster;
  let env: NodeJS.ProcessEnv;
  let root = '';

  before(async function () {
    this.timeout(300_000);
    rgw = await requireRgw(this);
    env = await rgwCliEnv(rgw);
    root = await tmpDir('s3cli');
  });
  after(async () => {
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  const cli = (args: string[], store: string) => vbfs(args, store, { env, timeoutMs: 120_000 });

  it('create/list/info with --backend; later commands use the remembered backend; a different --backend is refused', async () => {
    const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
    const store = path.join(root, 'cli-store');
    const c = await cli(['create', 'vol1', '--size', '64M', '--backend', url], store);
    assert.equal(c.code, 0, c.stderr);
    const cfgPath = path.join(store, 'store.json');
    const cfg = fs.readFileSync(cfgPath, 'utf8');
    assert.equal(fs.statSync(cfgPath).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(cfg), { backend: `${url}/` });
    assert.ok(!cfg.includes(rgw.secretAccessKey) && !cfg.includes(rgw.accessKeyId), 'no credential on disk');
    for (const f of await fsp.readdir(store, { recursive: true })) {
      const p = path.join(store, f);
      if (fs.statSync(p).isFile()) assert.ok(!fs.readFileSync(p, 'utf8').includes(rgw.secretAccessKey), `secret in ${p}`);
    }

    // No --backend: the remembered one.
    const c2 = await cli(['create', 'vol2', '--size', '8M', '--durability', 'strict'], store);
    assert.equal(c2.code, 0, c2.stderr);
    const list = await cli(['list', '--json'], store);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      (JSON.parse(list.stdout) as { name: string }[]).map((v) => v.name),
      ['vol1', 'vol2'],
    );
    const info = await cli(['info', 'vol2', '--json'], store);
    assert.equal(info.code, 0, info.stderr);
    assert.equal((JSON.parse(info.stdout) as { durability: string; size: number }).size, 8 * MiB);

    // The same bucket seen from another, empty directory.
    const other = path.join(root, 'cli-other');
    const list2 = await cli(['list', '--json', '--backend', url], other);
    assert.equal(list2.code, 0, list2.stderr);
    assert.equal((JSON.parse(list2.stdout) as unknown[]).length, 2);

    // Another backend for a store that remembers one: refused, nothing changed.
    const bad = await cli(['list', '--backend', `s3://${TEST_BUCKET}/elsewhere`], store);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /uses the backend/);
    assert.equal(fs.readFileSync(cfgPath, 'utf8'), cfg);

    // A store whose volumes are local cannot be switched to a bucket.
    const local = path.join(root, 'cli-local');
    assert.equal((await cli(['create', 'l', '--size', '8M'], local)).code, 0);
    const mixed = await cli(['list', '--backend', url], local);
    assert.equal(mixed.code, 2, mixed.stderr);
    assert.ok(!fs.existsSync(path.join(local, 'store.json')));

    const help = await cli(['--help'], store);
    assert.match(help.stdout, /--backend/);
    assert.match(help.stdout, /--s3-path-style/);
  });

  it('--s3-path-style=false reaches the SDK (virtual-hosted: BUCKET.localhost does not resolve) and is remembered; --s3-path-style turns it back', async () => {
    const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
    const store = path.join(root, 'ps-store');
    // A host name, not an IP address: the SDK uses path-style for an IP whatever it is told.
    const byName = { env: { ...env, AWS_ENDPOINT_URL_S3: rgw.endpoint.replace('127.0.0.1', 'localhost') }, timeoutMs: 120_000 };
    const run2 = (args: string[]) => vbfs(args, store, byName);
    assert.equal((await run2(['create', 'v', '--size', '8M', '--backend', url])).code, 0);
    const off = await run2(['list', '--s3-path-style=false']);
    assert.equal(off.code, 1, off.stdout + off.stderr);
    assert.match(off.stderr, /vbfs-test\.localhost|ENOTFOUND/);
    assert.equal((JSON.parse(fs.readFileSync(path.join(store, 'store.json'), 'utf8')) as { s3PathStyle?: boolean }).s3PathStyle, false);
    assert.equal((await run2(['list'])).code, 1, 'remembered');
    const on = await run2(['list', '--s3-path-style']);
    assert.equal(on.code, 0, on.stderr);
    assert.match(on.stdout, /\bv\b/);
  });

  it('real FUSE mount: ext4 on a loop device, unmount, wipe the store directory, mount from a new one: fsck.ext4 clean, same files; vbfs fsck clean', async function () {
    requireFuse(this);
    const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
    const store = path.join(root, 'm-store');
    const store2 = path.join(root, 'm-store2');
    const mnt = path.join(root, 'mnt');
    const ext = path.join(root, 'ext');
    await fsp.mkdir(mnt);
    await fsp.mkdir(ext);
    try {
      assert.equal((await cli(['create', 'disk', '--size', '128M', '--backend', url], store)).code, 0);
      const m = await cli(['mount', mnt, '--daemon'], store);
      assert.equal(m.code, 0, m.stderr);
      const disk = path.join(mnt, 'disk');
      const loop = (await must('losetup', ['-f', '--show', disk])).trim();
      const sums = new Map<string, string>();
      try {
        await must('mkfs.ext4', ['-q', '-F', loop]);
        await must('mount', [loop, ext]);
        try {
          for (let f = 0; f < 30; f++) {
            const rel = path.join(`d${f % 3}`, `file${f}`);
            await fsp.mkdir(path.join(ext, `d${f % 3}`), { recursive: true });
            const data = randomBytes(1 + ((f * 104729) % (400 * 1024)));
            await fsp.writeFile(path.join(ext, rel), data);
            sums.set(rel, sha256(data));
          }
          const big = randomBytes(12 * MiB);
          await fsp.writeFile(path.join(ext, 'big'), big);
          sums.set('big', sha256(big));
        } finally {
          await must('umount', [ext]);
        }
      } finally {
        await must('losetup', ['-d', loop]); // before the FUSE unmount, never after
        await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
      }
      const u = await cli(['unmount', mnt], store);
      assert.equal(u.code, 0, u.stderr);

      // The machine is gone: its store directory (WAL, LOCK) with it.
      await fsp.rm(store, { recursive: true, force: true });
      const m2 = await cli(['mount', mnt, '--daemon', '--backend', url], store2);
      assert.equal(m2.code, 0, m2.stderr);
      await verifyExt4OnLoop(path.join(mnt, 'disk'), ext, mnt, sums);
      assert.equal((await cli(['unmount', mnt], store2)).code, 0);
      const f = await cli(['fsck', 'disk', '--json'], store2);
      assert.equal(f.code, 0, f.stdout + f.stderr);
      const report = JSON.parse(f.stdout) as { errors: number; mappedBlocks: number; chunks: number };
      assert.equal(report.errors, 0);
      assert.ok(report.mappedBlocks > 3000, `blocks mapped from the bucket: ${report.mappedBlocks}`);
    } finally {
      await cleanupUnder(root, [mnt], [ext], fs.existsSync(store2) ? store2 : store);
    }
  });
});
