/**
 * Damaged data read through a real mount: a flipped bit in a chunk object gives
 * the reader EIO (never wrong bytes), is logged once with the chunk file and
 * offset (not once per read), counts as `corrupt_reads` in .stats, is never served
 * from the read cache, and leaves every other block readable. Needs root and
 * /dev/fuse.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import * as path from 'node:path';
import { parseStats } from '../src/fuse/stats-file';
import { cleanupUnder, isMounted, requireFuse, run, sha256, spawnForegroundMount, tmpDir, vbfs, waitFor, type ForegroundMount } from './helpers/fuse-env';

const MiB = 1024 * 1024;
const BS = 4096;
const HDR = 64; // chunk header
const REC = 32; // record header: crc, len, seq, block, flags, rawLen

/** Where block `block`'s record sits in a chunk object, or null (walks the records). */
function findRecord(obj: Buffer, block: number): { offset: number; len: number } | null {
  for (let at = HDR; at + REC <= obj.length;) {
    const len = obj.readUInt32LE(at + 4);
    if (Number(obj.readBigUInt64LE(at + 16)) === block) return { offset: at, len };
    at += REC + len;
  }
  return null;
}

/** dd one direct-I/O read; resolves with the bytes or the error line. */
async function ddDirect(file: string, block: number, count = 1): Promise<{ ok: boolean; data: Buffer; stderr: string }> {
  const r = await run('sh', ['-c', `dd if='${file}' bs=${BS} skip=${block} count=${count} iflag=direct status=none | base64 -w0`]);
  return { ok: !/error/i.test(r.stderr) && r.stdout.length > 0, data: Buffer.from(r.stdout, 'base64'), stderr: r.stderr };
}

describe('FUSE: reads of damaged chunk data (bin/vbfs)', function () {
  this.timeout(180_000);

  let root = '';
  let store = '';
  let mnt = '';
  let fg: ForegroundMount | null = null;

  before(async function () {
    requireFuse(this);
    root = await tmpDir('fuse-damage');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    await fsp.mkdir(mnt);
  });

  afterEach(() => {
    if (fg && fg.child.exitCode === null && fg.child.signalCode === null) fg.child.kill('SIGKILL');
  });

  after(async function () {
    if (!root) return;
    await cleanupUnder(root, [mnt], [], store);
    if (!(await isMounted(mnt))) await fsp.rm(root, { recursive: true, force: true });
  });

  async function mount(): Promise<ForegroundMount> {
    const m = spawnForegroundMount(store, mnt);
    fg = m;
    await waitFor(
      'foreground mount',
      async () =>
        (await isMounted(mnt)) &&
        (await fsp.stat(path.join(mnt, '.stats')).then(
          () => true,
          () => false,
        )),
    );
    return m;
  }

  async function unmount(m: ForegroundMount): Promise<void> {
    const r = await vbfs(['unmount', mnt], store);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await m.exited, 0, m.output());
  }

  async function stats(volume: string): Promise<Record<string, string | number>> {
    return parseStats(await fsp.readFile(path.join(mnt, '.stats'), 'utf8')).volumes[volume] ?? {};
  }

  for (const compression of ['none', 'lz4'] as const) {
    it(`compression ${compression}: EIO for the damaged block, logged once, counted, other blocks intact`, async () => {
      const name = `d-${compression}`;
      const c = await vbfs(['create', name, '--size', '64M', '--compression', compression], store);
      assert.equal(c.code, 0, c.stderr);
      // 8 MiB: several 4 MiB chunks. lz4 gets compressible blocks (distinct per block).
      const data = compression === 'lz4' ? Buffer.alloc(8 * MiB) : randomBytes(8 * MiB);
      if (compression === 'lz4') for (let b = 0; b < data.length / BS; b++) data.fill(b % 251, b * BS, b * BS + 3000);
      let m = await mount();
      const fh = await fsp.open(path.join(mnt, name), 'r+');
      await fh.write(data, 0, data.length, 0);
      await fh.sync();
      await fh.close();
      await unmount(m); // close flushes every block into chunk objects

      // Flip one bit in the payload of block 300's record.
      const target = 300;
      const { id } = JSON.parse(await fsp.readFile(path.join(store, 'volumes', name, 'volume.json'), 'utf8')) as { id: string };
      const dir = path.join(store, 'objects', id, 'chunks');
      let chunkFile = '';
      let recordOffset = -1;
      for (const f of await fsp.readdir(dir)) {
        const obj = await fsp.readFile(path.join(dir, f));
        const rec = findRecord(obj, target);
        if (!rec) continue;
        chunkFile = path.join(dir, f);
        recordOffset = rec.offset;
        const flip = rec.offset + REC + Math.floor(rec.len / 2);
        const fd = await fsp.open(chunkFile, 'r+');
        await fd.write(Buffer.of(obj[flip]! ^ 0x10), 0, 1, flip);
        await fd.sync();
        await fd.close();
        break;
      }
      assert.ok(chunkFile, 'found the chunk holding the target block');

      m = await mount();
      const file = path.join(mnt, name);
      for (let i = 1; i <= 3; i++) {
        const bad = await ddDirect(file, target);
        assert.equal(bad.ok, false, `read ${i} of the damaged block must fail`);
        assert.match(bad.stderr, /Input\/output error/);
        if (i <= 2) assert.equal((await stats(name))['corrupt_reads'], i, 'one count per read that met the damage');
      }
      // Neighbours in the same chunk (same backend run) and a block in another chunk.
      for (const b of [target - 1, target + 1, 5, 1500]) {
        const good = await ddDirect(file, b);
        assert.ok(good.ok, `block ${b}: ${good.stderr}`);
        assert.equal(sha256(good.data), sha256(data.subarray(b * BS, (b + 1) * BS)), `block ${b} reads back exactly`);
      }
      // A read spanning the damage fails whole; a sequential read up to it (readahead
      // over the damaged block) must not let the cache serve it afterwards.
      assert.equal((await ddDirect(file, target - 4, 8)).ok, false);
      for (let b = target - 8; b < target; b++) assert.ok((await ddDirect(file, b)).ok);
      assert.equal((await ddDirect(file, target)).ok, false, 'not served from the cache after readahead');
      // Buffered (page cache) reads see the same error.
      const h = await fsp.open(file, fsc.O_RDONLY);
      await assert.rejects(h.read(Buffer.alloc(BS), 0, BS, target * BS), { code: 'EIO' });
      await h.close();

      const s = await stats(name);
      assert.ok(Number(s['corrupt_reads']) >= 5, `corrupt_reads ${String(s['corrupt_reads'])}`);
      // Overwriting the whole block replaces the damaged version (no read of it needed).
      const fresh = randomBytes(BS);
      const w = await fsp.open(file, 'r+');
      await w.write(fresh, 0, BS, target * BS);
      await w.sync();
      await w.close();
      const back = await ddDirect(file, target);
      assert.ok(back.ok, back.stderr);
      assert.equal(sha256(back.data), sha256(fresh));
      await unmount(m);
      const out = m.output();
      const lines = out.split('\n').filter((l) => l.includes(chunkFile) && l.includes(`offset ${recordOffset}`));
      assert.equal(lines.length, 1, `the damage is logged once, naming file and offset:\n${out}`);
      assert.doesNotMatch(out, /read \/d-\S+ failed/, 'no log line per failed read');
    });
  }
});
