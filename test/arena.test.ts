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

  it('is LRU and bounded in bytes; eviction reports the block', () => {
    const evicted: number[] = [];
    const c = new BlockCache(3 * 100, 100, (b) => evicted.push(b));
    c.set(1, block(1));
    c.set(2, block(2));
    c.set(3, block(3));
    assert.equal(read(c, 1), 1); // 1 is now most recent
    c.set(4, block(4));
    assert.deepEqual(evicted, [2]);
    assert.equal(c.bytes, 300);
    assert.equal(read(c, 2), undefined);
    assert.equal(read(c, 4), 4);
    assert.equal(read(c, 3), 3);
    c.set(5, block(5)); // evicts 1 (least recent now)
    assert.deepEqual(evicted, [2, 1]);
    assert.equal(c.hits, 3);
    assert.equal(c.misses, 1);
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
