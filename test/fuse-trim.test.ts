/**
 * TRIM and zero blocks through a real mount (bin/vbfs with the fallocate patch of
 * fuse-native): ext4 on a loop device over a volume file gives space back on
 * fstrim, and blkdiscard (-z) / dd of zeros leave no chunk bytes for their blocks.
 * Needs root, /dev/fuse and a fuse-native built with fallocate (a failure in CI).
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { checkExt4, cleanupUnder, isMounted, loopsUnder, must, requireFuse, run, sha256, sha256File, tmpDir, vbfs, waitFor } from './helpers/fuse-env';

const MiB = 1024 * 1024;
/** The large file fstrim must give back (the 1 GiB; VBFS_TRIM_MIB makes it smaller for a quick run). */
const BIG = Number(process.env['VBFS_TRIM_MIB'] ?? 1024) * MiB;

/** Bytes of every file under dir (the store: chunk objects, WAL, map); files may come and go meanwhile. */
function treeBytes(dir: string): number {
  let n = 0;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0; // a directory removed meanwhile
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) n += treeBytes(p);
    else if (e.isFile()) n += fs.statSync(p, { throwIfNoEntry: false })?.size ?? 0;
  }
  return n;
}

/** The counters of one volume in <mnt>/.stats. */
async function volumeStats(mnt: string, name: string): Promise<Record<string, number>> {
  const text = await fsp.readFile(path.join(mnt, '.stats'), 'utf8');
  const out: Record<string, number> = {};
  const section = text.split(`[${name}]`)[1]?.split('\n[')[0] ?? '';
  for (const line of section.split('\n')) {
    const m = /^(\S+)\s+(-?\d+(?:\.\d+)?)$/.exec(line.trim());
    if (m) out[m[1] as string] = Number(m[2]);
  }
  return out;
}

describe('FUSE TRIM and zero blocks (fstrim, blkdiscard, dd of zeros)', function () {
  this.timeout(300_000);

  let root = '';
  let store = '';
  let mnt = '';
  let ext = '';
  const loops: string[] = [];

  async function attach(file: string): Promise<string> {
    const loop = (await must('losetup', ['-f', '--show', file])).trim();
    loops.push(loop);
    return loop;
  }
  async function detach(loop: string): Promise<void> {
    await run('losetup', ['-d', loop]);
    loops.splice(loops.indexOf(loop), 1);
    await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
  }
  /** Wait until the volume has flushed and its tombstones are committed, and the store size settles. */
  async function settled(name: string): Promise<number> {
    let last = -1;
    let bytes = treeBytes(store);
    await waitFor(
      `volume ${name} flushed and the store size stable`,
      async () => {
        const s = await volumeStats(mnt, name);
        last = bytes;
        await new Promise((r) => setTimeout(r, 1500));
        bytes = treeBytes(store);
        return s['pending_bytes'] === 0 && s['zero_blocks_unflushed'] === 0 && bytes === last;
      },
      120_000,
    );
    return bytes;
  }

  before(async function () {
    requireFuse(this);
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- whether the binding has the op
    const Fuse = require('fuse-native') as { supportsFallocate?: boolean };
    if (Fuse.supportsFallocate !== true) {
      if (process.env['CI'] === 'true') assert.fail('fuse-native was not rebuilt with fallocate (see the postinstall output of npm ci)');
      this.skip();
    }
    root = await tmpDir('trim');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    ext = path.join(root, 'ext');
    await fsp.mkdir(mnt);
    await fsp.mkdir(ext);
    for (const [name, size] of [
      // Room for the big file next to the ext4 metadata and the files kept.
      ['disk', `${Math.max(1024, 2 * (BIG / MiB))}M`],
      ['zero', '128M'],
    ] as const) {
      const r = await vbfs(['create', name, '--size', size], store);
      assert.equal(r.code, 0, r.stderr);
    }
    const r = await vbfs(['mount', mnt, '--daemon'], store);
    assert.equal(r.code, 0, `vbfs mount --daemon failed: ${r.stderr}`);
  });

  after(async function () {
    if (!root) return;
    await run('umount', [ext]);
    for (const l of loops.splice(0)) await run('losetup', ['-d', l]);
    await cleanupUnder(root, [mnt], [ext], store);
    if (!(await isMounted(mnt))) await fsp.rm(root, { recursive: true, force: true });
  });

  it(`fstrim frees space: ext4 on a loop device, delete a ${BIG / MiB} MiB file, fstrim; the store shrinks by >= 90% of it, fsck clean, other files intact`, async () => {
    const loop = await attach(path.join(mnt, 'disk'));
    try {
      await fstrimFrees(loop);
    } finally {
      // A failure must not leave the ext4 or the loop device to the next test.
      await run('umount', [ext]);
      if (loops.includes(loop)) await detach(loop);
    }
  });

  async function fstrimFrees(loop: string): Promise<void> {
    await must('mkfs.ext4', ['-q', '-F', loop]);
    await must('mount', [loop, ext]);
    const sums = new Map<string, string>();
    for (let f = 0; f < 20; f++) {
      const data = randomBytes(1 + ((f * 104729) % (700 * 1024)));
      await fsp.writeFile(path.join(ext, `keep${f}`), data);
      sums.set(`keep${f}`, sha256(data));
    }
    await must('dd', ['if=/dev/urandom', `of=${path.join(ext, 'big')}`, 'bs=1M', `count=${BIG / MiB}`, 'conv=fsync', 'status=none']);
    await must('sync', []);
    const full = await settled('disk');

    await fsp.rm(path.join(ext, 'big'));
    await must('sync', []);
    const trimmed = await must('fstrim', ['-v', ext]);
    const after = await settled('disk');
    const freed = full - after;
    assert.ok(
      freed >= 0.9 * BIG,
      `the store shrank by ${(freed / MiB).toFixed(1)} MiB (from ${(full / MiB).toFixed(1)} to ${(after / MiB).toFixed(1)} MiB), less than 90% of ${BIG / MiB} MiB (fstrim: ${trimmed.trim()})`,
    );
    const st = await volumeStats(mnt, 'disk');
    assert.ok((st['trims'] ?? 0) > 0 && (st['zero_blocks'] ?? 0) >= BIG / 4096, `.stats counts the trims: ${JSON.stringify(st)}`);

    await must('umount', [ext]);
    await checkExt4(loop, ext, sums);
    console.log(`      store: ${(full / MiB).toFixed(1)} MiB with the file, ${(after / MiB).toFixed(1)} MiB after rm + fstrim (${trimmed.trim()})`);
  }

  it('zero blocks: blkdiscard -z, blkdiscard and dd if=/dev/zero leave no chunk bytes for their blocks', async () => {
    const file = path.join(mnt, 'zero');
    const base = await settled('zero');
    await must('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', 'count=96', 'conv=notrunc,fsync', 'status=none']);
    const full = await settled('zero');
    assert.ok(full - base >= 96 * MiB, `96 MiB written took ${(full - base) / MiB} MiB`);

    const loop = await attach(file);
    try {
      await must('blkdiscard', ['-z', '-o', '0', '-l', String(32 * MiB), loop]);
      await must('blkdiscard', ['-o', String(32 * MiB), '-l', String(32 * MiB), loop]);
    } finally {
      await detach(loop);
    }
    await must('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', 'count=32', 'seek=64', 'conv=notrunc,fsync', 'status=none']);
    const after = await settled('zero');
    assert.ok(after - base < MiB, `${((after - base) / MiB).toFixed(2)} MiB still stored for 96 MiB of zeroed, discarded and zero-written blocks`);
    assert.equal(await sha256File(file, 0, 96 * MiB), sha256(Buffer.alloc(96 * MiB)));
    const st = await volumeStats(mnt, 'zero');
    assert.ok((st['zero_blocks'] ?? 0) >= (96 * MiB) / 4096, `.stats: ${JSON.stringify(st)}`);
  });

  it('fallocate modes: punch hole and zero range succeed, allocate inside is a no-op, growing the file is EOPNOTSUPP', async () => {
    const file = path.join(mnt, 'zero');
    const fa = (args: string[]): Promise<{ code: number; stderr: string }> => run('fallocate', [...args, file]);
    assert.equal((await fa(['--punch-hole', '--offset', '4096', '--length', '8192'])).code, 0);
    assert.equal((await fa(['--zero-range', '--offset', '0', '--length', String(MiB)])).code, 0);
    assert.equal((await fa(['--offset', '0', '--length', String(MiB)])).code, 0, 'plain allocate inside the file');
    const grow = await fa(['--offset', String(128 * MiB - 4096), '--length', String(MiB)]);
    assert.notEqual(grow.code, 0);
    assert.match(grow.stderr, /not supported/i);
    const collapse = await fa(['--collapse-range', '--offset', '0', '--length', String(MiB)]);
    assert.notEqual(collapse.code, 0, 'collapse range is refused');
  });
});
