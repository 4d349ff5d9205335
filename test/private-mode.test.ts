/**
 * Private by default: every file and directory a store creates is 0600/0700 (with
 * any umask), and a store other users can open is reported once at open and by
 * fsck. The FUSE part mounts for real through bin/vbfs (root and /dev/fuse).
 */
import * as assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Logger } from '../src/types';
import { NodeFileIO } from '../src/io/node-file-io';
import { findExposed } from '../src/io/private-mode';
import { cleanupUnder, fuseUnavailableReason, isMounted, tmpDir, vbfs } from './helpers/fuse-env';

interface Entry {
  path: string;
  mode: number;
  dir: boolean;
}

/** Every entry under `dir` (itself included), with its permission bits. */
async function walk(dir: string): Promise<Entry[]> {
  // An open volume's background flush may reclaim a WAL segment while we walk.
  const st = await fsp.lstat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (!st) return [];
  const out: Entry[] = [{ path: dir, mode: st.mode & 0o7777, dir: st.isDirectory() }];
  if (st.isDirectory()) for (const n of await fsp.readdir(dir).catch(() => [] as string[])) out.push(...(await walk(path.join(dir, n))));
  return out;
}

function notPrivate(entries: Entry[]): string[] {
  return entries.filter((e) => e.mode !== (e.dir ? 0o700 : 0o600)).map((e) => `${e.path} ${e.mode.toString(8)}`);
}

function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return { warnings, error() {}, info() {}, debug() {}, warn: (m) => void warnings.push(m) };
}

describe('private store files (0600/0700)', function () {
  this.timeout(120_000);
  let root = '';
  let oldUmask = 0;

  beforeEach(async () => {
    root = await tmpDir('private');
    // A permissive umask: the modes must come from vbfs, not from the umask.
    oldUmask = process.umask(0);
  });
  afterEach(async () => {
    process.umask(oldUmask);
    await fsp.rm(root, { recursive: true, force: true });
  });

  it('every file and directory of a store is 0600/0700 after create, writes, flush, checkpoint and reopen', async () => {
    const dir = path.join(root, 'a', 'store'); // parents made by Store.open too
    const store = await Store.open(dir);
    try {
      await store.createVolume('v', { size: 64 << 20, compression: 'lz4' });
      const vol = await store.openVolume('v', { chunkBytes: 64 * 1024, walSegmentBytes: 128 * 1024, flushBytes: 64 * 1024, checkpointBytes: 4096 });
      const buf = Buffer.alloc(4096);
      for (let i = 0; i < 200; i++) {
        buf.fill(i & 0xff);
        await vol.write(i * 4096 * 7, buf);
      }
      await vol.fsync();
      // While open: the LOCK and the live WAL segment are there.
      const live = await walk(dir);
      assert.ok(
        live.some((e) => e.path.endsWith('/LOCK')),
        'LOCK exists while open',
      );
      assert.ok(
        live.some((e) => e.path.includes('/wal/') && !e.dir),
        'a WAL segment exists',
      );
      assert.deepEqual(notPrivate(live), []);
      await vol.flush();
      const flushed = await walk(dir);
      assert.ok(
        flushed.some((e) => e.path.includes('/map/') && !e.dir),
        'map files exist after a flush',
      );
      assert.deepEqual(notPrivate(flushed), []);
      await vol.close();
      const stats = await store.openVolume('v');
      await stats.close();
    } finally {
      await store.close();
    }
    const after = await walk(dir);
    assert.ok(
      after.some((e) => e.path.includes('/objects/') && !e.dir),
      'chunk objects exist',
    );
    assert.ok(
      after.some((e) => e.path.endsWith('/map/checkpoint')),
      'a checkpoint exists',
    );
    assert.ok(
      after.some((e) => e.path.endsWith('/volume.json')),
      'volume.json exists',
    );
    assert.deepEqual(notPrivate(after), []);
    assert.deepEqual(notPrivate(await walk(path.join(root, 'a'))), []);
  });

  it('warns once at open, naming the path, when other users can open store files', async () => {
    const dir = path.join(root, 'store');
    let store = await Store.open(dir);
    await store.createVolume('v', { size: 1 << 20 });
    await store.createVolume('w', { size: 1 << 20 });
    await store.close();

    const quiet = recordingLogger();
    store = await Store.open(dir, { logger: quiet });
    await store.close();
    assert.deepEqual(quiet.warnings, [], 'a private store opens without a warning');

    // As an older version left it: everything world-readable.
    for (const e of await walk(dir)) await fsp.chmod(e.path, e.dir ? 0o755 : 0o644);
    const log = recordingLogger();
    store = await Store.open(dir, { logger: log });
    await store.close();
    assert.equal(log.warnings.length, 1, `one warning, not one per file: ${log.warnings.join('\n')}`);
    assert.ok(log.warnings[0]!.includes(dir), 'the warning names the store path');

    // A private store directory keeps everything in it private, whatever the modes inside.
    await fsp.chmod(dir, 0o700);
    assert.equal((await findExposed(new NodeFileIO(), dir)).count, 0);
    const again = recordingLogger();
    store = await Store.open(dir, { logger: again });
    await store.close();
    assert.deepEqual(again.warnings, []);
  });

  it('fsck reports files other users can open as a warning, not as damage', async () => {
    const dir = path.join(root, 'store');
    const store = await Store.open(dir);
    try {
      await store.createVolume('v', { size: 1 << 20 });
      const vol = await store.openVolume('v');
      await vol.write(0, Buffer.alloc(4096, 7));
      await vol.close();
      let r = await store.fsckVolume('v');
      assert.equal(r.clean, true, JSON.stringify(r.problems));

      await fsp.chmod(path.join(dir, 'volumes', 'v', 'volume.json'), 0o644);
      await fsp.chmod(path.join(dir, 'volumes', 'v'), 0o755);
      await fsp.chmod(path.join(dir, 'volumes'), 0o711);
      await fsp.chmod(dir, 0o755);
      r = await store.fsckVolume('v');
      assert.equal(r.errors, 0);
      const perm = r.problems.filter((p) => p.kind === 'permissions');
      assert.equal(perm.length, 1, JSON.stringify(r.problems));
      assert.equal(perm[0]!.severity, 'warning');
      // --repair does not touch modes and does not claim to have fixed them.
      r = await store.fsckVolume('v', { repair: true });
      assert.equal(r.repaired, 0);
      assert.equal((await fsp.stat(path.join(dir, 'volumes', 'v', 'volume.json'))).mode & 0o777, 0o644);
    } finally {
      await store.close();
    }
  });

  it('FUSE: mount records, mount.pid, mount.log and the run directory are private too', async function () {
    const why = fuseUnavailableReason();
    if (why) {
      console.log(`      SKIPPED (FUSE unavailable: ${why})`);
      if (process.env['CI'] === 'true') throw new Error(why);
      this.skip();
    }
    process.umask(oldUmask); // the CLI runs in children; give them the usual umask
    const dir = path.join(root, 'store');
    const mnt = path.join(root, 'mnt');
    const runDir = path.join(root, 'run');
    await fsp.mkdir(mnt);
    const env = { VBFS_RUN_DIR: runDir };
    try {
      let r = await vbfs(['create', 'v', '--size', '16M'], dir, { env });
      assert.equal(r.code, 0, r.stderr);
      r = await vbfs(['mount', mnt, '--daemon'], dir, { env });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(await isMounted(mnt));
      const fh = await fsp.open(path.join(mnt, 'v'), 'r+');
      try {
        await fh.write(Buffer.alloc(1 << 20, 9), 0);
        await fh.sync();
      } finally {
        await fh.close();
      }
      const mounted = [...(await walk(dir)), ...(await walk(runDir))];
      for (const f of ['mount.pid', 'mount.log', 'LOCK'])
        assert.ok(
          mounted.some((e) => e.path.endsWith(`/${f}`)),
          `${f} exists while mounted`,
        );
      assert.ok(
        mounted.some((e) => e.path.startsWith(runDir) && e.path.endsWith('.json')),
        'a run record exists',
      );
      assert.deepEqual(notPrivate(mounted), []);
      r = await vbfs(['unmount', mnt], dir, { env });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(notPrivate([...(await walk(dir)), ...(await walk(runDir))]), []);
    } finally {
      await cleanupUnder(root, [mnt], [], dir);
    }
  });
});
