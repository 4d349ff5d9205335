/**
 * The life of the mount process under its users (issue 14): a lazy unmount by
 * someone else while a loop device still uses a volume, a stderr pipe whose reader
 * went away, SIGHUP, a mountpoint given through a symlink, a read-only store, a
 * SIGTERM while files are open (deferred, bounded by --stop-timeout), `vbfs unmount`
 * of a store whose path has a space and a comma, and the one-line errors around
 * mounting. Real mounts through bin/vbfs; needs root and /dev/fuse.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
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
} from './helpers/fuse-env';
import { runRecordPath } from '../src/cli/store';

const MiB = 1024 * 1024;

/** Alive and not a zombie. */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function mountOptions(mountpoint: string): Promise<string | null> {
  for (const l of (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const f = l.split(' ');
    if (f[4] === mountpoint) return f[5] ?? null;
  }
  return null;
}

describe('FUSE mount life: signals, lazy unmounts, symlinks, read-only stores (bin/vbfs)', function () {
  this.timeout(120_000);

  let root = '';
  let store = '';
  let mnt = '';
  const extraMounts: string[] = []; // bind mounts to undo, innermost last
  const fuseMounts: string[] = [];
  const foreground: ForegroundMount[] = [];

  async function served(m = mnt): Promise<boolean> {
    return (
      (await isMounted(m)) &&
      (await fsp.stat(path.join(m, 'disk')).then(
        () => true,
        () => false,
      ))
    );
  }

  function foregroundMount(mountpoint: string, extra: string[] = [], st = store): ForegroundMount {
    const fg = spawnForegroundMount(st, mountpoint, extra);
    foreground.push(fg);
    return fg;
  }

  before(async function () {
    requireFuse(this);
    root = await tmpDir('life');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    await fsp.mkdir(mnt);
    fuseMounts.push(mnt);
    const r = await vbfs(['create', 'disk', '--size', '64M'], store);
    assert.equal(r.code, 0, r.stderr);
  });

  afterEach(async () => {
    for (const f of foreground.splice(0)) {
      if (f.child.exitCode === null && f.child.signalCode === null) {
        f.child.kill('SIGTERM');
        await Promise.race([f.exited, sleep(5000)]);
        if (f.child.exitCode === null && f.child.signalCode === null) f.child.kill('SIGKILL');
      }
    }
    // A test that failed may leave a dead mount: do not let it fail the next ones too.
    for (const m of fuseMounts) {
      if (
        (await isMounted(m)) &&
        (await fsp.stat(m).then(
          () => null,
          (e: NodeJS.ErrnoException) => e.code,
        )) === 'ENOTCONN'
      ) {
        await run('fusermount', ['-u', m]);
      }
    }
  });

  after(async function () {
    if (!root) return;
    await cleanupUnder(root, fuseMounts, [], store);
    for (const m of extraMounts.reverse()) if (await isMounted(m)) await run('umount', [m]);
    if (!(await isMounted(mnt))) await fsp.rm(root, { recursive: true, force: true });
  });

  it('a lazy unmount by someone else keeps serving a loop device until losetup -d, then exits cleanly', async () => {
    const fg = foregroundMount(mnt);
    await waitFor('mount', () => served());
    const loop = (await must('losetup', ['-f', '--show', path.join(mnt, 'disk')])).trim();
    const data = randomBytes(2 * MiB);
    const src = path.join(root, 'loop-src');
    await fsp.writeFile(src, data);
    try {
      await must('umount', ['-l', mnt]);
      assert.equal(await isMounted(mnt), false);
      await sleep(2500); // the mount-table watcher looks every second
      assert.equal(fg.child.exitCode, null, `the mount process must keep serving the loop device:\n${fg.output()}`);
      // I/O through the loop device reaches the process (O_DIRECT: no page cache).
      await must('dd', [`if=${src}`, `of=${loop}`, 'bs=1M', 'seek=3', 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
      const back = path.join(root, 'loop-back');
      await must('dd', [`if=${loop}`, `of=${back}`, 'bs=1M', 'skip=3', 'count=2', 'iflag=direct', 'status=none']);
      assert.equal(await sha256File(back), sha256(data));
      assert.equal(fg.child.exitCode, null);
    } finally {
      await run('losetup', ['-d', loop]);
    }
    // Released by the kernel: now it closes the volumes and exits 0.
    const code = await Promise.race([fg.exited, sleep(15_000).then(() => 'timeout' as const)]);
    assert.equal(code, 0, fg.output());
    // What went through the loop device is in the volume.
    const again = foregroundMount(mnt);
    await waitFor('remount', () => served());
    assert.equal(await sha256File(path.join(mnt, 'disk'), 3 * MiB, 2 * MiB), sha256(data));
    again.child.kill('SIGTERM');
    assert.equal(await again.exited, 0, again.output());
  });

  it('a stderr pipe whose reader exited (EPIPE) and SIGHUP do not stop the mount', async () => {
    const fg = foregroundMount(mnt, ['--log-level', 'debug']);
    await waitFor('mount', () => served());
    // The reader of the pipe goes away, like `tee` exiting.
    fg.child.stdout!.destroy();
    fg.child.stderr!.destroy();
    // Make it log: a volume created while mounted is opened (and logged) on lookup.
    const c = await vbfs(['create', 'logme', '--size', '4M'], store);
    assert.equal(c.code, 0, c.stderr);
    assert.equal((await fsp.stat(path.join(mnt, 'logme'))).size, 4 * MiB);
    const data = randomBytes(64 * 1024);
    await fsp.writeFile(path.join(mnt, 'logme'), data, { flag: 'r+' });
    assert.equal(sha256((await fsp.readFile(path.join(mnt, 'logme'))).subarray(0, data.length)), sha256(data));
    // A terminal hang-up is ignored (documented): it must not take the disk away.
    fg.child.kill('SIGHUP');
    await sleep(1500);
    assert.equal(fg.child.exitCode, null, 'still running');
    assert.ok(await served(), 'still serving');
    await fsp.writeFile(path.join(mnt, 'logme'), data, { flag: 'r+' });
    const u = await vbfs(['unmount', mnt], store);
    assert.equal(u.code, 0, u.stderr);
    assert.equal(await fg.exited, 0);
    assert.equal(await isMounted(mnt), false);
  });

  it('a mountpoint given through a symlink stays mounted, and vbfs unmount <symlink> waits for the process', async () => {
    const link = path.join(root, 'mnt-link');
    await fsp.symlink(mnt, link);
    const fg = foregroundMount(link);
    await waitFor('mount', () => served());
    await sleep(2500); // the mount-table watcher looks every second
    assert.equal(fg.child.exitCode, null, fg.output());
    assert.ok(await served(), 'still mounted');
    assert.equal((await fsp.stat(path.join(link, 'disk'))).size, 64 * MiB, 'served through the link');
    const pid = fg.child.pid!;
    const u = await vbfs(['unmount', link], store);
    assert.equal(u.code, 0, u.stderr);
    assert.match(u.stdout, /flushed and closed/);
    assert.equal(running(pid), false, 'vbfs unmount returns after the mount process has exited');
    assert.equal(await isMounted(mnt), false);
  });

  it('vbfs unmount waits for the process when the store path has a space and a comma; an immediate remount works', async () => {
    const odd = path.join(root, 'my store,2');
    const r = await vbfs(['create', 'disk', '--size', '16M'], odd);
    assert.equal(r.code, 0, r.stderr);
    const m = await vbfs(['mount', mnt, '--daemon'], odd);
    assert.equal(m.code, 0, m.stderr);
    const pid = (JSON.parse(await fsp.readFile(path.join(odd, 'mount.pid'), 'utf8')) as { pid: number }).pid;
    await fsp.writeFile(path.join(mnt, 'disk'), randomBytes(MiB), { flag: 'r+' }); // left for the close to flush
    // Unmounted by path only: the mount table's source is just 'vbfs' (no store path),
    // and the default store of this command is another one.
    const u = await vbfs(['unmount', mnt], store);
    assert.equal(u.code, 0, u.stderr);
    assert.match(u.stdout, /flushed and closed/);
    assert.equal(running(pid), false, 'vbfs unmount returns after the mount process has exited');
    const again = await vbfs(['mount', mnt, '--daemon'], odd);
    assert.equal(again.code, 0, `immediate remount: ${again.stderr}`);
    const u2 = await vbfs(['unmount', mnt], odd);
    assert.equal(u2.code, 0, u2.stderr);
  });

  it('a read-only store mounts --read-only (daemon and foreground), and the mount table says ro', async () => {
    const ro = path.join(root, 'ro-store');
    await fsp.mkdir(ro);
    await must('mount', ['--bind', store, ro]);
    extraMounts.push(ro);
    await must('mount', ['-o', 'remount,bind,ro', ro]);

    const d = await vbfs(['mount', mnt, '--daemon', '--read-only'], ro);
    assert.equal(d.code, 0, d.stderr);
    assert.ok(await served());
    assert.match((await mountOptions(mnt)) ?? '', /^ro,/);
    await assert.rejects(fsp.open(path.join(mnt, 'disk'), 'r+'), { code: 'EROFS' });
    const u = await vbfs(['unmount', mnt], ro);
    assert.equal(u.code, 0, u.stderr);
    // The store could not take the daemon's log: it went to the run directory.
    const logFile = runRecordPath(mnt).replace(/\.json$/, '.log');
    assert.match(await fsp.readFile(logFile, 'utf8'), /unmounted cleanly/);
    await fsp.rm(logFile, { force: true });

    const fg = foregroundMount(mnt, ['--read-only'], ro);
    await waitFor('mount', async () => (await served()) || fg.child.exitCode !== null);
    await sleep(500);
    assert.equal(fg.child.exitCode, null, fg.output());
    assert.equal((await fsp.stat(path.join(mnt, 'disk'))).size, 64 * MiB);
    const u2 = await vbfs(['unmount', mnt], ro);
    assert.equal(u2.code, 0, u2.stderr);
    assert.equal(await fg.exited, 0, fg.output());
    await must('umount', [ro]);
  });

  it('SIGTERM while a file is open is deferred: served until closed, then unmounts and exits 0', async () => {
    const fg = foregroundMount(mnt, ['--stop-timeout', '60']);
    await waitFor('mount', () => served());
    const fh = await fsp.open(path.join(mnt, 'disk'), 'r+');
    const data = randomBytes(MiB);
    try {
      fg.child.kill('SIGTERM');
      await sleep(1500);
      assert.equal(fg.child.exitCode, null, fg.output());
      assert.ok(await isMounted(mnt));
      // In-flight work goes on: the open file is served, and its data kept.
      await fh.write(data, 0, data.length, 7 * MiB);
      await fh.datasync();
      // New opens are refused while stopping.
      const extra = await fsp.open(path.join(mnt, 'disk'), 'r').then(
        (h) => h,
        (e: NodeJS.ErrnoException) => e,
      );
      if (!(extra instanceof Error)) {
        await extra.close();
        assert.fail('a new open must be refused while stopping');
      }
      assert.equal(extra.code, 'EBUSY');
    } finally {
      await fh.close();
    }
    const code = await Promise.race([fg.exited, sleep(10_000).then(() => 'timeout' as const)]);
    assert.equal(code, 0, fg.output());
    assert.equal(await isMounted(mnt), false);
    const again = foregroundMount(mnt);
    await waitFor('remount', () => served());
    assert.equal(await sha256File(path.join(mnt, 'disk'), 7 * MiB, MiB), sha256(data));
    again.child.kill('SIGTERM');
    assert.equal(await again.exited, 0);
  });

  it('when the stop timeout expires with a file still open, it unmounts lazily and exits 0', async () => {
    const fg = foregroundMount(mnt, ['--stop-timeout', '1']);
    await waitFor('mount', () => served());
    const fh = await fsp.open(path.join(mnt, 'disk'), 'r');
    try {
      const t0 = Date.now();
      fg.child.kill('SIGTERM');
      const code = await Promise.race([fg.exited, sleep(10_000).then(() => 'timeout' as const)]);
      assert.equal(code, 0, fg.output());
      assert.ok(Date.now() - t0 >= 900, 'waited for the stop timeout');
      assert.match(fg.output(), /stop timeout/);
      assert.equal(await isMounted(mnt), false);
    } finally {
      await fh.close().catch(() => undefined);
    }
  });

  it('a loop device attached when the stop timeout expires keeps it serving; losetup -d lets it finish', async () => {
    const fg = foregroundMount(mnt, ['--stop-timeout', '1']);
    await waitFor('mount', () => served());
    const loop = (await must('losetup', ['-f', '--show', path.join(mnt, 'disk')])).trim();
    try {
      fg.child.kill('SIGTERM');
      await waitFor('the expiry in the log', async () => /stop timeout \(1s\) expired/.test(fg.output()), 10_000);
      assert.equal(fg.child.exitCode, null);
      assert.ok(await isMounted(mnt));
      await must('dd', [`if=${loop}`, 'of=/dev/null', 'bs=64k', 'count=4', 'iflag=direct', 'status=none']);
    } finally {
      await run('losetup', ['-d', loop]);
    }
    await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
    const code = await Promise.race([fg.exited, sleep(10_000).then(() => 'timeout' as const)]);
    assert.equal(code, 0, fg.output());
    assert.equal(await isMounted(mnt), false);
  });

  it('mount errors are one line with the right status: non-empty mountpoint, store path that is a file, fstab with a missing store', async () => {
    const full = path.join(root, 'full');
    await fsp.mkdir(full);
    await fsp.writeFile(path.join(full, 'something'), 'x');
    fuseMounts.push(full);
    const ne = await vbfs(['mount', full, '--daemon'], store);
    assert.equal(ne.code, 1);
    assert.match(ne.stderr, /not empty.*-o nonempty/);
    assert.equal(ne.stderr.trim().split('\n').length, 1, ne.stderr);
    const ok = await vbfs(['mount', full, '--daemon', '-o', 'nonempty'], store);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(await served(full));
    assert.equal((await vbfs(['unmount', full], store)).code, 0);

    const file = path.join(root, 'a-file');
    await fsp.writeFile(file, 'x');
    const f = await vbfs(['mount', mnt, '--daemon'], file);
    assert.equal(f.code, 2, f.stderr);
    assert.match(f.stderr, /not a directory/);
    assert.equal(f.stderr.trim().split('\n').length, 1, f.stderr);

    const typo = path.join(root, 'no-such-store');
    const t = await vbfs([typo, mnt, '-o', 'defaults'], store);
    assert.equal(t.code, 1, t.stderr);
    assert.match(t.stderr, /does not exist.*-o create/);
    assert.equal(t.stderr.trim().split('\n').length, 1, t.stderr);
    assert.equal(fs.existsSync(typo), false, 'no store was created');
    assert.equal(await isMounted(mnt), false);
    const created = await vbfs([typo, mnt, '-o', 'create'], store);
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual((await fsp.readdir(mnt)).sort(), ['.stats']);
    assert.equal((await vbfs(['unmount', mnt], typo)).code, 0);
  });
});
