import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import type { Backend } from '../src/backend/backend';
import { DiskCacheBackend } from '../src/backend/disk-cache';
import type { Lease, LeaseBackend } from '../src/backend/lease';
import { MemoryBackend } from '../src/backend/memory-backend';
import { NodeFileIO } from '../src/io/node-file-io';
import { Store } from '../src/store/store';
import { FencedBackend } from '../src/store/volume-lease';
import { backendSuite, pattern } from './backend-suite';
import { tmpDir } from './helpers/fuse-env';

/** A MemoryBackend that counts the reads that reach it, and says it is remote (as S3 does). */
class CountingBackend extends MemoryBackend {
  gets = 0;
  readonly remote = true;
  override get(key: string, offset?: number, length?: number): Promise<Buffer> {
    this.gets++;
    return super.get(key, offset, length);
  }
  /** Outlives the caches put in front of it (a test reopens one over the same objects). */
  override async close(): Promise<void> {}
}

const PIECE = 4096;
const dirs: string[] = [];
async function cacheDir(): Promise<string> {
  const d = await tmpDir('dcache');
  dirs.push(d);
  return d;
}
after(async () => {
  for (const d of dirs.splice(0)) await fsp.rm(d, { recursive: true, force: true });
});

backendSuite('DiskCacheBackend over MemoryBackend', async () =>
  DiskCacheBackend.open(new MemoryBackend(), { dir: `${await cacheDir()}/c`, fileIO: new NodeFileIO(), maxBytes: 1 << 20, pieceBytes: PIECE }),
);

describe('DiskCacheBackend (local disk chunk cache)', () => {
  const KEY = 'vol/chunks/0000000001';
  let dir: string;
  let inner: CountingBackend;
  let cache: DiskCacheBackend;
  const open = (maxBytes = 1 << 20, be: Backend = inner): Promise<DiskCacheBackend> =>
    DiskCacheBackend.open(be, { dir, fileIO: new NodeFileIO(), maxBytes, pieceBytes: PIECE });

  beforeEach(async () => {
    dir = `${await cacheDir()}/cache`;
    inner = new CountingBackend();
    cache = await open();
  });
  afterEach(async () => {
    await cache.close().catch(() => undefined);
  });

  it('serves warm ranged reads from disk: written-through chunks and fetched pieces never reach the backend again', async () => {
    const data = pattern(5 * PIECE + 100, 1);
    await cache.put(KEY, data); // write-through
    for (const [off, len] of [
      [0, 10],
      [PIECE - 5, 10],
      [100, 3 * PIECE],
      [5 * PIECE, 100],
      [5 * PIECE + 50, 500], // past the end: the bytes that exist
    ] as const) {
      assert.deepEqual(await cache.get(KEY, off, len), data.subarray(off, off + len));
    }
    assert.equal(inner.gets, 0, 'every read came from the disk');
    // An object put behind the cache's back (another machine): fetched once, piece by piece.
    const other = pattern(3 * PIECE, 2);
    await inner.put('vol/chunks/0000000002', other);
    assert.deepEqual(await cache.get('vol/chunks/0000000002', 10, 2 * PIECE), other.subarray(10, 10 + 2 * PIECE));
    const cold = inner.gets;
    assert.equal(cold, 3, 'one ranged GET per missing piece (0..2)');
    assert.deepEqual(await cache.get('vol/chunks/0000000002', 0, 3 * PIECE), other);
    assert.equal(inner.gets, cold, 'warm');
    const c = cache.counters();
    assert.equal(c.diskCacheMisses, 1);
    assert.equal(c.diskCacheHits, 6);
  });

  it("getInto reads into the caller's buffer (the reader's reused run buffers): the bytes of get(), warm or fetched, short at the object's end", async () => {
    const data = pattern(5 * PIECE + 100, 11);
    await cache.put(KEY, data); // write-through: warm
    const other = pattern(3 * PIECE, 12);
    await inner.put('vol/chunks/0000000002', other); // not cached: fetched piece by piece
    for (const [key, obj] of [
      [KEY, data],
      ['vol/chunks/0000000002', other],
    ] as const) {
      for (const [off, len] of [
        [0, 10],
        [PIECE - 5, 10],
        [100, 3 * PIECE],
        [obj.length - 100, 500], // past the end: the bytes that exist
      ] as const) {
        const dst = Buffer.alloc(len, 0xee);
        const n = await cache.getInto(key, off, dst);
        const want = obj.subarray(off, off + len);
        assert.equal(n, want.length, `${key} ${off}+${len}`);
        assert.deepEqual(dst.subarray(0, n), want);
        assert.ok(
          dst.subarray(n).every((x) => x === 0xee),
          'nothing written past what was read',
        );
      }
    }
    // Not a chunk object: straight through to the backend.
    await inner.put('vol/volume.json', Buffer.from('{"x":1}'));
    const meta = Buffer.alloc(7);
    assert.equal(await cache.getInto('vol/volume.json', 0, meta), 7);
    assert.equal(meta.toString(), '{"x":1}');
  });

  it('a store volume over a remote backend reads through getInto (no fresh buffer per warm read)', async () => {
    const store = await Store.open(await cacheDir(), { backend: inner, diskCacheBytes: 1 << 20 });
    try {
      const dc = store.backend as DiskCacheBackend;
      let gets = 0;
      const get = dc.get.bind(dc);
      dc.get = (key: string, offset?: number, length?: number): Promise<Buffer> => {
        if (key.includes('/chunks/')) gets++;
        return get(key, offset, length);
      };
      await store.createVolume('v', { size: 1 << 20 });
      const vol = await store.openVolume('v', { cacheBytes: 0, readaheadBytes: 0 });
      const data = pattern(64 * 1024, 13);
      await vol.write(0, data);
      await vol.flush();
      assert.deepEqual(await vol.read(0, data.length), data);
      assert.equal(gets, 0, 'chunk reads went through getInto');
      assert.ok(vol.stats().diskCacheHits > 0);
      await vol.close();
    } finally {
      await store.close();
    }
  });

  it("a leased volume's FencedBackend passes getInto through to the cache (real mounts of bucket volumes read through it)", async () => {
    const data = pattern(2 * PIECE, 14);
    await cache.put(KEY, data);
    const fenced = new FencedBackend(cache as unknown as Backend & LeaseBackend, {} as Lease, 'vol');
    assert.ok(fenced.getInto, 'offered when the inner backend has it');
    const dst = Buffer.alloc(PIECE + 10);
    assert.equal(await fenced.getInto(KEY, 5, dst), dst.length);
    assert.deepEqual(dst, data.subarray(5, 5 + dst.length));
    assert.equal(new FencedBackend(inner as unknown as Backend & LeaseBackend, {} as Lease, 'vol').getInto, undefined, 'not offered when it has none');
  });

  it('does not cache what is not a chunk object (a lease, metadata): those always go to the backend', async () => {
    await cache.put('vol/lease', Buffer.from('holder A'));
    await inner.put('vol/lease', Buffer.from('holder B')); // changed elsewhere
    assert.equal((await cache.get('vol/lease', 0, 8)).toString(), 'holder B');
  });

  it('never serves the old bytes of a key that was put again or deleted', async () => {
    await cache.put(KEY, pattern(2 * PIECE, 3));
    await cache.get(KEY, 0, 2 * PIECE);
    const fresh = pattern(2 * PIECE, 4);
    await cache.put(KEY, fresh);
    assert.deepEqual(await cache.get(KEY, 0, 2 * PIECE), fresh);
    await cache.delete(KEY);
    await assert.rejects(cache.get(KEY, 0, 10), (e: { code?: string }) => e.code === 'VBFS_NOT_FOUND');
    assert.deepEqual(fs.readdirSync(dir), [], 'no piece left behind');
  });

  it('stays within its byte budget, evicting the least recently used pieces', async () => {
    await cache.close();
    cache = await open(4 * (PIECE + 100)); // four pieces with their headers
    for (let i = 1; i <= 3; i++) await inner.put(`vol/chunks/${i}`, pattern(2 * PIECE, 10 + i));
    // (Fetched pieces are written in the background: idle() waits for them, so the order is exact.)
    await cache.get('vol/chunks/1', 0, 2 * PIECE);
    await cache.idle();
    await cache.get('vol/chunks/2', 0, 2 * PIECE);
    await cache.idle();
    await cache.get('vol/chunks/1', 0, 2 * PIECE); // 1 is now more recent than 2
    await cache.get('vol/chunks/3', 0, 2 * PIECE); // evicts 2's pieces
    await cache.idle();
    assert.ok(cache.bytes <= 4 * (PIECE + 100), `${cache.bytes} bytes held`);
    const onDisk = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(`${dir}/${f}`).size, 0);
    assert.equal(onDisk, cache.bytes);
    const before = inner.gets;
    await cache.get('vol/chunks/1', 0, PIECE);
    await cache.get('vol/chunks/3', 0, 2 * PIECE);
    assert.equal(inner.gets, before, '1 and 3 still cached');
    await cache.get('vol/chunks/2', 0, PIECE);
    assert.equal(inner.gets, before + 1, '2 was evicted');
  });

  it('survives a restart: the index is rebuilt from the files, warm reads stay warm', async () => {
    const data = pattern(3 * PIECE, 5);
    await cache.put(KEY, data);
    await cache.close();
    cache = await open(1 << 20, inner);
    assert.equal(
      cache.bytes,
      fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(`${dir}/${f}`).size, 0),
    );
    assert.deepEqual(await cache.get(KEY, 0, 3 * PIECE), data);
    assert.equal(inner.gets, 0);
  });

  it('never serves a cut-short, overlong or foreign piece file, and removes temp files of a crashed write', async () => {
    const data = pattern(3 * PIECE, 6);
    await cache.put(KEY, data);
    await cache.close();
    const files = fs.readdirSync(dir).sort();
    assert.equal(files.length, 3);
    fs.truncateSync(`${dir}/${files[0]}`, 100); // torn: shorter than its header says
    fs.appendFileSync(`${dir}/${files[1]}`, 'x'); // longer than its header says
    fs.writeFileSync(`${dir}/${files[2]}`, Buffer.alloc(PIECE + 60)); // zeros of a plausible length (a power cut)
    fs.writeFileSync(`${dir}/.tmp-1-1`, 'half a piece');
    cache = await open(1 << 20, inner);
    assert.ok(!fs.existsSync(`${dir}/.tmp-1-1`));
    assert.deepEqual(await cache.get(KEY, 0, 3 * PIECE), data, 'right bytes, from the backend');
    assert.equal(inner.gets, 3, 'each damaged piece fetched again');
    await cache.idle();
    const again = inner.gets;
    assert.deepEqual(await cache.get(KEY, 0, 3 * PIECE), data);
    assert.equal(inner.gets, again, 'and kept again');
  });

  it('creates its directory 0700 and its files 0600', async () => {
    await cache.put(KEY, pattern(PIECE, 7));
    assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
    for (const f of fs.readdirSync(dir)) assert.equal(fs.statSync(`${dir}/${f}`).mode & 0o777, 0o600);
  });

  it('a read of a damaged cached piece through a store: the record CRC catches it, the cache copy is dropped and the bucket read', async () => {
    const store = await Store.open(await cacheDir(), { backend: inner, diskCacheBytes: 1 << 20 });
    try {
      await store.createVolume('v', { size: 1 << 20 });
      const vol = await store.openVolume('v', { cacheBytes: 0, readaheadBytes: 0 });
      const data = pattern(64 * 1024, 8);
      await vol.write(0, data);
      await vol.flush();
      const cdir = `${store.dir}/cache`;
      const pieces = fs.readdirSync(cdir);
      assert.ok(pieces.length > 0, 'written through');
      // Flip one payload byte in every piece, keeping lengths: only the CRCs can tell.
      for (const f of pieces) {
        const b = fs.readFileSync(`${cdir}/${f}`);
        b[b.length - 10] = (b[b.length - 10] as number) ^ 0xff;
        fs.writeFileSync(`${cdir}/${f}`, b);
      }
      inner.gets = 0;
      assert.deepEqual(await vol.read(0, data.length), data);
      assert.ok(inner.gets > 0, 'read from the backend');
      assert.equal(vol.stats().corruptReads, 0);
      await vol.close();
    } finally {
      await store.close();
    }
  });

  it('is on by default in front of a remote backend (1 GiB), off for the local file backend, and shows in .stats', async () => {
    const s3ish = await Store.open(await cacheDir(), { backend: inner });
    const local = await Store.open(await cacheDir());
    try {
      assert.ok(s3ish.backend instanceof DiskCacheBackend);
      assert.equal(s3ish.backend.maxBytes, 1024 * 1024 * 1024);
      assert.ok(!(local.backend instanceof DiskCacheBackend));
      await s3ish.createVolume('v', { size: 1 << 20 });
      const vol = await s3ish.openVolume('v', { cacheBytes: 0 });
      await vol.write(0, pattern(8192, 9));
      await vol.flush();
      await vol.read(0, 8192);
      const st = vol.stats();
      assert.equal(st.diskCacheHits, 1);
      assert.ok(st.diskCacheBytes > 8192);
      assert.equal(st.backendRetries, 0);
      await vol.close();
    } finally {
      await s3ish.close();
      await local.close();
    }
  });
});
