/**
 * Two real mounts (bin/vbfs) of one store racing for its volume: the first is held
 * up by strace in the middle of taking the volume lock (the reproduction).
 * Exactly one may serve the volume. Needs root, /dev/fuse and strace.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupUnder, isMounted, requireFuse, spawnForegroundMount, tmpDir, vbfs, VBFS_BIN, waitFor, type ForegroundMount } from './helpers/fuse-env';

describe('FUSE: two mounts of one store racing for the volume lock (bin/vbfs)', function () {
  this.timeout(180_000);
  let root = '';
  let store = '';
  const mnts: string[] = [];
  const procs: ForegroundMount[] = [];

  before(async function () {
    requireFuse(this);
    if (!fs.existsSync('/usr/bin/strace')) this.skip();
    root = await tmpDir('fuselock');
    store = path.join(root, 'store');
    for (const m of ['m1', 'm2']) {
      mnts.push(path.join(root, m));
      await fsp.mkdir(path.join(root, m));
    }
    const r = await vbfs(['create', 'one', '--size', '16M'], store);
    assert.equal(r.code, 0, r.stderr);
  });

  after(async function () {
    if (!root) return;
    await cleanupUnder(root, mnts, [], store);
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    if (!(await Promise.all(mnts.map(isMounted))).some(Boolean)) await fsp.rm(root, { recursive: true, force: true });
  });

  it('the first mount is delayed while taking the lock, a second starts meanwhile: exactly one serves the volume', async () => {
    const volDir = path.join(store, 'volumes', 'one');
    const lock = path.join(volDir, 'LOCK');
    // Every write to and link onto LOCK of the first mount waits 15 s (an older vbfs wrote
    // the content into an already created, empty LOCK: the window the second one hit).
    const child = spawn(
      'strace',
      [
        '-f',
        '-qq',
        '-o',
        '/dev/null',
        '-P',
        lock,
        '-e',
        'trace=write,pwrite64,pwritev,link,linkat',
        '-e',
        'inject=write,pwrite64,pwritev,link,linkat:delay_enter=15000000',
        process.execPath,
        VBFS_BIN,
        'mount',
        mnts[0]!,
        '--store',
        store,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out1 = '';
    child.stdout.on('data', (d: Buffer) => (out1 += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out1 += d.toString()));
    const m1: ForegroundMount = { child, exited: new Promise((r) => child.on('exit', (c) => r(c))), output: () => out1 };
    procs.push(m1);
    // Start the second one once the first has begun taking the lock.
    await waitFor('the first mount to start taking the lock', async () => (await fsp.readdir(volDir)).some((n) => n.startsWith('LOCK')), 60_000);
    const m2 = spawnForegroundMount(store, mnts[1]!);
    procs.push(m2);

    // Each one either mounts or exits; wait until both have decided.
    const decided = async (m: ForegroundMount, mnt: string): Promise<boolean> => m.child.exitCode !== null || (await isMounted(mnt));
    await waitFor('both mounts to mount or give up', async () => (await decided(m1, mnts[0]!)) && (await decided(m2, mnts[1]!)), 90_000);
    await new Promise((r) => setTimeout(r, 1000)); // a late second winner would show up now
    const mounted = await Promise.all(mnts.map(isMounted));
    assert.equal(mounted.filter(Boolean).length, 1, `exactly one mount: ${JSON.stringify(mounted)}\nm1: ${m1.output()}\nm2: ${m2.output()}`);
    const win = mounted[0] ? 0 : 1;
    const loser = [m1, m2][1 - win]!;
    assert.equal(await loser.exited, 1);
    // The loser is stopped by the volume lock, or earlier by the store's mount record
    // (written before the first mount takes its locks); either way it never serves.
    assert.match(loser.output(), /already open for writing by process|is already mounted at .*a store can be mounted once/);

    const data = randomBytes(1 << 20);
    const file = path.join(mnts[win]!, 'one');
    const fh = await fsp.open(file, 'r+');
    try {
      await fh.write(data, 0, data.length, 0);
      await fh.sync();
      const back = Buffer.alloc(data.length);
      await fh.read(back, 0, back.length, 0);
      assert.ok(back.equals(data));
    } finally {
      await fh.close();
    }
    const u = await vbfs(['unmount', mnts[win]!], store);
    assert.equal(u.code, 0, u.stderr);
    assert.equal(fs.existsSync(lock), false, 'LOCK released by the winner');
  });
});
