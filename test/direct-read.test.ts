/**
 * Chunk reads past the page cache (src/io/direct-read.ts, FileBackend.getDirect):
 * aligned buffers found by probing, ranges widened to 4 KiB boundaries and cut back,
 * short reads at the end of a file passed on as short, and buffered reads where the
 * filesystem refuses O_DIRECT.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { FileBackend } from '../src/backend/file-backend';
import { VbfsError, isVbfsError } from '../src/errors';
import { DIRECT_SLACK, DirectAlignment, readDirect } from '../src/io/direct-read';
import type { FileHandle } from '../src/io/file-io';
import { NodeFileIO } from '../src/io/node-file-io';
import { PassThroughFileIO } from '../src/io/pass-through-file-io';
import { Store } from '../src/store/store';
import { tmpDir } from './helpers/fuse-env';

const KiB = 1024;
const BS = 4096;

/** NodeFileIO whose direct opens fail as on a filesystem without O_DIRECT. */
class NoDirectOpen extends PassThroughFileIO {
  opens = 0;
  openDirect(p: string): Promise<FileHandle> {
    this.opens++;
    const cause = Object.assign(new Error('EINVAL: invalid argument, open'), { code: 'EINVAL' });
    return Promise.reject(new VbfsError('VBFS_IO', `open ${p} (O_DIRECT): EINVAL`, { path: p, errno: 'EINVAL' }, { cause }));
  }
}

/** NodeFileIO whose direct handles refuse every read with EINVAL (opens succeed, reads do not). */
class NoDirectRead extends PassThroughFileIO {
  reads = 0;
  async openDirect(p: string): Promise<FileHandle> {
    const fh = await this.inner.open(p, 'r');
    return Object.assign(Object.create(fh) as FileHandle, {
      read: () => {
        this.reads++;
        return Promise.reject(new VbfsError('VBFS_IO', `read ${p}: EINVAL`, { path: p, errno: 'EINVAL' }));
      },
      close: () => fh.close(),
    });
  }
}

describe('direct reads (O_DIRECT)', function () {
  this.timeout(60_000);
  let dir = '';
  beforeEach(async () => {
    dir = await tmpDir('direct');
  });
  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('finds an aligned offset in buffers at any byte offset, once per buffer, and reads unaligned ranges exactly', async () => {
    const file = path.join(dir, 'f');
    const data = randomBytes(64 * KiB + 300); // ends off any 4 KiB boundary
    await fsp.writeFile(file, data);
    const io = new NodeFileIO();
    const fh = await io.openDirect(file);
    try {
      const al = new DirectAlignment();
      const big = Buffer.allocUnsafeSlow(256 * KiB);
      for (const skew of [0, 16, 48, 512, 4000]) {
        const buf = big.subarray(skew, skew + 128 * KiB);
        const at = await al.of(fh, buf);
        assert.equal(typeof at, 'number', `skew ${skew}: ${String(at)}`);
        const probes = al.probes;
        assert.equal(await al.of(fh, buf), at, 'known after the first probe');
        assert.equal(al.probes, probes, 'no probe for a known buffer');
        for (const [pos, len] of [
          [0, 4096],
          [1, 1],
          [4095, 2],
          [100, 10_000],
          [8192, 32 * KiB],
          [12_345, 40 * KiB],
        ] as const) {
          const v = await readDirect(fh, buf, at as number, pos, len);
          assert.ok(v !== null);
          assert.deepEqual(v, data.subarray(pos, pos + len), `skew ${skew} pos ${pos} len ${len}`);
        }
      }
      // The same ArrayBuffer, another view: its aligned offset follows without probing.
      const probes = al.probes;
      const at = await al.of(fh, big.subarray(100, 100 + 64 * KiB));
      assert.equal(al.probes, probes);
      const v = await readDirect(fh, big.subarray(100, 100 + 64 * KiB), at as number, 5000, 7000);
      assert.deepEqual(v, data.subarray(5000, 12_000));
      // Too small for the widened range: null, the caller reads buffered.
      assert.equal(await readDirect(fh, big.subarray(0, 16 * KiB), at as number, 1, 16 * KiB), null);
    } finally {
      await fh.close();
    }
  });

  it('a range past the end of the file comes back short, never padded with stale buffer bytes', async () => {
    const file = path.join(dir, 'f');
    const data = randomBytes(3 * BS + 777);
    await fsp.writeFile(file, data);
    const fh = await new NodeFileIO().openDirect(file);
    try {
      const al = new DirectAlignment();
      const buf = Buffer.alloc(64 * KiB, 0xee); // stale bytes everywhere
      const at = (await al.of(fh, buf)) as number;
      buf.fill(0xee);
      const v = await readDirect(fh, buf, at, 2 * BS + 10, 4 * BS);
      assert.deepEqual(v, data.subarray(2 * BS + 10));
      const end = await readDirect(fh, buf, at, data.length, BS);
      assert.equal(end?.length, 0);
      const beyond = await readDirect(fh, buf, at, data.length + 5 * BS, BS);
      assert.equal(beyond?.length, 0);
    } finally {
      await fh.close();
    }
  });

  it('a volume reads its chunks past the page cache, with the right bytes and the same damage checks', async () => {
    const data = randomBytes(512 * BS);
    const backend = new FileBackend(path.join(dir, 'objects'), new NodeFileIO(), { directReads: true });
    let direct = 0;
    const get = backend.getDirect.bind(backend);
    backend.getDirect = async (key, offset, length, scratch) => {
      const v = await get(key, offset, length, scratch);
      if (v !== null) direct++;
      return v;
    };
    const store = await Store.open(dir, { backend });
    await store.createVolume('v', { size: data.length });
    let vol = await store.openVolume('v');
    await vol.write(0, data);
    await vol.close();
    vol = await store.openVolume('v', { cacheBytes: 0 });
    for (let i = 0; i < 100; i++) {
      const off = ((i * 7919) % 500) * BS + (i % 5) * 100;
      const len = 1 + ((i * 104_729) % (12 * BS));
      assert.deepEqual(await vol.read(off, len), data.subarray(off, off + len), `read ${i}`);
    }
    assert.ok(backend.directReads);
    assert.ok(direct >= 100, `${direct} direct reads`);
    // A flipped byte in a chunk is still damage (CRC), read directly.
    const chunks: string[] = [];
    for (const e of await fsp.readdir(path.join(dir, 'objects'), { recursive: true, withFileTypes: true })) {
      if (e.isFile() && e.parentPath.endsWith('chunks')) chunks.push(path.join(e.parentPath, e.name));
    }
    chunks.sort();
    const f = await fsp.open(chunks[0] as string, 'r+');
    const b = Buffer.alloc(1);
    await f.read(b, 0, 1, 200);
    b[0] = (b[0] as number) ^ 0xff;
    await f.write(b, 0, 1, 200);
    await f.sync();
    await f.close();
    await assert.rejects(vol.read(0, BS), (e: unknown) => isVbfsError(e, 'VBFS_CORRUPT'));
    await vol.close();
    await store.close();
  });

  for (const [name, make] of [
    ['opens', (): NoDirectOpen | NoDirectRead => new NoDirectOpen(new NodeFileIO())],
    ['reads', (): NoDirectOpen | NoDirectRead => new NoDirectRead(new NodeFileIO())],
  ] as const) {
    it(`falls back to buffered reads where the filesystem refuses direct ${name} (EINVAL), and stops trying`, async () => {
      const io = make();
      const data = randomBytes(64 * BS);
      const backend = new FileBackend(path.join(dir, 'objects'), io, { directReads: true });
      assert.equal(backend.directReads, true);
      const store = await Store.open(dir, { backend, fileIO: io });
      await store.createVolume('v', { size: data.length });
      let vol = await store.openVolume('v');
      await vol.write(0, data);
      await vol.close();
      vol = await store.openVolume('v', { cacheBytes: 0, readaheadBytes: 0 });
      for (let i = 0; i < 20; i++) assert.deepEqual(await vol.read(i * 3 * BS, 2 * BS), data.subarray(i * 3 * BS, i * 3 * BS + 2 * BS));
      assert.equal(backend.directReads, false);
      const tries = io instanceof NoDirectOpen ? io.opens : io.reads;
      assert.ok(tries >= 1 && tries <= 256, `${tries} direct attempts`);
      assert.deepEqual(await vol.read(0, data.length), data);
      assert.equal(io instanceof NoDirectOpen ? io.opens : io.reads, tries, 'no direct attempt after the refusal');
      await vol.close();
      await store.close();
    });
  }

  it('direct reads are off unless asked for, and where the file layer has no direct open', () => {
    assert.equal(new FileBackend(dir, new PassThroughFileIO(new NodeFileIO()), { directReads: true }).directReads, false);
    assert.equal(new FileBackend(dir, new NodeFileIO()).directReads, false);
    assert.equal(new FileBackend(dir, new NodeFileIO(), { directReads: true }).directReads, true);
    assert.ok(DIRECT_SLACK >= 3 * BS);
  });
});
