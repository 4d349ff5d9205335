import * as assert from 'node:assert/strict';
import { RECORD_HEADER } from '../src/format/block-record';
import { BlockIndex, CACHED, EMPTY, HOT, LEAF_MAX, MAX_RUN, PENDING, PERSISTED, type BlockState } from '../src/map/block-index';
import { NumTable } from '../src/map/num-table';
import { Rng } from './helpers/rng';

/** Blocks where the index changes representation or a volume ends: 2^24, 2^31, 2^32 (a bucket edge), 16 TiB and 256 TiB of 4 KiB blocks. */
export const EDGE_BLOCKS = [0, 2 ** 24, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 36 - 1];

describe('BlockIndex', () => {
  it('walks a block through Empty -> Hot -> Pending -> Persisted <-> Cached -> Hot', () => {
    const ix = new BlockIndex(2 ** 32);
    const b = 2 ** 31 + 5;
    assert.equal(ix.state(b), EMPTY);
    assert.equal(ix.setHot(b, 7), -1);
    assert.equal(ix.state(b), HOT);
    ix.markPending(b, 7);
    assert.equal(ix.state(b), PENDING);
    assert.deepEqual(ix.stateCounts(), { hot: 0, pending: 1, persisted: 0, cached: 0 });
    assert.equal(ix.setPersisted(b, 10, 3, 64, 4096, 0, 7), true, 'its slot is now redundant');
    assert.equal(ix.state(b), PERSISTED);
    ix.setCached(b, true);
    assert.equal(ix.state(b), CACHED);
    assert.deepEqual(ix.stateCounts(), { hot: 0, pending: 0, persisted: 0, cached: 1 });
    ix.setCached(b, false);
    assert.equal(ix.state(b), PERSISTED);
    assert.equal(ix.setHot(b, 9), -1);
    assert.equal(ix.state(b), HOT);
    assert.deepEqual(ix.stateCounts(), { hot: 1, pending: 0, persisted: 0, cached: 0 });
    assert.deepEqual(ix.location(b), { chunk: 3, off: 64, len: 4096, flags: 0, seq: 10 }, 'a Hot block keeps its persisted location');
  });

  it('decides newer-or-stale per block, counts live blocks and bytes per chunk, and hands out dead chunks once', () => {
    const ix = new BlockIndex(100);
    ix.setPersisted(1, 5, 1, 0, 1, 0);
    ix.setPersisted(2, 6, 1, 0, 1, 0);
    assert.deepEqual(ix.chunkLive(1), { blocks: 2, bytes: 2 * (RECORD_HEADER + 1) });
    ix.setPersisted(1, 4, 2, 0, 1, 0); // stale: ignored
    assert.equal(ix.persistedSeq(1), 5);
    assert.deepEqual(ix.chunkLive(2), { blocks: 0, bytes: 0 });
    ix.setPersisted(1, 8, 2, 0, 1, 0);
    assert.deepEqual(ix.takeDeadChunks(), []);
    ix.setPersisted(2, 9, 2, 0, 1, 0);
    assert.deepEqual(ix.chunkLive(1), { blocks: 0, bytes: 0 }, 'chunk 1 is dead');
    assert.deepEqual(ix.chunkLive(2), { blocks: 2, bytes: 2 * (RECORD_HEADER + 1) });
    assert.equal(ix.liveBlocks(2), 2);
    assert.equal(ix.liveBlocks(1), 0);
    assert.deepEqual(ix.takeDeadChunks(), [1]);
    assert.deepEqual(ix.takeDeadChunks(), [], 'the index forgets a dead chunk once it is handed out');
  });

  it('a slot overwritten during a flush stays Hot when the flush commits the older version', () => {
    const ix = new BlockIndex(10);
    ix.setHot(3, 1);
    assert.equal(ix.setHot(3, 2), 1);
    assert.equal(ix.setPersisted(3, 1, 5, 0, 1, 0, 1), false);
    assert.equal(ix.state(3), HOT);
    assert.equal(ix.slot(3), 2);
    assert.deepEqual(ix.stateCounts(), { hot: 1, pending: 0, persisted: 0, cached: 0 });
  });

  it('keeps a sequential run as one extent, found in one step', () => {
    const ix = new BlockIndex(2 ** 36);
    const base = 2 ** 32 - 100; // the run crosses no bucket edge: ends before it
    for (let k = 0; k < 100; k++) ix.setPersisted(base + k, 1000 + k, 7, 64 + k * (RECORD_HEADER + 4096), 4096, 0);
    assert.equal(ix.extentCount, 1);
    assert.equal(ix.runLength(base), 100);
    assert.equal(ix.runLength(base + 60), 40);
    assert.ok(ix.contiguous(base + 10, base + 11));
    assert.equal(ix.persistedOff(base + 99), 64 + 99 * (RECORD_HEADER + 4096));
    // An overwrite in the middle splits it; the rest keeps its location.
    ix.setPersisted(base + 50, 5000, 8, 64, 4096, 0);
    assert.equal(ix.extentCount, 3);
    assert.equal(ix.runLength(base), 50);
    assert.equal(ix.persistedSeq(base + 51), 1051);
    assert.ok(!ix.contiguous(base + 49, base + 50));
  });

  it('stays far below a page per scattered block: memory per written block', () => {
    const ix = new BlockIndex(2 ** 32);
    const rng = new Rng(9);
    const n = 50_000;
    for (let i = 0; i < n; i++) ix.setPersisted(rng.int(2 ** 32), i + 1, 1 + (i >> 10), (i & 1023) * 4128, 4096, 0);
    const perBlock = ix.memoryBytes / ix.countPersisted();
    assert.ok(perBlock <= 32, `${perBlock.toFixed(1)} bytes per scattered block`);
    const seq = new BlockIndex(2 ** 32);
    for (let i = 0; i < n; i++) seq.setPersisted(i, i + 1, 1 + (i >> 10), (i & 1023) * 4128, 4096, 0);
    assert.ok(seq.memoryBytes / n <= 8, `${(seq.memoryBytes / n).toFixed(2)} bytes per sequential block`);
  });

  it('NumTable keeps every key through growth, shrinking and backward-shift deletion', () => {
    const t = new NumTable();
    const ref = new Map<number, number>();
    const rng = new Rng(3);
    for (let i = 0; i < 20_000; i++) {
      const k = rng.int(3) === 0 ? 2 ** 36 - rng.int(500) : rng.int(2000);
      if (rng.int(3) === 0) {
        assert.equal(t.remove(k), ref.delete(k));
      } else {
        t.v1[t.insert(k)] = i;
        ref.set(k, i);
      }
    }
    assert.equal(t.size, ref.size);
    for (const [k, v] of ref) assert.equal(t.v1[t.find(k)], v);
    let seen = 0;
    t.forEach(() => seen++);
    assert.equal(seen, ref.size);
  });

  describe('property: the index against a reference map (set, split, merge, overwrite, stale)', () => {
    interface Loc {
      seq: number;
      chunk: number;
      off: number;
      len: number;
      flags: number;
    }
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      it(`seed ${seed}`, () => {
        const rng = new Rng(seed);
        const ix = new BlockIndex(2 ** 36);
        const ref = new Map<number, Loc>();
        const hot = new Map<number, { slot: number; st: BlockState }>();
        const cached = new Set<number>();
        const live = new Map<number, { blocks: number; bytes: number }>();
        const dead = new Set<number>();
        let seq = 1;
        let chunk = 1;
        let slot = 0;
        const touched = new Set<number>();
        const anchor = (): number => {
          const a = EDGE_BLOCKS[rng.int(EDGE_BLOCKS.length)] as number;
          return Math.min(2 ** 36 - 1, Math.max(0, a - 600 + rng.int(1200)));
        };
        const unrefLive = (c: number, len: number): void => {
          const l = live.get(c) as { blocks: number; bytes: number };
          l.blocks--;
          l.bytes -= RECORD_HEADER + len;
          if (l.blocks === 0) {
            live.delete(c);
            dead.add(c);
          }
        };
        const setRef = (b: number, l: Loc, s: number): boolean => {
          touched.add(b);
          const cur = ref.get(b);
          // Newer seqs win; an equal seq at another place is the same version copied there (the compactor's copy) and wins too.
          const applied = !cur || cur.seq < l.seq || (cur.seq === l.seq && cur.chunk !== l.chunk);
          const got = ix.setPersisted(b, l.seq, l.chunk, l.off, l.len, l.flags, s);
          if (!applied) {
            assert.equal(got, false);
            return false;
          }
          if (cur) unrefLive(cur.chunk, cur.len);
          ref.set(b, l);
          const lv = live.get(l.chunk) ?? { blocks: 0, bytes: 0 };
          lv.blocks++;
          lv.bytes += RECORD_HEADER + l.len;
          live.set(l.chunk, lv);
          cached.delete(b);
          const h = hot.get(b);
          const freed = h !== undefined && s >= 0 && h.slot === s;
          if (freed) hot.delete(b);
          assert.equal(got, freed);
          return true;
        };
        for (let step = 0; step < 400; step++) {
          const op = rng.int(10);
          if (op < 5) {
            // A chunk: a run (maybe with holes, in random order) laid out as a flush
            // would: consecutive seqs, records back to back. Holes filled later merge.
            const c = chunk++;
            const len = rng.int(4) === 0 ? 100 + rng.int(3000) : 4096;
            const flags = len === 4096 ? 0 : 1;
            const n = 1 + rng.int(rng.int(4) === 0 ? 3000 : 40);
            const base = Math.min(2 ** 36 - n, anchor());
            const s0 = seq;
            seq += n + 1;
            const order = Array.from({ length: n }, (_, k) => k).filter(() => rng.int(5) !== 0);
            for (let i = order.length - 1; i > 0; i--) {
              const j = rng.int(i + 1);
              [order[i], order[j]] = [order[j] as number, order[i] as number];
            }
            for (const k of order) {
              const h = hot.get(base + k);
              setRef(base + k, { seq: s0 + k, chunk: c, off: 64 + k * (RECORD_HEADER + len), len, flags }, h && rng.int(2) === 0 ? h.slot : -1);
            }
          } else if (op === 5) {
            // Stale: an older seq for a mapped block is ignored (an equal one, a copy elsewhere, is taken).
            const keys = [...ref.keys()];
            if (keys.length > 0) {
              const b = keys[rng.int(keys.length)] as number;
              setRef(b, { seq: Math.max(1, (ref.get(b) as Loc).seq - rng.int(3)), chunk: chunk++, off: 0, len: 4096, flags: 0 }, -1);
            }
          } else if (op === 6) {
            for (let i = 0; i < 20; i++) {
              const b = anchor();
              touched.add(b);
              const s = slot++;
              const prev = hot.get(b);
              assert.equal(ix.setHot(b, s), prev ? prev.slot : -1);
              hot.set(b, { slot: s, st: HOT });
              cached.delete(b);
            }
          } else if (op === 7) {
            for (const [b, h] of hot) {
              if (rng.int(2) === 0) continue;
              ix.markPending(b, h.slot);
              h.st = PENDING;
            }
          } else {
            for (let i = 0; i < 30; i++) {
              const keys = [...ref.keys()];
              const b = rng.int(2) === 0 && keys.length > 0 ? (keys[rng.int(keys.length)] as number) : anchor();
              touched.add(b);
              const on = rng.int(3) !== 0;
              ix.setCached(b, on);
              if (on && ref.has(b) && !hot.has(b)) cached.add(b);
              if (!on) cached.delete(b);
            }
          }
          if (step % 20 !== 19) continue;
          // Compare.
          const probe = new Set<number>();
          for (const b of touched) for (const d of [-1, 0, 1]) if (b + d >= 0 && b + d < 2 ** 36) probe.add(b + d);
          for (const b of probe) {
            const l = ref.get(b);
            const h = hot.get(b);
            const want = h ? h.st : !l ? EMPTY : cached.has(b) ? CACHED : PERSISTED;
            assert.equal(ix.state(b), want, `state of block ${b}`);
            assert.equal(ix.slot(b), h ? h.slot : -1);
            assert.deepEqual(ix.location(b), l ? { chunk: l.chunk, off: l.off, len: l.len, flags: l.flags, seq: l.seq } : null, `location of block ${b}`);
            if (l) {
              let n = 1;
              for (;;) {
                const m = ref.get(b + n);
                if (!m || m.chunk !== l.chunk || m.off !== l.off + n * (RECORD_HEADER + l.len) || m.seq !== l.seq + n || m.len !== l.len || m.flags !== l.flags)
                  break;
                n++;
              }
              const r = ix.runLength(b);
              assert.ok(r >= 1 && r <= n, `run at ${b}: ${r} of at most ${n}`);
              const l2 = ref.get(b + 1);
              const adjacent = l2 !== undefined && l2.chunk === l.chunk && l2.off === l.off + RECORD_HEADER + l.len;
              assert.equal(ix.contiguous(b, b + 1), adjacent, `contiguous(${b}, ${b + 1})`);
            }
          }
          assert.equal(ix.countPersisted(), ref.size);
          let hotN = 0;
          let pendN = 0;
          let hotLoc = 0;
          for (const [b, h] of hot) {
            if (h.st === HOT) hotN++;
            else pendN++;
            if (ref.has(b)) hotLoc++;
          }
          assert.deepEqual(ix.stateCounts(), { hot: hotN, pending: pendN, persisted: ref.size - hotLoc - cached.size, cached: cached.size });
          for (const [c, l] of live) assert.deepEqual(ix.chunkLive(c), l, `chunk ${c}`);
          let liveN = 0;
          ix.forEachLiveChunk(() => liveN++);
          assert.equal(liveN, live.size);
          assert.deepEqual(new Set(ix.takeDeadChunks()), dead);
          dead.clear();
          // Visiting: every block in order, in resumable pieces, with maximal-enough extents.
          const sorted = [...ref.keys()].sort((x, y) => x - y);
          const got: number[] = [];
          let from = 0;
          let extents = 0;
          do {
            from = ix.visitExtents(from, 1 + rng.int(50), (block, n, s, c, off, len, flags) => {
              extents++;
              assert.ok(n >= 1 && n <= MAX_RUN);
              for (let k = 0; k < n; k++) {
                const l = ref.get(block + k) as Loc;
                assert.deepEqual({ seq: s + k, chunk: c, off: off + k * (RECORD_HEADER + len), len, flags }, l);
                got.push(block + k);
              }
            });
          } while (from >= 0);
          assert.deepEqual(got, sorted);
          assert.equal(extents, ix.extentCount);
          touched.clear();
        }
        assert.ok(ix.extentCount < ref.size, 'runs were merged into extents');
      });
    }
  });

  it('splits and empties leaves (more than LEAF_MAX extents in one bucket)', () => {
    const ix = new BlockIndex(2 ** 33);
    const n = LEAF_MAX * 10;
    for (let i = 0; i < n; i++) ix.setPersisted(2 ** 32 + i * 3, i + 1, 1, 0, 4096, 0);
    assert.equal(ix.extentCount, n);
    for (let i = 0; i < n; i++) assert.equal(ix.persistedSeq(2 ** 32 + i * 3), i + 1);
    // Fill the gaps so that everything merges into runs of one chunk.
    const ix2 = new BlockIndex(2 ** 33);
    const stride = RECORD_HEADER + 4096;
    for (let i = 0; i < 3 * n; i += 2) ix2.setPersisted(i, i + 1, 1, i * stride, 4096, 0);
    assert.equal(ix2.extentCount, Math.ceil((3 * n) / 2));
    for (let i = 1; i < 3 * n; i += 2) ix2.setPersisted(i, i + 1, 1, i * stride, 4096, 0);
    assert.equal(ix2.extentCount, 1);
    assert.equal(ix2.runLength(0), 3 * n);
  });
});
