import * as assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { Store } from '../src/store/store';
import { main } from '../src/cli/main';
import { Rng } from './helpers/rng';
import { tmpDir, vbfs } from './helpers/fuse-env';

/** `vbfs compact` and the space figures of `vbfs info`, through bin/vbfs and main(). */
describe('vbfs compact', function () {
  this.timeout(120_000);
  let dir = '';
  const BS = 4096;
  const BLOCKS = 1024; // 4 MiB volume, 1 MiB chunks

  before(async () => {
    dir = await tmpDir('compact');
    const store = await Store.open(dir);
    await store.createVolume('v', { size: BLOCKS * BS });
    const vol = await store.openVolume('v', { chunkBytes: 1 << 20, compactIntervalMs: 0 });
    const rng = new Rng(3);
    await vol.write(0, rng.bytes(BLOCKS * BS));
    await vol.flush();
    // Rewrite 7 of every 8 blocks: the first chunks keep an eighth of their blocks.
    for (let b = 0; b < BLOCKS; b++) if (b % 8 !== 0) await vol.write(b * BS, rng.bytes(BS));
    await vol.close();
    await store.close();
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const info = async (): Promise<Record<string, number>> => {
    const r = await vbfs(['info', 'v', '--json'], dir);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Record<string, number>;
  };

  it('compacts a volume now, draws a progress bar on a terminal, and vbfs info shows the space before and after', async () => {
    const before = await info();
    assert.ok(before['storedBytes']! > before['liveBytes']! * 1.5, `setup: ${JSON.stringify(before)}`);
    assert.ok(before['spaceAmplification']! > 1.5);
    let out = '';
    let err = '';
    const code = await main(['compact', 'v', '--store', dir], { stdout: (t) => (out += t), stderr: (t) => (err += t), env: {}, stderrIsTTY: true });
    assert.equal(code, 0, err);
    assert.match(out, /^compacted volume v: \d+ chunks emptied/);
    assert.match(err, /\rcompact \[[#.]{30}\]/, 'no progress bar on a terminal');
    const after = await info();
    assert.equal(after['liveBytes'], before['liveBytes']);
    assert.ok(after['storedBytes']! <= after['liveBytes']! * 1.25, JSON.stringify(after));
    // Through bin/vbfs (not a terminal): no bar, the JSON result.
    const r = await vbfs(['compact', 'v', '--json', '--full'], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const j = JSON.parse(r.stdout) as { liveBytes: number; storedBytes: number };
    assert.equal(j.liveBytes, before['liveBytes']);
  });

  it('refuses bad compaction mount options with a usage error', async () => {
    const r = await vbfs(['mount', '/nonexistent-mnt', '-o', 'compact_start=0.5'], dir);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /compact_start/);
  });
});
