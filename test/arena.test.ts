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
  it('is LRU and bounded in bytes; eviction reports the block', () => {
    const evicted: number[] = [];
    const c = new BlockCache(3 * 100, (b) => evicted.push(b));
    c.set(1, Buffer.alloc(100));
    c.set(2, Buffer.alloc(100));
    c.set(3, Buffer.alloc(100));
    assert.ok(c.get(1)); // 1 is now most recent
    c.set(4, Buffer.alloc(100));
    assert.deepEqual(evicted, [2]);
    assert.equal(c.bytes, 300);
    assert.equal(c.get(2), undefined);
    assert.equal(c.hits, 1);
    assert.equal(c.misses, 1);
    assert.equal(new BlockCache(0, () => undefined).set(1, Buffer.alloc(1)), false, 'a zero-byte cache holds nothing');
  });
});
