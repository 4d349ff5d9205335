import * as assert from 'node:assert/strict';
import { Arena } from '../src/arena/arena';
import { BlockCache } from '../src/cache/block-cache';

describe('Arena', () => {
  it('hands out slots up to the cap, then -1; freed slots are reused without new memory', () => {
    const a = new Arena(4096, 4);
    const s = [a.alloc(), a.alloc(), a.alloc(), a.alloc()];
    assert.deepEqual(s, [0, 1, 2, 3]);
    assert.equal(a.alloc(), -1);
    const bytes = a.bytes;
    a.release(2);
    assert.equal(a.alloc(), 2);
    assert.equal(a.bytes, bytes);
    assert.equal(a.used, 4);
  });

  it('a pinned slot is freed only when unpinned', () => {
    const a = new Arena(512, 2);
    const x = a.alloc();
    a.alloc();
    a.pin(x);
    a.release(x);
    assert.equal(a.alloc(), -1);
    a.unpin(x);
    assert.equal(a.alloc(), x);
  });

  it('waitFree wakes writers when a slot is released; allocForce grows past the cap', async () => {
    const a = new Arena(512, 1);
    const x = a.alloc();
    let woke = false;
    const w = a.waitFree().then(() => (woke = true));
    assert.equal(woke, false);
    a.release(x);
    await w;
    assert.equal(woke, true);
    a.alloc();
    const y = a.allocForce();
    assert.ok(y >= 1);
    a.copyIn(y, Buffer.alloc(512, 9), 0);
    assert.ok(a.view(y).every((b) => b === 9));
  });
});

describe('BlockCache', () => {
  const block = (v: number): Buffer => Buffer.alloc(100, v);
  const read = (c: BlockCache, b: number): number | undefined => {
    const out = Buffer.alloc(100);
    return c.copyOut(b, out, 0) ? out[0] : undefined;
  };

  it('is bounded in bytes, 2Q: a block read once waits in probation, one read again after it left is kept LRU; eviction reports the block', () => {
    const evicted: number[] = [];
    const c = new BlockCache(4 * 100, 100, (b) => evicted.push(b)); // probation: 1 block (a quarter)
    c.set(1, block(1));
    c.set(2, block(2)); // probation is full: 1 leaves it (its number stays as a ghost)
    assert.deepEqual(evicted, [1]);
    assert.equal(read(c, 1), undefined);
    c.set(1, block(1)); // read again: the main LRU
    c.set(3, block(3)); // 2 leaves probation
    c.set(2, block(2));
    c.set(4, block(4)); // 3 leaves probation
    c.set(3, block(3)); // main now holds 3, 2, 1 (most recent first), probation 4
    assert.deepEqual(evicted, [1, 2, 3]);
    assert.equal(c.bytes, 400);
    assert.equal(read(c, 1), 1); // 1 is now the most recent of main
    c.set(5, block(5)); // 4 leaves probation
    c.set(4, block(4)); // full: main's least recent (2) goes, not 1
    assert.deepEqual(evicted, [1, 2, 3, 4, 2]);
    assert.equal(read(c, 2), undefined);
    for (const b of [1, 3, 4, 5]) assert.equal(read(c, b), b);
    assert.equal(c.bytes, 400);
    assert.equal(c.hits, 5);
    assert.equal(c.misses, 2);
    assert.equal(new BlockCache(0, 100, () => undefined).set(1, block(1)), false, 'a zero-byte cache holds nothing');
  });

  it('stores a copy, reuses slots after delete, and overwrites in place', () => {
    const c = new BlockCache(2 * 100, 100, () => undefined);
    const src = Buffer.alloc(300, 7);
    c.set(9, src, 100);
    src.fill(0);
    assert.equal(read(c, 9), 7, 'a copy, not a view of the source');
    c.delete(9);
    assert.equal(read(c, 9), undefined);
    c.set(10, block(1));
    c.set(10, block(2));
    assert.equal(read(c, 10), 2);
    assert.equal(c.bytes, 100);
  });
});
