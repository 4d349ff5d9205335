/**
 * Errors that say what happened, through the real command line (bin/vbfs), on real
 * filesystems: a full disk (small tmpfs), a read-only one (tmpfs mounted ro), a store
 * this user cannot write, and damaged volumes. The filesystem cases need root.
 */
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import { run, tmpDir, vbfs, VBFS_BIN } from './helpers/fuse-env';

function oneLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace without --log-level debug');
  return lines[0]!;
}

describe('vbfs command line: store errors that say what happened', function () {
  this.timeout(120_000);
  let root = '';
  const mounts: string[] = [];

  /** A small tmpfs under root (unmounted in `after`). */
  async function tmpfs(name: string, size: string): Promise<string> {
    const dir = path.join(root, name);
    await fsp.mkdir(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
    mounts.push(dir);
    return dir;
  }
  const needRoot = (ctx: Mocha.Context): void => {
    if (process.getuid?.() !== 0) ctx.skip();
  };

  before(async () => {
    root = await tmpDir('clierr');
  });
  after(async () => {
    for (const m of mounts.reverse()) {
      try {
        execFileSync('umount', [m]);
      } catch {
        execFileSync('umount', ['-l', m]);
      }
    }
    await fsp.rm(root, { recursive: true, force: true });
  });

  it('--block-size 1000 says "must be a power of two" (exit 2), not "not a multiple"', async () => {
    const r = await vbfs(['create', 'v', '--size', '1M', '--block-size', '1000'], path.join(root, 'bs'));
    assert.equal(r.code, 2);
    assert.match(oneLine(r.stderr), /block size 1000: must be a power of two/);
  });

  it('a full disk while taking the lock says "could not take the lock" (exit 1) and leaves no LOCK', async function () {
    needRoot(this);
    const fs = await tmpfs('full', '256k');
    const store = path.join(fs, 'store');
    assert.equal((await vbfs(['create', 'v', '--size', '1M'], store)).code, 0);
    await fsp.writeFile(path.join(fs, 'fill'), Buffer.alloc(1 << 20)).catch(() => undefined); // ENOSPC: the disk is full
    const r = await vbfs(['delete', 'v', '--yes'], store);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /could not take the lock .*ENOSPC/);
    const left = (await fsp.readdir(path.join(store, 'volumes', 'v'))).filter((n) => n.startsWith('LOCK'));
    assert.deepEqual(left, [], 'no LOCK (not even an empty one) and no temp file');
  });

  it('create on a read-only filesystem says so (exit 1), not "mkdir ...wal: ENOENT"', async function () {
    needRoot(this);
    const fs = await tmpfs('ro', '1m');
    const store = path.join(fs, 'store');
    assert.equal((await vbfs(['list'], store)).code, 0); // makes the store
    execFileSync('mount', ['-o', 'remount,ro', fs]);
    const r = await vbfs(['create', 'v', '--size', '1M'], store);
    assert.equal(r.code, 1);
    const line = oneLine(r.stderr);
    assert.match(line, /read-only filesystem/);
    assert.doesNotMatch(line, /ENOENT/);
  });

  it('list on an empty store on a read-only filesystem works (exit 0)', async function () {
    needRoot(this);
    const fs = await tmpfs('roempty', '1m');
    await fsp.mkdir(path.join(fs, 'store')); // a store directory with nothing in it yet
    execFileSync('mount', ['-o', 'remount,ro', fs]);
    const r = await vbfs(['list'], path.join(fs, 'store'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /no volumes in/);
  });

  it('list on an empty store this user cannot write works (no EACCES)', async function () {
    needRoot(this);
    // Someone else's store: owned by nobody, and this root process runs vbfs without
    // the capabilities that let root write anywhere (so it still reads the checkout,
    // wherever CI cloned it, but cannot write the store).
    const store = path.join(root, 'othersstore');
    await fsp.mkdir(store);
    await fsp.chown(store, 65534, 65534);
    await fsp.chmod(store, 0o755);
    const r = await run('setpriv', ['--bounding-set=-dac_override,-dac_read_search,-fowner', process.execPath, VBFS_BIN, 'list'], {
      env: { ...process.env, VBFS_STORE: store },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /no volumes in/);
  });

  it('delete leaves no empty objects/<id>/chunks directory behind', async () => {
    const store = path.join(root, 'objs');
    const s = await Store.open(store);
    const info = await s.createVolume('v', { size: 1 << 20 });
    const v = await s.openVolume('v');
    await v.write(0, Buffer.alloc(64 * 1024, 1));
    await v.close(); // flushes: a chunk object exists
    await s.close();
    assert.ok((await fsp.readdir(path.join(store, 'objects', info.id, 'chunks'))).length > 0);
    const d = await vbfs(['delete', 'v', '--yes'], store);
    assert.equal(d.code, 0, d.stderr);
    assert.deepEqual(await fsp.readdir(path.join(store, 'objects')), []);
  });

  it('list shows a damaged volume as "damaged: <reason>" (text and --json) beside the healthy ones; delete --yes removes it', async () => {
    const store = path.join(root, 'dmg');
    for (const n of ['a', 'b', 'c']) assert.equal((await vbfs(['create', n, '--size', '1M'], store)).code, 0);
    await fsp.writeFile(path.join(store, 'volumes', 'b', 'volume.json'), '{"formatVersion": 1, "name": "b", ');
    const list = await vbfs(['list'], store);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^a .* ok$/m);
    assert.match(list.stdout, /^b .*damaged: .*volume\.json: not valid JSON$/m);
    assert.match(list.stdout, /^c .* ok$/m);
    const rows = JSON.parse((await vbfs(['list', '--json'], store)).stdout) as Array<Record<string, unknown>>;
    assert.deepEqual(
      rows.map((r) => [r['name'], r['state']]),
      [
        ['a', 'ok'],
        ['b', 'damaged'],
        ['c', 'ok'],
      ],
    );
    assert.match(String(rows[1]!['reason']), /not valid JSON/);
    const info = await vbfs(['info', 'b'], store);
    assert.equal(info.code, 1);
    assert.match(oneLine(info.stderr), /volume\.json/);
    const d = await vbfs(['delete', 'b', '--yes'], store);
    assert.equal(d.code, 0, d.stderr);
    assert.deepEqual(await fsp.readdir(path.join(store, 'volumes')), ['a', 'c']);
  });
});
