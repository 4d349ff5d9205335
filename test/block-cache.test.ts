/**
 * The read cache (src/cache/block-cache.ts) and its default size: by default it
 * takes what the volume's memory share leaves after the write buffer, not a fixed
 * 64 MiB, so a working set that fits in that is read from memory the second time.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { BlockCache } from '../src/cache/block-cache';
import { Store } from '../src/store/store';
import { tmpDir } from './helpers/fuse-env';

const MiB = 1024 * 1024;

describe('BlockCache', () => {
  it('a large bound costs nothing up front; LRU order and eviction hold as it grows', () => {
    const evicted: number[] = [];
    const bs = 4096;
    const c = new BlockCache(1024 * MiB, bs, (b) => evicted.push(b));
    assert.equal(c.slabBytes, 0);
    c.setLimit(8 * MiB); // 2048 blocks
    const block = Buffer.alloc(bs);
    for (let b = 0; b < 2048; b++) {
      block.writeUInt32LE(b, 0);
      assert.ok(c.set(b, block));
    }
    assert.equal(c.slabBytes, 8 * MiB);
    assert.deepEqual(evicted, []);
    c.view(0); // 0 is the most recent now: 1 goes first
    c.set(5000, block);
    assert.deepEqual(evicted, [1]);
    const out = Buffer.alloc(bs);
    for (const b of [0, 2, 1000, 2047]) {
      assert.ok(c.copyOut(b, out, 0));
      assert.equal(out.readUInt32LE(0), b);
    }
    assert.equal(c.copyOut(1, out, 0), false);
    c.trim();
    assert.equal(c.slabBytes, 0);
    assert.ok(c.set(7, block));
    assert.ok(c.copyOut(7, out, 0));
  });
});

describe('read cache default size', function () {
  this.timeout(120_000);
  let dir = '';
  before(async () => {
    dir = await tmpDir('cachesize');
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('takes the memory share left after the write buffer: a 72 MiB working set is read from the cache the second time', async () => {
    // Share 100 MiB, write buffer 8 MiB: the cache may hold 92 MiB (a fixed 64 MiB one
    // would evict every block of a 72 MiB sequential pass before it is read again).
    const store = await Store.open(dir, { memoryBytes: 100 * MiB });
    const size = 72 * MiB;
    await store.createVolume('v', { size });
    let vol = await store.openVolume('v', { writeBufferBytes: 8 * MiB });
    const data = randomBytes(MiB);
    for (let off = 0; off < size; off += MiB) await vol.write(off, data);
    await vol.close();
    vol = await store.openVolume('v', { writeBufferBytes: 8 * MiB, readaheadBytes: 0 });
    for (let pass = 0; pass < 2; pass++) {
      for (let off = 0; off < size; off += MiB) assert.deepEqual(await vol.read(off, MiB), data);
    }
    const s = vol.stats();
    assert.equal(s.cacheHits, size / 4096, `hits ${s.cacheHits}, misses ${s.cacheMisses}`);
    assert.equal(s.cacheBytes, size);
    await vol.close();
    await store.close();
  });
});
