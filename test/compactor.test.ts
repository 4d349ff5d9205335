import * as assert from 'node:assert/strict';
import { Store } from '../src/store/store';
import { MemoryBackend } from '../src/backend/memory-backend';
import { isVbfsError } from '../src/errors';
import { compactorScan } from '../src/store/compactor';
import type { Volume } from '../src/store/volume';
import type { VolumeOpenOptions } from '../src/store/types';
import { SimFS } from './helpers/sim-fs';
import { Rng } from './helpers/rng';

const BS = 512;
const BLOCKS = 256;
const SIZE = BS * BLOCKS;
/** Tiny chunks (16 records), no background flushes or compaction unless a test asks. */
const TUN: VolumeOpenOptions = {
  chunkBytes: 64 + 16 * (32 + BS),
  flushBytes: 64 * BS,
  writeBufferBytes: 128 * BS,
  flushIntervalMs: 1_000_000,
  cacheBytes: 16 * BS,
  readaheadBytes: 0,
  compactIntervalMs: 0,
};

/** A memory backend that can hold back reads and remembers what was deleted. */
class SlowBackend extends MemoryBackend {
  readDelayMs = 0;
  readonly deleted = new Set<string>();
  readsOfDeleted = 0;
  bytesRead = 0;
  override async get(key: string, offset?: number, length?: number): Promise<Buffer> {
    const p = super.get(key, offset, length);
    void p.then((b) => (this.bytesRead += b.length)).catch(() => undefined);
    if (this.readDelayMs > 0) await new Promise((r) => setTimeout(r, Math.random() * this.readDelayMs));
    const b = await p;
    // The object was deleted while this read was in flight: the read returned freed bytes.
    if (this.deleted.has(key)) this.readsOfDeleted++;
    return b;
  }
  override async delete(key: string): Promise<void> {
    this.deleted.add(key);
    await super.delete(key);
  }
  chunkCount(prefix = ''): Promise<number> {
    return this.list(prefix).then((k) => k.filter((x) => x.includes('/chunks/')).length);
  }
}

async function fill(vol: Volume, rng: Rng, model: Buffer, blocks: number[]): Promise<void> {
  for (const b of blocks) {
    const d = rng.bytes(BS);
    d.copy(model, b * BS);
    await vol.write(b * BS, d);
  }
}

/**
 * Blocks 0..n-1 written and flushed, then those `overwrite` picks written again and
 * flushed: the first chunks are left partly dead, the compactor's usual victims.
 */
async function fragmented(vol: Volume, rng: Rng, model: Buffer, overwrite: (b: number) => boolean, n = BLOCKS): Promise<void> {
  const all = [...Array(n).keys()];
  await fill(vol, rng, model, all);
  await vol.flush();
  await fill(vol, rng, model, all.filter(overwrite));
  await vol.flush();
}

describe('compaction (store/compactor.ts)', () => {
  let sim: SimFS;
  let backend: SlowBackend;
  let store: Store;
  beforeEach(async () => {
    sim = new SimFS({ yieldEachOp: false });
    backend = new SlowBackend();
    store = await Store.open('/s', { fileIO: sim, backend });
    await store.createVolume('v', { size: SIZE, blockSize: BS });
  });
  afterEach(async () => {
    await store.close().catch(() => undefined);
  });

  it('rewrites mostly-dead chunks: stored bytes fall to the target, data and a reopen unchanged, old chunks deleted', async () => {
    const rng = new Rng(5);
    const model = Buffer.alloc(SIZE);
    let vol = await store.openVolume('v', TUN);
    await fill(
      vol,
      rng,
      model,
      [...Array(BLOCKS).keys()].map((b) => b),
    );
    await vol.flush();
    // Overwrite 3 blocks of every 4: each old chunk keeps a quarter of its blocks.
    await fill(
      vol,
      rng,
      model,
      [...Array(BLOCKS).keys()].filter((b) => b % 4 !== 0),
    );
    await vol.flush();
    const before = vol.stats();
    assert.ok(before.storedBytes > before.liveBytes * 1.5, `setup: amplification ${before.spaceAmplification}`);
    const chunksBefore = await backend.chunkCount();
    const r = await vol.compact();
    const after = vol.stats();
    assert.ok(r.chunksCompacted > 0 && r.bytesReclaimed > 0, JSON.stringify(r));
    assert.ok(after.storedBytes <= after.liveBytes * 1.25, `stored ${after.storedBytes} live ${after.liveBytes}`);
    assert.equal(after.liveBytes, before.liveBytes);
    assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after compaction');
    // Deletes are in the background: give them a turn.
    await new Promise((r) => setTimeout(r, 20));
    assert.ok((await backend.chunkCount()) < chunksBefore, 'no chunk object was deleted');
    await vol.close();
    vol = await store.openVolume('v', TUN);
    assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after reopen');
    const sp = await vol.space();
    assert.equal(sp.liveBytes, after.liveBytes);
    assert.equal(sp.storedBytes, after.storedBytes, 'stored bytes after reopen (chunk headers surveyed) differ');
    await vol.close();
  });

  it('after a reopen, a chunk that was mostly dead before the checkpoint still counts as mostly dead', async () => {
    const rng = new Rng(6);
    const model = Buffer.alloc(SIZE);
    let vol = await store.openVolume('v', TUN);
    await fragmented(vol, rng, model, (b) => b % 8 !== 0, 64);
    const open1 = vol.stats();
    await vol.close(); // checkpoint: the map now names only the live records
    vol = await store.openVolume('v', TUN);
    const sp = await vol.space();
    assert.equal(sp.storedBytes, open1.storedBytes);
    const r = await vol.compact();
    assert.ok(r.bytesReclaimed > 0);
    assert.ok((await vol.read(0, SIZE)).equals(model));
    await vol.close();
  });

  it('reads only the live records of a victim chunk, not the dead bytes between them', async () => {
    // 4 KiB blocks in chunks of 128: a victim keeps its first and last block, so its
    // live span is the whole chunk (512 KiB) while its live bytes are 2 records.
    const bs = 4096;
    const per = 128;
    const chunks = 16;
    await store.createVolume('w', { size: bs * per * chunks, blockSize: bs });
    const tun: VolumeOpenOptions = { ...TUN, chunkBytes: 64 + per * (32 + bs), flushBytes: per * bs, writeBufferBytes: 2 * per * bs };
    const vol = await store.openVolume('w', tun);
    const rng = new Rng(12);
    const model = Buffer.alloc(bs * per * chunks);
    const all = [...Array(per * chunks).keys()];
    for (const b of all) {
      const d = rng.bytes(bs);
      d.copy(model, b * bs);
      await vol.write(b * bs, d);
      if (b % per === per - 1) await vol.flush(); // chunk i holds blocks i*per .. i*per+per-1
    }
    // Overwritten in one go: the new versions land in chunks of their own, full.
    for (const b of all.filter((x) => x % per !== 0 && x % per !== per - 1)) {
      const d = rng.bytes(bs);
      d.copy(model, b * bs);
      await vol.write(b * bs, d);
    }
    await vol.flush();
    backend.bytesRead = 0;
    const r = await vol.compact();
    assert.ok(r.chunksCompacted >= chunks, `compacted ${r.chunksCompacted} chunks`);
    // Each victim's 2 live records (plus chunk headers read by the survey), not its whole chunk.
    assert.ok(backend.bytesRead <= 2 * r.bytesMoved, `read ${backend.bytesRead} bytes to move ${r.bytesMoved}`);
    assert.ok((await vol.read(0, model.length)).equals(model));
    await vol.close();
  });

  it('reads racing with compaction (slow backend reads) return the right data and never bytes of a deleted chunk', async () => {
    const rng = new Rng(7);
    const model = Buffer.alloc(SIZE);
    const vol = await store.openVolume('v', { ...TUN, cacheBytes: 0 });
    for (let round = 0; round < 3; round++) {
      await fill(
        vol,
        rng,
        model,
        [...Array(BLOCKS).keys()].filter(() => rng.bool(0.6)),
      );
      await vol.flush();
    }
    backend.readDelayMs = 8;
    let stop = false;
    let reads = 0;
    const reader = async (): Promise<void> => {
      const r = new Rng(reads + 100);
      while (!stop) {
        const b = r.int(BLOCKS);
        const n = Math.min(BLOCKS - b, r.range(1, 24));
        const got = await vol.read(b * BS, n * BS);
        assert.ok(got.equals(model.subarray(b * BS, (b + n) * BS)), `read of blocks ${b}+${n} during compaction differs`);
        reads++;
      }
    };
    const readers = [reader(), reader(), reader(), reader()];
    const r = await vol.compact({ full: true });
    stop = true;
    await Promise.all(readers);
    assert.ok(r.chunksCompacted > 2, JSON.stringify(r));
    assert.ok(reads > 10, `only ${reads} reads ran during compaction`);
    assert.ok(backend.deleted.size > 0, 'compaction deleted no chunk');
    assert.equal(backend.readsOfDeleted, 0, 'a read returned bytes of a chunk deleted while it was in flight');
    assert.ok((await vol.read(0, SIZE)).equals(model));
    await vol.close();
  });

  it('writes and flushes racing with compaction: the newer version always wins, also after reopen', async () => {
    const rng = new Rng(8);
    const model = Buffer.alloc(SIZE);
    let vol = await store.openVolume('v', TUN);
    await fragmented(vol, rng, model, (b) => b % 3 !== 0);
    backend.readDelayMs = 4;
    const writes = (async () => {
      for (let i = 0; i < 6; i++) {
        await fill(
          vol,
          rng,
          model,
          Array.from({ length: 20 }, () => rng.int(BLOCKS)),
        );
        await vol.flush();
      }
    })();
    await Promise.all([vol.compact({ full: true }), writes]);
    assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after racing writes');
    await vol.close();
    vol = await store.openVolume('v', TUN);
    assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after reopen');
    await vol.close();
  });

  it('blocks trimmed (and the trim flushed) while their chunk is being compacted stay zeros, also after reopen', async () => {
    const rng = new Rng(9);
    const model = Buffer.alloc(SIZE);
    let vol = await store.openVolume('v', TUN);
    await fragmented(vol, rng, model, (b) => b % 3 !== 0);
    // The compactor has read the live blocks (b % 3 === 0) of the old chunks; before its
    // new chunk lands, they are trimmed and the trim's map tombstone is committed.
    const trimmed = [...Array(BLOCKS).keys()].filter((b) => b % 3 === 0);
    const put = backend.put.bind(backend);
    let trimmedDuringPut = false;
    backend.put = async (key: string, data: Buffer): Promise<void> => {
      if (!trimmedDuringPut && key.includes('/chunks/')) {
        trimmedDuringPut = true;
        for (const b of trimmed) {
          await vol.trim(b * BS, BS);
          model.fill(0, b * BS, (b + 1) * BS);
        }
        await vol.flush();
      }
      return put(key, data);
    };
    await vol.compact({ full: true });
    assert.ok(trimmedDuringPut, 'the compactor wrote no chunk');
    assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after trims racing compaction');
    backend.put = put;
    // A power cut now (no clean close, which would checkpoint the index): the map log is replayed.
    sim = sim.reopen();
    store = await Store.open('/s', { fileIO: sim, backend });
    vol = await store.openVolume('v', TUN);
    for (const b of trimmed) assert.ok((await vol.read(b * BS, BS)).equals(Buffer.alloc(BS)), `trimmed block ${b} came back after a power cut`);
    assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after reopen');
    await vol.close();
  });

  it('walks the map in slices with event-loop turns between them; blocks overwritten between slices keep their newer version', async () => {
    const slice = compactorScan.sliceExtents;
    compactorScan.sliceExtents = 4;
    const get = backend.get.bind(backend);
    try {
      const rng = new Rng(14);
      const model = Buffer.alloc(SIZE);
      let vol = await store.openVolume('v', TUN);
      // The odd blocks stay live in the first chunks (the victims): about 256 extents in all.
      await fragmented(vol, rng, model, (b) => b % 2 === 0);
      let turns = 0;
      let turnsAtFirstRead = -1;
      backend.get = (key: string, offset?: number, length?: number): Promise<Buffer> => {
        // Records, not the chunk headers the survey before the first round reads (at offset 0).
        if (turnsAtFirstRead < 0 && key.includes('/chunks/') && (offset ?? 0) > 0) turnsAtFirstRead = turns;
        return get(key, offset, length);
      };
      // One write at a time, each on its own event-loop turn, to a block still live in a victim.
      let stop = false;
      let writes = Promise.resolve();
      let next = 1;
      const tick = (): void => {
        if (stop) return;
        turns++;
        const b = next;
        next = (next + 2) % BLOCKS;
        writes = writes.then(() => fill(vol, rng, model, [b]));
        setImmediate(tick);
      };
      setImmediate(tick);
      const r = await vol.compact({ full: true });
      stop = true;
      await writes;
      assert.ok(r.chunksCompacted > 0, JSON.stringify(r));
      // 256 extents in slices of 4: dozens of turns before the round's first read.
      assert.ok(turnsAtFirstRead >= 32, `only ${turnsAtFirstRead} event-loop turns before the first read of a victim`);
      assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after writes between scan slices');
      await vol.close();
      vol = await store.openVolume('v', TUN);
      assert.ok((await vol.read(0, SIZE)).equals(model), 'data differs after reopen');
      await vol.close();
    } finally {
      compactorScan.sliceExtents = slice;
      backend.get = get;
    }
  });

  it('starts in the background past compactStartRatio and stops at the target', async () => {
    const rng = new Rng(9);
    const model = Buffer.alloc(SIZE);
    const vol = await store.openVolume('v', { ...TUN, compactIntervalMs: 10 });
    await fragmented(vol, rng, model, (b) => b % 2 === 0);
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const s = vol.stats();
      if (s.compactRounds > 0 && s.compacting === 0 && s.storedBytes <= s.liveBytes * 1.5) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const s = vol.stats();
    assert.ok(s.compactRounds > 0, 'no background compaction ran');
    assert.ok(s.storedBytes <= s.liveBytes * 1.25, `stored ${s.storedBytes} live ${s.liveBytes}`);
    assert.ok((await vol.read(0, SIZE)).equals(model));
    await vol.close();
  });

  it('compact() does not wait for a background run pausing for the foreground: it ends that run and compacts unthrottled', async () => {
    const rng = new Rng(13);
    const model = Buffer.alloc(SIZE);
    // 1 KiB/s: every background round is followed by a pause of many seconds.
    const vol = await store.openVolume('v', { ...TUN, compactIntervalMs: 10, compactRateBytes: 1024 });
    await fragmented(vol, rng, model, (b) => b % 2 === 0);
    const deadline = Date.now() + 5000;
    while (!(vol.stats().compacting === 1 && vol.stats().compactRounds > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(vol.stats().compacting, 1, 'the background run did not start');
    const t0 = Date.now();
    await vol.compact();
    const ms = Date.now() - t0;
    assert.ok(ms < 3000, `compact() took ${ms} ms behind a paused background run`);
    const s = vol.stats();
    assert.ok(s.storedBytes <= s.liveBytes * 1.25, `stored ${s.storedBytes} live ${s.liveBytes}`);
    assert.ok((await vol.read(0, SIZE)).equals(model));
    await vol.close();
  });

  it('refuses compaction options that make no sense, and compact() on a read-only volume', async () => {
    await assert.rejects(store.openVolume('v', { compactTargetRatio: 0.5 }), (e: unknown) => isVbfsError(e, 'VBFS_INVALID_ARGUMENT'));
    await assert.rejects(store.openVolume('v', { compactStartRatio: 1.1, compactTargetRatio: 1.2 }), (e: unknown) => isVbfsError(e, 'VBFS_INVALID_ARGUMENT'));
    const ro = await store.openVolume('v', { readOnly: true });
    await assert.rejects(ro.compact(), (e: unknown) => isVbfsError(e, 'VBFS_READ_ONLY'));
    await ro.close();
  });
});
