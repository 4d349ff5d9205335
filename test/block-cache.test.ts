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
    // Read twice, with other reads between: the second read admits each block to the main LRU (2Q).
    for (const from of [0, 10_000, 0]) {
      for (let b = from; b < from + (from === 0 ? 1536 : 512); b++) {
        block.writeUInt32LE(b, 0);
        assert.ok(c.set(b, block));
      }
    }
    assert.equal(c.slabBytes, 8 * MiB);
    assert.equal(c.bytes, 8 * MiB);
    assert.equal(c.probationBytes, 2 * MiB); // its share: a quarter of this small cache
    evicted.length = 0;
    c.view(0); // 0 is the most recent now: 1 goes first
    c.set(5000, block); // read once: recycles probation's oldest
    c.set(10_000, block); // read again: admitted, evicts main's least recently used
    assert.deepEqual(evicted, [10_000, 1]);
    const out = Buffer.alloc(bs);
    for (const b of [0, 2, 1000, 1535]) {
      assert.ok(c.copyOut(b, out, 0));
      assert.equal(out.readUInt32LE(0), b);
    }
    assert.equal(c.copyOut(1, out, 0), false);
    c.trim();
    assert.equal(c.slabBytes, 0);
    assert.ok(c.set(7, block));
    assert.ok(c.copyOut(7, out, 0));
  });

  describe('admission (2Q)', () => {
    const bs = 4096;
    const block = (b: number): Buffer => {
      const buf = Buffer.alloc(bs);
      buf.writeUInt32LE(b, 0);
      return buf;
    };
    /** A 64 MiB cache (16384 blocks): probation is a quarter of it, 4096 blocks. */
    const cache = (): BlockCache => {
      const c = new BlockCache(1024 * MiB, bs, () => undefined);
      c.setLimit(64 * MiB);
      return c;
    };
    const scan = (c: BlockCache, from: number, n: number): void => {
      const buf = block(0);
      for (let b = from; b < from + n; b++) {
        buf.writeUInt32LE(b, 0);
        c.set(b, buf);
      }
    };

    it('a one-pass scan of 4x the cache grows it by the probation share only, and evicts no block read twice', () => {
      const c = cache();
      const hot = 6000; // more than probation holds: only the main LRU keeps them all
      scan(c, 0, hot);
      scan(c, 1_000_000, 4096); // pushes the hot set out of probation, into the ghost list
      scan(c, 0, hot); // read again: admitted
      const before = c.slabBytes;
      assert.ok(before <= 64 * MiB, `${before}`);
      scan(c, 2_000_000, 4 * 16384);
      assert.equal(c.slabBytes, before, 'the scan recycled probation slots, no new slab');
      const out = Buffer.alloc(bs);
      for (let b = 0; b < hot; b++) {
        assert.ok(c.copyOut(b, out, 0), `hot block ${b} evicted by the scan`);
        assert.equal(out.readUInt32LE(0), b);
      }
      // The scan's last blocks are still there (probation is FIFO, readahead relies on it).
      assert.ok(c.copyOut(2_000_000 + 4 * 16384 - 1, out, 0));
      assert.equal(c.probationBytes, 4096 * bs);
    });

    it("into an empty cache, a one-pass scan touches only probation's share of fresh memory", () => {
      const c = cache();
      scan(c, 0, 4 * 16384);
      assert.equal(c.slabBytes, 16 * MiB);
      assert.equal(c.bytes, 16 * MiB);
    });

    it('a block read again after it left probation is admitted to the main LRU, and survives later scans', () => {
      const c = cache();
      const evicted: number[] = [];
      const d = new BlockCache(1024 * MiB, bs, (b) => evicted.push(b));
      d.setLimit(64 * MiB);
      for (const x of [c, d]) {
        x.set(7, block(7));
        scan(x, 100, 4096); // 7 leaves probation
      }
      assert.ok(evicted.includes(7));
      assert.equal(d.has(7), false);
      d.set(7, block(7)); // re-read: admitted
      c.set(7, block(7));
      scan(d, 10_000, 3 * 16384);
      const out = Buffer.alloc(bs);
      assert.ok(d.copyOut(7, out, 0), 're-read block evicted by a later scan');
      assert.equal(out.readUInt32LE(0), 7);
      // A block read once and hit while in probation is not promoted: a scan pushes it out.
      d.set(9, block(9));
      assert.ok(d.copyOut(9, out, 0));
      scan(d, 500_000, 4096);
      assert.equal(d.has(9), false);
      assert.ok(d.has(7));
    });

    it('a rewritten block (delete) is forgotten by the ghost list; a lower limit keeps the newest ghosts', () => {
      const c = cache();
      c.set(7, block(7));
      scan(c, 100, 4096);
      c.delete(7); // a new version was written: its re-read is a first read
      c.set(7, block(7));
      scan(c, 200_000, 4096);
      assert.equal(c.has(7), false, 'admitted as a re-read after a delete');
      c.set(8, block(8));
      scan(c, 300_000, 3 * 4096); // 8 is older than the newest 4096 ghosts
      c.setLimit(16 * MiB); // 4096 ghosts kept: the 4096 blocks of the last scan
      c.set(8, block(8));
      scan(c, 400_000, 4096);
      assert.equal(c.has(8), false, 'ghost kept beyond the limit');
    });
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

  it('takes the memory share left after the write buffer: a 72 MiB working set read again is read from the cache from then on', async () => {
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
    // The second pass admits what the first one only staged (2Q); the third is all hits.
    let hits = 0;
    for (let pass = 0; pass < 3; pass++) {
      hits = vol.stats().cacheHits;
      for (let off = 0; off < size; off += MiB) assert.deepEqual(await vol.read(off, MiB), data);
    }
    const s = vol.stats();
    assert.equal(s.cacheHits - hits, size / 4096, `hits ${s.cacheHits - hits}, misses ${s.cacheMisses}`);
    assert.equal(s.cacheBytes, size);
    await vol.close();
    await store.close();
  });
});
