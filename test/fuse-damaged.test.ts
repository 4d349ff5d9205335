/**
 * One damaged volume must not take the store down: a real FUSE mount (bin/vbfs) of a
 * store with a healthy volume, one whose volume.json is damaged and one whose WAL is
 * damaged. Needs root and /dev/fuse (see helpers/fuse-env.ts).
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupUnder, isMounted, requireFuse, tmpDir, vbfs } from './helpers/fuse-env';

describe('FUSE mount of a store with damaged volumes (bin/vbfs)', function () {
  this.timeout(180_000);
  let root = '';
  let store = '';
  let mnt = '';
  let log = '';

  before(async function () {
    requireFuse(this);
    root = await tmpDir('damaged');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    log = path.join(root, 'mount.log');
    await fsp.mkdir(mnt);
    for (const name of ['good', 'badmeta', 'badwal']) {
      const r = await vbfs(['create', name, '--size', '16M'], store);
      assert.equal(r.code, 0, r.stderr);
    }
    const meta = path.join(store, 'volumes', 'badmeta', 'volume.json');
    const text = await fsp.readFile(meta, 'utf8');
    await fsp.writeFile(meta, text.slice(0, text.indexOf('"size"'))); // cut short: not JSON any more, id still legible
    await fsp.writeFile(path.join(store, 'volumes', 'badwal', 'wal', '0000000000000001.wal'), Buffer.alloc(4096, 0x5a));
  });

  after(async function () {
    if (!root) return;
    await cleanupUnder(root, [mnt], [], store);
    if (!(await isMounted(mnt))) await fsp.rm(root, { recursive: true, force: true });
  });

  it('mounts the healthy volume (read/write), serves no file for the damaged ones, and says which and why', async () => {
    const m = await vbfs(['mount', mnt, '--daemon', '--log-file', log], store);
    assert.equal(m.code, 0, `mount failed: ${m.stderr}`);
    assert.deepEqual((await fsp.readdir(mnt)).sort(), ['.stats', 'good']);
    await assert.rejects(fsp.stat(path.join(mnt, 'badwal')), { code: 'ENOENT' });
    await assert.rejects(fsp.stat(path.join(mnt, 'badmeta')), { code: 'ENOENT' });

    const data = randomBytes(1 << 20);
    const fh = await fsp.open(path.join(mnt, 'good'), 'r+');
    try {
      await fh.write(data, 0, data.length, 8192);
      await fh.sync();
      const back = Buffer.alloc(data.length);
      await fh.read(back, 0, back.length, 8192);
      assert.ok(back.equals(data), 'the healthy volume reads back what was written');
    } finally {
      await fh.close();
    }

    const warnings = (await fsp.readFile(log, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { level: string; message: string })
      .filter((l) => l.level === 'warn');
    const about = (name: string): string[] => warnings.filter((w) => w.message.includes(`volume ${name} is damaged`)).map((w) => w.message);
    assert.equal(about('badwal').length, 1, JSON.stringify(warnings));
    assert.match(about('badwal')[0]!, /WAL segment .*0000000000000001\.wal/);
    assert.equal(about('badmeta').length, 1, JSON.stringify(warnings));
    assert.match(about('badmeta')[0]!, /volume\.json/);

    const list = await vbfs(['list'], store);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^badmeta .*damaged: .*volume\.json/m);
    assert.match(list.stdout, /^good .* yes +ok$/m);
    const rows = JSON.parse((await vbfs(['list', '--json'], store)).stdout) as Array<Record<string, unknown>>;
    const badmeta = rows.find((r) => r['name'] === 'badmeta')!;
    assert.equal(badmeta['state'], 'damaged');
    assert.match(String(badmeta['reason']), /volume\.json/);
    assert.equal(rows.find((r) => r['name'] === 'good')!['state'], 'ok');

    // Deleted while mounted (the mount does not hold it open) and created again: it appears.
    assert.equal((await vbfs(['delete', 'badwal', '--yes'], store)).code, 0);
    assert.equal((await vbfs(['create', 'badwal', '--size', '4M'], store)).code, 0);
    assert.equal((await fsp.stat(path.join(mnt, 'badwal'))).size, 4 << 20);

    const u = await vbfs(['unmount', mnt], store);
    assert.equal(u.code, 0, u.stderr);
  });

  it('mounts --read-only too, and the data written before is there', async () => {
    const m = await vbfs(['mount', mnt, '--daemon', '--read-only', '--log-file', log], store);
    assert.equal(m.code, 0, `mount --read-only failed: ${m.stderr}`);
    try {
      assert.deepEqual((await fsp.readdir(mnt)).sort(), ['.stats', 'badwal', 'good']);
      assert.equal((await fsp.stat(path.join(mnt, 'good'))).size, 16 << 20);
    } finally {
      const u = await vbfs(['unmount', mnt], store);
      assert.equal(u.code, 0, u.stderr);
    }
  });

  it('vbfs delete --yes removes a damaged volume, with its chunk objects', async () => {
    // Give badmeta chunk objects to remove: its id is still legible in the damaged file.
    const text = await fsp.readFile(path.join(store, 'volumes', 'badmeta', 'volume.json'), 'utf8');
    const id = /"id"\s*:\s*"([0-9a-f]{32})"/.exec(text)![1]!;
    await fsp.mkdir(path.join(store, 'objects', id, 'chunks'), { recursive: true });
    await fsp.writeFile(path.join(store, 'objects', id, 'chunks', '00000001'), 'x');
    const d = await vbfs(['delete', 'badmeta', '--yes'], store);
    assert.equal(d.code, 0, d.stderr);
    assert.deepEqual(await fsp.readdir(path.join(store, 'volumes')), ['badwal', 'good']);
    await assert.rejects(fsp.stat(path.join(store, 'objects', id)), { code: 'ENOENT' });
  });
});
