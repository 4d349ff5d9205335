import * as assert from 'node:assert/strict';
import { BlockIndex, CACHED, EMPTY, HOT, PAGE_BLOCKS, PENDING, PERSISTED, INDEX_BYTES_PER_BLOCK } from '../src/index/block-index';

/** The live count per chunk is private (takeDeadChunks hands out the dead ones); the test reads it as before. */
const refs = (ix: BlockIndex): Map<number, number> => (ix as unknown as { chunkRefs: Map<number, number> }).chunkRefs;

describe('BlockIndex', () => {
  it('walks a block through Empty -> Hot -> Pending -> Persisted <-> Cached -> Hot', () => {
    const ix = new BlockIndex(2 ** 32);
    const b = 2 ** 31 + 5;
    assert.equal(ix.state(b), EMPTY);
    assert.equal(ix.setHot(b, 7), -1);
    assert.equal(ix.state(b), HOT);
    ix.markPending(b, 7);
    assert.equal(ix.state(b), PENDING);
    assert.equal(ix.setPersisted(b, 10, 3, 64, 4096, 0, 7), true, 'its slot is now redundant');
    assert.equal(ix.state(b), PERSISTED);
    ix.setCached(b, true);
    assert.equal(ix.state(b), CACHED);
    ix.setCached(b, false);
    assert.equal(ix.state(b), PERSISTED);
    assert.equal(ix.setHot(b, 9), -1);
    assert.equal(ix.state(b), HOT);
    assert.deepEqual(ix.location(b), { chunk: 3, off: 64, len: 4096, flags: 0, seq: 10 }, 'a Hot block keeps its persisted location');
  });

  it('decides newer-or-stale per block, and counts chunk references', () => {
    const ix = new BlockIndex(100);
    ix.setPersisted(1, 5, 1, 0, 1, 0);
    ix.setPersisted(2, 6, 1, 0, 1, 0);
    assert.equal(refs(ix).get(1), 2);
    ix.setPersisted(1, 4, 2, 0, 1, 0); // stale: ignored
    assert.equal(ix.persistedSeq(1), 5);
    assert.equal(refs(ix).get(2), undefined);
    ix.setPersisted(1, 8, 2, 0, 1, 0);
    ix.setPersisted(2, 9, 2, 0, 1, 0);
    assert.equal(refs(ix).get(1), 0, 'chunk 1 is dead');
    assert.equal(refs(ix).get(2), 2);
  });

  it('a slot overwritten during a flush stays Hot when the flush commits the older version', () => {
    const ix = new BlockIndex(10);
    ix.setHot(3, 1);
    assert.equal(ix.setHot(3, 2), 1);
    assert.equal(ix.setPersisted(3, 1, 5, 0, 1, 0, 1), false);
    assert.equal(ix.state(3), HOT);
    assert.equal(ix.slot(3), 2);
  });

  it('allocates typed-array pages only where blocks are touched', () => {
    const ix = new BlockIndex(2 ** 36);
    for (let i = 0; i < 10; i++) ix.setHot(i * 2 ** 30, i);
    assert.equal(ix.pageCount, 10);
    assert.equal(ix.memoryBytes, 10 * PAGE_BLOCKS * INDEX_BYTES_PER_BLOCK);
    let seen = 0;
    ix.setPersisted(5, 1, 1, 0, 1, 0);
    ix.forEachPersisted(() => seen++);
    assert.equal(seen, 1);
  });
});

describe('BlockIndex dead chunks and state counts', () => {
  it('takeDeadChunks hands out each chunk whose last block moved away, once, and forgets it', () => {
    const ix = new BlockIndex(100);
    ix.setPersisted(1, 1, 1, 0, 1, 0);
    ix.setPersisted(2, 2, 1, 0, 1, 0);
    ix.setPersisted(3, 3, 2, 0, 1, 0);
    assert.deepEqual(ix.takeDeadChunks(), []);
    ix.setPersisted(1, 4, 3, 0, 1, 0);
    assert.deepEqual(ix.takeDeadChunks(), [], 'chunk 1 still holds block 2');
    ix.setPersisted(2, 5, 3, 0, 1, 0);
    ix.setPersisted(3, 6, 3, 0, 1, 0);
    assert.deepEqual(ix.takeDeadChunks().sort(), [1, 2]);
    assert.deepEqual(ix.takeDeadChunks(), [], 'handed out once');
    assert.equal(ix.liveBlocks(1), 0);
    assert.equal(ix.liveBlocks(3), 3);
    assert.equal(refs(ix).has(1), false, 'forgotten by the index');
    const live: [number, number][] = [];
    ix.forEachLiveChunk((c, n) => live.push([c, n]));
    assert.deepEqual(live, [[3, 3]]);
  });

  it('stateCounts matches a count over every block after random transitions', () => {
    const ix = new BlockIndex(3 * PAGE_BLOCKS);
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return Math.floor((seed / 2 ** 31) * n);
    };
    let seq = 0;
    for (let i = 0; i < 20000; i++) {
      const b = rnd(64) * 191; // 64 blocks spread over three pages: each goes through many transitions
      const op = rnd(5);
      if (op === 0) ix.setHot(b, rnd(50), rnd(2) === 0);
      else if (op === 1) ix.markPending(b, ix.slot(b));
      else if (op === 2) ix.setPersisted(b, ++seq, 1 + rnd(9), 0, 1, 0, rnd(2) === 0 ? ix.slot(b) : -1);
      else ix.setCached(b, op === 3);
    }
    const want = [0, 0, 0, 0, 0];
    for (let b = 0; b < 3 * PAGE_BLOCKS; b++) want[ix.state(b)]!++;
    assert.deepEqual(ix.stateCounts(), { hot: want[HOT], pending: want[PENDING], persisted: want[PERSISTED], cached: want[CACHED] });
    assert.ok(want[HOT]! > 0 && want[PENDING]! > 0 && want[PERSISTED]! > 0 && want[CACHED]! > 0, 'every state was reached');
  });
});
