import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupUnder, isMounted, requireFuse, spawnForegroundMount, tmpDir, vbfs, waitFor, type ForegroundMount } from './helpers/fuse-env';
import { Rng, envInt } from './helpers/rng';

/**
 * Scattered 4 KiB writes over a 16 TiB volume through a real mount (what a VM disk
 * or a database does): the vbfs process stays within its configured buffers (the
 * mount's --memory: write buffers + read caches) plus 200 MiB, while writing and
 * after a remount that loads the whole map. Before the extent index, every block
 * written to a new 16 MiB region cost a 104 KiB index page: 20,000 such writes took
 * 2 GiB. The bench runs the full 300,000 (VBFS_SCATTER_BLOCKS=300000).
 */
const MiB = 1024 * 1024;
const BLOCKS = envInt('VBFS_SCATTER_BLOCKS', 20_000);
const MEMORY = 64 * MiB;
const SLACK = 200 * MiB;
const VOLUME_BLOCKS = 2 ** 32; // 16 TiB of 4 KiB blocks

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

describe('FUSE: scattered writes over a 16 TiB volume keep the mount within its buffers', function () {
  // About 1.5 ms per write through FUSE on a loaded machine, plus the remount.
  this.timeout(Math.max(600_000, BLOCKS * 5));
  let root = '';
  let store = '';
  let mnt = '';
  const mounts: ForegroundMount[] = [];

  async function mount(): Promise<ForegroundMount> {
    const fg = spawnForegroundMount(store, mnt, ['--memory', String(MEMORY)]);
    mounts.push(fg);
    await waitFor(
      'the mount to serve',
      async () =>
        (await isMounted(mnt)) &&
        (await fsp.stat(path.join(mnt, 'disk')).then(
          () => true,
          () => false,
        )),
      60_000,
    );
    return fg;
  }

  async function unmount(fg: ForegroundMount): Promise<void> {
    const r = await vbfs(['unmount', mnt], store, { timeoutMs: Math.max(300_000, BLOCKS * 2) });
    assert.equal(r.code, 0, r.stderr);
    await fg.exited;
  }

  before(async function () {
    requireFuse(this);
    root = await tmpDir('scatter');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    await fsp.mkdir(mnt);
    const r = await vbfs(['create', 'disk', '--size', '16T'], store);
    assert.equal(r.code, 0, r.stderr);
  });

  after(async () => {
    for (const f of mounts) if (f.child.exitCode === null && f.child.signalCode === null) f.child.kill('SIGTERM');
    await cleanupUnder(root, [mnt], [], store);
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  it(`${BLOCKS} scattered 4 KiB writes, then a remount: RSS stays under --memory + 200 MiB`, async () => {
    const rng = new Rng(77);
    const blocks = new Float64Array(BLOCKS);
    for (let i = 0; i < BLOCKS; i++) blocks[i] = rng.int(VOLUME_BLOCKS);
    const fg = await mount();
    const pid = fg.child.pid as number;
    const limit = MEMORY + SLACK;
    let peak = 0;
    const fd = await fsp.open(path.join(mnt, 'disk'), 'r+');
    const buf = Buffer.alloc(4096);
    try {
      for (let i = 0; i < BLOCKS; i++) {
        buf.writeUInt32LE(i, 0);
        buf.writeDoubleLE(blocks[i] as number, 8);
        await fd.write(buf, 0, 4096, (blocks[i] as number) * 4096);
        if (i % 1000 === 999) peak = Math.max(peak, rssOf(pid));
      }
      await fd.sync();
    } finally {
      await fd.close();
    }
    peak = Math.max(peak, rssOf(pid));
    assert.ok(peak <= limit, `peak RSS while writing: ${Math.round(peak / MiB)} MiB > ${limit / MiB} MiB`);
    await unmount(fg);

    // The remount loads the map of every block written (checkpoint + map log).
    const fg2 = await mount();
    const after = rssOf(fg2.child.pid as number);
    const rd = await fsp.open(path.join(mnt, 'disk'), 'r');
    try {
      // The last write to a block wins (the same random block may come up twice).
      const last = new Map<number, number>();
      for (let i = 0; i < BLOCKS; i++) last.set(blocks[i] as number, i);
      let checked = 0;
      for (const [b, i] of last) {
        if (checked++ % 97 !== 0) continue;
        const got = Buffer.alloc(4096);
        await rd.read(got, 0, 4096, b * 4096);
        assert.equal(got.readUInt32LE(0), i, `block ${b}`);
        assert.equal(got.readDoubleLE(8), b);
      }
    } finally {
      await rd.close();
    }
    const afterRead = Math.max(after, rssOf(fg2.child.pid as number));
    assert.ok(afterRead <= limit, `RSS after the remount: ${Math.round(afterRead / MiB)} MiB > ${limit / MiB} MiB`);
    process.stdout.write(
      `      ${BLOCKS} scattered writes: peak RSS ${Math.round(peak / MiB)} MiB while writing, ${Math.round(afterRead / MiB)} MiB after the remount (limit ${limit / MiB} MiB)\n`,
    );
    await unmount(fg2);
  });
});
