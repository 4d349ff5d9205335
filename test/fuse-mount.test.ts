/**
 * Real mounts of a real Store through bin/vbfs: dd, unaligned pwrite, fio with
 * verification, ext4 on a loop device across unmount/remount, kill -9 recovery,
 * signals, and the mount.fuse form. Needs root and /dev/fuse; skipped with a
 * visible reason elsewhere, and a failure in CI (CI=true).
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import {
  cleanupUnder,
  isMounted,
  loopsUnder,
  must,
  requireFuse,
  run,
  sha256,
  sha256File,
  spawnForegroundMount,
  tmpDir,
  vbfs,
  waitFor,
  type ForegroundMount,
  verifyExt4OnLoop,
} from './helpers/fuse-env';

const MiB = 1024 * 1024;

describe('FUSE mount of a real store (bin/vbfs)', function () {
  this.timeout(180_000);

  let root = '';
  let store = '';
  let mnt = '';
  let ext = '';
  const foreground: ForegroundMount[] = [];

  async function mountDaemon(): Promise<void> {
    const r = await vbfs(['mount', mnt, '--daemon'], store);
    assert.equal(r.code, 0, `vbfs mount --daemon failed: ${r.stderr}`);
    assert.ok(await isMounted(mnt), 'mount must be ready when --daemon returns');
  }

  async function unmount(): Promise<void> {
    if (!(await isMounted(mnt))) return;
    const r = await vbfs(['unmount', mnt], store);
    assert.equal(r.code, 0, `vbfs unmount failed: ${r.stderr}`);
    assert.equal(await isMounted(mnt), false);
  }

  before(async function () {
    requireFuse(this);
    root = await tmpDir('fuse');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    ext = path.join(root, 'ext');
    await fsp.mkdir(mnt);
    await fsp.mkdir(ext);
    for (const [name, size, extra] of [
      ['disk', '256M', []],
      ['strict', '64M', ['--durability', 'strict']],
      ['fio', '128M', []],
    ] as const) {
      const r = await vbfs(['create', name, '--size', size, ...extra], store);
      assert.equal(r.code, 0, r.stderr);
    }
    await mountDaemon();
  });

  after(async function () {
    if (!root) return;
    await cleanupUnder(root, [mnt], [ext], store);
    for (const f of foreground) {
      if (f.child.exitCode === null && f.child.signalCode === null) f.child.kill('SIGKILL');
    }
    if (!(await isMounted(mnt))) await fsp.rm(root, { recursive: true, force: true });
  });

  it('shows each volume as a file of its size, and a read-only .stats', async () => {
    const names = (await fsp.readdir(mnt)).sort();
    assert.deepEqual(names, ['.stats', 'disk', 'fio', 'strict']);
    assert.equal((await fsp.stat(path.join(mnt, 'disk'))).size, 256 * MiB);
    assert.equal((await fsp.stat(path.join(mnt, 'strict'))).size, 64 * MiB);
    const stats = await fsp.readFile(path.join(mnt, '.stats'), 'utf8');
    assert.match(stats, /\[disk\]/);
    assert.match(stats, /fsync_p99_ms/);
    await assert.rejects(fsp.writeFile(path.join(mnt, '.stats'), 'x'), { code: 'EACCES' });
  });

  for (const bs of ['1M', '4K']) {
    it(`dd bs=${bs} conv=fsync writes what reads back`, async () => {
      const src = path.join(root, `src-${bs}`);
      await fsp.writeFile(src, randomBytes(8 * MiB));
      const seek = bs === '1M' ? 16 : 16 * 256; // at 16 MiB
      await must('dd', [`if=${src}`, `of=${path.join(mnt, 'disk')}`, `bs=${bs}`, `seek=${seek}`, 'conv=fsync,notrunc', 'status=none']);
      assert.equal(await sha256File(path.join(mnt, 'disk'), 16 * MiB, 8 * MiB), await sha256File(src));
    });
  }

  it('dd without conv=notrunc gets a clear error (volume files cannot be resized)', async () => {
    const r = await run('dd', ['if=/dev/zero', `of=${path.join(mnt, 'strict')}`, 'bs=4k', 'count=1', 'status=none']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not supported/i);
    assert.equal((await fsp.stat(path.join(mnt, 'strict'))).size, 64 * MiB);
  });

  it('unaligned pwrite/pread round-trip, across block boundaries and at the end', async () => {
    const fh = await fsp.open(path.join(mnt, 'strict'), 'r+');
    try {
      const cases: Array<[number, number]> = [
        [1, 1],
        [4095, 2],
        [12345, 100_000],
        [3 * MiB - 7, 131072 + 13],
        [64 * MiB - 10, 10], // the very end
      ];
      const expected = new Map<number, Buffer>();
      for (const [pos, len] of cases) {
        const data = randomBytes(len);
        const { bytesWritten } = await fh.write(data, 0, len, pos);
        assert.equal(bytesWritten, len);
        expected.set(pos, data);
      }
      await fh.sync();
      for (const [pos, data] of expected) {
        const back = Buffer.alloc(data.length);
        const { bytesRead } = await fh.read(back, 0, data.length, pos);
        assert.equal(bytesRead, data.length);
        assert.equal(sha256(back), sha256(data), `mismatch at ${pos}`);
      }
      // Past the end: reads return nothing, writes fail with ENOSPC.
      const { bytesRead } = await fh.read(Buffer.alloc(10), 0, 10, 64 * MiB);
      assert.equal(bytesRead, 0);
      await assert.rejects(fh.write(Buffer.alloc(10), 0, 10, 64 * MiB), { code: 'ENOSPC' });
    } finally {
      await fh.close();
    }
  });

  it('refuses namespace changes: truncate to another size, rm, create', async () => {
    const f = path.join(mnt, 'strict');
    await fsp.truncate(f, 64 * MiB); // same size: accepted
    await assert.rejects(fsp.truncate(f, MiB), { code: /^(ENOTSUP|EOPNOTSUPP)$/ }); // Node names errno 95 ENOTSUP
    await assert.rejects(fsp.unlink(f), { code: 'EPERM' });
    await assert.rejects(fsp.writeFile(path.join(mnt, 'newfile'), 'x'), { code: 'EPERM' });
  });

  it('a volume created while mounted appears; deleting a mounted volume is refused', async () => {
    const c = await vbfs(['create', 'late', '--size', '8M'], store);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, new RegExp(`${mnt}/late`));
    assert.equal((await fsp.stat(path.join(mnt, 'late'))).size, 8 * MiB);
    await fsp.writeFile(path.join(mnt, 'late'), Buffer.alloc(4096, 7), { flag: 'r+' });
    const d = await vbfs(['delete', 'late', '--yes'], store);
    assert.equal(d.code, 1);
    assert.match(d.stderr, /in use by the mount/);
    assert.equal(d.stderr.trim().split('\n').length, 1, 'one line on stderr');
  });

  it('vbfs stats prints the live counters of the mount', async () => {
    const r = await vbfs(['stats', mnt, '--json'], store);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { mount: Record<string, number>; volumes: Record<string, Record<string, number>> };
    assert.equal(s.mount['volumes'], Object.keys(s.volumes).length);
    assert.ok(s.volumes['disk']!['writes']! > 0);
    assert.ok(s.volumes['disk']!['fsyncs']! > 0);
  });

  it('.stats and vbfs stats count the blocks in each state (strict: none left Hot after a write)', async () => {
    const fh = await fsp.open(path.join(mnt, 'strict'), 'r+');
    try {
      await fh.write(Buffer.alloc(64 * 1024, 5), 0, 64 * 1024, 8 * MiB);
    } finally {
      await fh.close();
    }
    const text = await fsp.readFile(path.join(mnt, '.stats'), 'utf8');
    for (const k of ['blocks_hot', 'blocks_pending', 'blocks_persisted', 'blocks_cached']) assert.match(text, new RegExp(`^${k} +\\d+$`, 'm'));
    const r = await vbfs(['stats', mnt, '--json'], store);
    assert.equal(r.code, 0, r.stderr);
    const v = (JSON.parse(r.stdout) as { volumes: Record<string, Record<string, number>> }).volumes['strict']!;
    assert.equal(v['blocks_hot'], 0, 'strict: every write is synced before it returns');
    assert.ok(v['blocks_pending']! + v['blocks_persisted']! + v['blocks_cached']! >= 16, '16 blocks written');
  });

  it('fio --verify=crc32c with 4 concurrent jobs', async function () {
    if ((await run('fio', ['--version'])).code !== 0) {
      if (process.env['CI'] === 'true') throw new Error('fio is not installed (apt-get install fio)');
      this.skip();
    }
    const r = await run('fio', [
      '--name=verify',
      `--filename=${path.join(mnt, 'fio')}`,
      '--numjobs=4',
      '--size=24M',
      '--offset_increment=32M',
      '--rw=randwrite',
      '--bssplit=4k/50:64k/30:128k/20',
      '--ioengine=psync',
      '--fallocate=none',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--verify_state_save=0', // else fio leaves *-verify.state files in the working directory
      '--do_verify=1',
      '--end_fsync=1',
      '--group_reporting',
    ]);
    assert.equal(r.code, 0, `fio failed:\n${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed/i);
  });

  it('ext4 on a loop device: unmount refused while attached, then unmount + remount + fsck clean + same files', async () => {
    const disk = path.join(mnt, 'disk');
    const loop = (await must('losetup', ['-f', '--show', disk])).trim();
    await must('mkfs.ext4', ['-q', '-F', loop]);
    await must('mount', [loop, ext]);
    const sums = new Map<string, string>();
    for (let d = 0; d < 4; d++) {
      await fsp.mkdir(path.join(ext, `dir${d}`, 'sub'), { recursive: true });
      for (let f = 0; f < 25; f++) {
        const rel = path.join(`dir${d}`, f % 2 ? 'sub' : '', `file${f}`);
        const data = randomBytes(1 + ((d * 7919 + f * 104729) % (300 * 1024)));
        await fsp.writeFile(path.join(ext, rel), data);
        sums.set(rel, sha256(data));
      }
    }
    const big = randomBytes(20 * MiB);
    await fsp.writeFile(path.join(ext, 'big'), big);
    sums.set('big', sha256(big));
    await must('sync', []);

    const refused = await vbfs(['unmount', mnt], store);
    assert.equal(refused.code, 1);
    assert.ok(refused.stderr.includes(loop), `the refusal names ${loop}: ${refused.stderr}`);
    assert.ok(await isMounted(mnt));

    await must('umount', [ext]);
    await must('losetup', ['-d', loop]); // before the FUSE unmount, never after
    await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
    await unmount();
    await mountDaemon();

    await verifyExt4OnLoop(disk, ext, mnt, sums);
  });

  it('kill -9 after fsync: the stale mount is recovered and fsynced data is intact', async () => {
    await unmount();
    const fg = spawnForegroundMount(store, mnt);
    foreground.push(fg);
    await waitFor(
      'foreground mount',
      async () =>
        (await isMounted(mnt)) &&
        (await fsp.stat(path.join(mnt, 'disk')).then(
          () => true,
          () => false,
        )),
    );

    const a = randomBytes(6 * MiB + 123);
    const b = randomBytes(2 * MiB);
    const fh = await fsp.open(path.join(mnt, 'disk'), 'r+');
    await fh.write(a, 0, a.length, 100 * MiB + 17);
    await fh.datasync();
    const s = await fsp.open(path.join(mnt, 'strict'), 'r+');
    await s.write(b, 0, b.length, 5 * MiB);
    await s.sync();
    // Not fsynced: may or may not survive, must not break anything.
    await fh.write(randomBytes(MiB), 0, MiB, 200 * MiB);
    await fh.close().catch(() => undefined);
    await s.close().catch(() => undefined);

    assert.ok(fg.child.kill('SIGKILL'));
    await fg.exited;
    const st = await fsp.stat(mnt).then(
      () => 'ok',
      (e: NodeJS.ErrnoException) => e.code,
    );
    assert.equal(st, 'ENOTCONN', 'a killed mount leaves a stale ENOTCONN mount behind');

    await mountDaemon(); // recovers the stale mount itself
    assert.equal(await sha256File(path.join(mnt, 'disk'), 100 * MiB + 17, a.length), sha256(a));
    assert.equal(await sha256File(path.join(mnt, 'strict'), 5 * MiB, b.length), sha256(b));
  });

  it('an open volume file makes unmount fail with "busy" and stay mounted; --force detaches it', async () => {
    const fh = await fsp.open(path.join(mnt, 'fio'), 'r');
    try {
      const r = await vbfs(['unmount', mnt], store);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /busy/);
      assert.ok(await isMounted(mnt));
      await fh.read(Buffer.alloc(4096), 0, 4096, 0); // still served

      const forced = await vbfs(['unmount', mnt, '--force'], store);
      assert.equal(forced.code, 0, forced.stderr);
      assert.equal(await isMounted(mnt), false);
      await assert.rejects(fh.read(Buffer.alloc(4096), 0, 4096, 100 * MiB)); // the process is gone (not in page cache)
    } finally {
      await fh.close().catch(() => undefined);
    }
    await mountDaemon();
  });

  it('SIGTERM while a loop device is attached is refused; after losetup -d it flushes, unmounts, exits 0', async () => {
    await unmount();
    const fg = spawnForegroundMount(store, mnt);
    foreground.push(fg);
    await waitFor(
      'foreground mount',
      async () =>
        (await isMounted(mnt)) &&
        (await fsp.stat(path.join(mnt, 'disk')).then(
          () => true,
          () => false,
        )),
    );
    const data = randomBytes(MiB);
    await fsp.writeFile(path.join(mnt, 'disk'), data, { flag: 'r+' }); // no fsync: the clean shutdown must keep it

    const loop = (await must('losetup', ['-f', '--show', path.join(mnt, 'strict')])).trim();
    try {
      fg.child.kill('SIGTERM');
      await waitFor('the refusal in the log', async () => fg.output().includes(loop), 10_000);
      assert.ok(await isMounted(mnt), 'still mounted while the loop device is attached');
      assert.equal(fg.child.exitCode, null, 'still serving');
    } finally {
      await run('losetup', ['-d', loop]);
    }
    await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
    fg.child.kill('SIGTERM');
    assert.equal(await fg.exited, 0, fg.output());
    assert.equal(await isMounted(mnt), false);
    await assert.rejects(fsp.stat(path.join(store, 'mount.pid')), { code: 'ENOENT' });
    await mountDaemon();
    assert.equal(await sha256File(path.join(mnt, 'disk'), 0, MiB), sha256(data));
  });

  it('mount.fuse form: vbfs <store> <mountpoint> -o ro,... detaches once ready', async () => {
    await unmount();
    const r = await vbfs([store, mnt, '-o', 'ro,_netdev,noauto,x-systemd.automount'], store);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await isMounted(mnt));
    await assert.rejects(fsp.open(path.join(mnt, 'disk'), 'r+'), { code: 'EROFS' });
    assert.equal((await fsp.stat(path.join(mnt, 'disk'))).size, 256 * MiB);
    await unmount();
    const bad = await vbfs([store, mnt, '-o', 'bogus_option'], store);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown mount option 'bogus_option'/);
  });

  it('mounting on a missing mountpoint or twice fails with one clear line', async () => {
    const missing = await vbfs(['mount', path.join(root, 'nope'), '--daemon'], store);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /does not exist/);
    assert.equal(missing.stderr.trim().split('\n').length, 1);
    await mountDaemon();
    const twice = await vbfs(['mount', mnt, '--daemon'], store);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /already mounted/);
    await unmount();
  });
});
