import * as assert from 'node:assert/strict';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import type { VolumeTunables } from '../src/store/types';
import type { Durability } from '../src/types';
import { FileBackend } from '../src/backend/file-backend';
import { isNoSpace, isVbfsError } from '../src/errors';
import { toErrno, errno } from '../src/fuse/errno';
import { CACHED, PERSISTED } from '../src/map/block-index';
import { SimFS } from './helpers/sim-fs';
import { FullDiskFileIO } from './helpers/full-disk-file-io';
import { Rng } from './helpers/rng';
import { decodeSegmentHeader, WAL_FLAG_PREALLOCATED, WAL_MAGIC } from '../src/format/segment-header';

/**
 * Issue 14, item 11: after the store disk fills, a volume recovers in place once
 * space returns. A WAL write (or a flush) that failed with ENOSPC is retried, the
 * WAL batch rewritten whole at its offset (the failed write left half of it
 * there); meanwhile writers get ENOSPC. A failed fdatasync is never retried: the
 * volume stays failed. Checked through power loss: after recovery the volume holds
 * exactly what was acknowledged.
 */
const BS = 4096;
const BLOCKS = 64;
const TUNABLES: Partial<VolumeTunables> = {
  chunkBytes: 4 * (BS + 64),
  walSegmentBytes: 16 * (BS + 64),
  writeBufferBytes: 48 * BS,
  flushBytes: 1 << 30, // flushes only when a test asks
  flushIntervalMs: 1_000_000,
  batchMs: 1_000_000,
  noSpaceRetryMs: 10,
};

interface Env {
  sim: SimFS;
  disk: FullDiskFileIO;
  store: Store;
  vol: Volume;
}

async function open(sim: SimFS, durability?: Durability, tunables: Partial<typeof TUNABLES> & { walPreallocate?: boolean } = {}): Promise<Env> {
  const disk = new FullDiskFileIO(sim);
  const store = await Store.open('/store', { fileIO: disk, backend: new FileBackend('/store/objects', disk) });
  const names = (await store.listVolumes()).map((v) => v.name);
  if (!names.includes('v')) await store.createVolume('v', { size: BLOCKS * BS, blockSize: BS, durability: durability ?? 'batched' });
  const vol = await store.openVolume('v', { ...TUNABLES, ...tunables });
  return { sim, disk, store, vol };
}

const block = (tag: number, b: number): Buffer => {
  const buf = Buffer.alloc(BS, tag);
  buf.writeUInt32LE(b, 0);
  return buf;
};

async function writeBlocks(vol: Volume, tag: number, from: number, to: number, expect: number[]): Promise<void> {
  for (let b = from; b < to; b++) {
    await vol.write(b * BS, block(tag, b));
    expect[b] = tag;
  }
}

function assertNoSpace(err: unknown): true {
  assert.ok(isVbfsError(err, 'VBFS_IO'), `VBFS_IO expected, got ${String(err)}`);
  assert.ok(isNoSpace(err), `an out-of-space error expected, got ${String(err)}`);
  assert.equal(toErrno(err), errno.ENOSPC);
  return true;
}

/** Async mode: fsync() only starts the WAL write; wait until writes are refused. */
async function waitRefused(vol: Volume, expect: number[]): Promise<void> {
  await vol.fsync();
  for (let i = 0; i < 200; i++) {
    try {
      await vol.write(62 * BS, block(9, 62));
      expect[62] = 9;
    } catch (err) {
      assertNoSpace(err);
      return;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error('writes were never refused');
}

/** Space is back: the first write may still be refused (it wakes the WAL retry); then they are accepted. */
async function writeOnceSpaceReturns(vol: Volume, tag: number, b: number, expect: number[]): Promise<number> {
  for (let attempt = 1; attempt <= 200; attempt++) {
    try {
      await vol.write(b * BS, block(tag, b));
      expect[b] = tag;
      return attempt;
    } catch (err) {
      assertNoSpace(err);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  throw new Error('writes still refused long after space returned');
}

async function assertContent(vol: Volume, expect: number[], what: string): Promise<void> {
  for (let b = 0; b < BLOCKS; b++) {
    const got = await vol.read(b * BS, BS);
    const tag = expect[b] ?? 0;
    assert.deepEqual(got, tag === 0 ? Buffer.alloc(BS) : block(tag, b), `${what}: block ${b} should hold version ${tag}, holds ${got[4]}`);
  }
}

describe('store disk full: recovery in place', () => {
  for (const durability of ['batched', 'async', 'strict'] as const) {
    it(`${durability}: WAL write fails with ENOSPC (half written), writers get ENOSPC, then the WAL is rewritten in place; acknowledged data survives power loss`, async () => {
      for (const seed of [1, 2, 3, 4]) {
        const e = await open(new SimFS(), durability);
        const expect: number[] = [];
        await writeBlocks(e.vol, 1, 0, 32, expect);
        await e.vol.fsync();

        e.disk.full = true;
        // Acknowledged before the disk noticed (strict: the write itself reports it).
        let pending: number[] = [];
        try {
          await writeBlocks(e.vol, 2, 0, 8, expect);
        } catch (err) {
          assert.equal(durability, 'strict');
          assertNoSpace(err);
          pending = [0]; // its record is in the stalled batch: may or may not survive
          expect[0] = 1;
        }
        if (durability === 'batched') await assert.rejects(e.vol.fsync(), assertNoSpace);
        if (durability === 'async') await waitRefused(e.vol, expect); // its fsync only starts a sync
        assert.ok(e.disk.refused > 0, 'the WAL write hit the full disk');
        // Refused writes leave nothing behind, and nothing else fails.
        for (let i = 0; i < 5; i++) await assert.rejects(e.vol.write(40 * BS, block(3, 40)), assertNoSpace);
        await assert.rejects(e.vol.fsync(), assertNoSpace);
        if (durability !== 'strict') await assertContent(e.vol, expect, 'in memory while the disk is full');

        e.disk.full = false;
        await writeOnceSpaceReturns(e.vol, 4, 41, expect);
        await e.vol.fsync();
        for (const b of pending) expect[b] = 2; // the stalled batch was written after all
        await writeBlocks(e.vol, 5, 8, 12, expect);
        // async: fsync() only starts a sync; flush() waits for the WAL sync (and the chunks).
        await (durability === 'async' ? e.vol.flush() : e.vol.fsync());
        await assertContent(e.vol, expect, 'after recovery');
        assert.equal(e.vol.stats().errors, 0, 'the volume did not fail');

        // Power loss now: everything above was acknowledged by a completed fsync.
        const after = e.sim.afterCrash(new Rng(seed));
        await e.store.close().catch(() => undefined); // its timers; the old disk is frozen
        const r = await open(after);
        await assertContent(r.vol, expect, `after power loss (seed ${seed})`);
        await r.store.close();
      }
    });
  }

  it('power loss while the WAL waits for space: the half-written batch is a torn tail, fsynced data is intact', async () => {
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const e = await open(new SimFS(), 'async');
      const expect: number[] = [];
      await writeBlocks(e.vol, 1, 0, 32, expect);
      await e.vol.fsync();
      const synced = [...expect];
      e.disk.full = true;
      await writeBlocks(e.vol, 2, 0, 8, expect);
      await waitRefused(e.vol, expect);
      const r = await open(e.sim.afterCrash(new Rng(seed)));
      await e.store.close().catch(() => undefined);
      for (let b = 0; b < BLOCKS; b++) {
        const got = await r.vol.read(b * BS, BS);
        const ok = [synced[b] ?? 0, expect[b] ?? 0].map((t) => (t === 0 ? Buffer.alloc(BS) : block(t, b)));
        assert.ok(
          ok.some((x) => x.equals(got)),
          `seed ${seed}: block ${b} holds neither the synced nor the newer version`,
        );
      }
      await r.store.close();
    }
  });

  it('a flush that runs out of space fails without failing the volume and is retried; nothing is lost', async () => {
    const e = await open(new SimFS(), 'batched');
    const expect: number[] = [];
    await writeBlocks(e.vol, 1, 0, 40, expect);
    await e.vol.fsync();
    e.disk.full = true;
    await assert.rejects(e.vol.flush(), assertNoSpace);
    await assert.rejects(e.vol.flush(), assertNoSpace);
    e.disk.full = false;
    await e.vol.flush();
    await writeBlocks(e.vol, 2, 20, 30, expect);
    await e.vol.flush();
    await e.vol.fsync();
    await assertContent(e.vol, expect, 'after the retried flush');
    assert.equal(e.vol.stats().errors, 0);
    assert.ok([PERSISTED, CACHED].includes(e.vol.blockState(0)), 'flushed into a chunk');
    const r = await open(e.sim.afterCrash(new Rng(7)));
    await e.store.close().catch(() => undefined);
    await assertContent(r.vol, expect, 'after power loss');
    await r.store.close();
  });

  it('writers that need room while the flush cannot make any get ENOSPC instead of hanging', async () => {
    const e = await open(new SimFS(), 'async');
    const expect: number[] = [];
    e.disk.full = true;
    // 48 slots: the WAL fails first (its batch write), so writes are refused from then on.
    let refused = 0;
    for (let b = 0; b < BLOCKS; b++) {
      try {
        await e.vol.write(b * BS, block(1, b));
      } catch (err) {
        assertNoSpace(err);
        refused++;
      }
    }
    assert.ok(refused > 0);
    e.disk.full = false;
    await writeOnceSpaceReturns(e.vol, 2, 63, expect);
    await e.vol.flush();
    assert.equal(e.vol.stats().errors, 0);
    await e.store.close();
  });

  it('a failed fdatasync is not retried: the volume stays failed after space returns, and reopens with what was synced', async () => {
    const e = await open(new SimFS(), 'batched');
    const expect: number[] = [];
    await writeBlocks(e.vol, 1, 0, 16, expect);
    await e.vol.fsync();
    await writeBlocks(e.vol, 2, 0, 4, []);
    e.disk.failSyncs = true;
    await assert.rejects(e.vol.fsync(), (err: unknown) => isVbfsError(err, 'VBFS_IO') && !isNoSpace(err));
    e.disk.failSyncs = false;
    await new Promise((r) => setTimeout(r, 50)); // several retry periods
    await assert.rejects(e.vol.write(0, block(3, 0)), (err: unknown) => isVbfsError(err, 'VBFS_IO') && !isNoSpace(err));
    await assert.rejects(e.vol.fsync(), (err: unknown) => isVbfsError(err, 'VBFS_IO'));
    await e.store.close().catch(() => undefined);
    const r = await open(e.sim.afterCrash(new Rng(3)));
    for (let b = 4; b < 16; b++) assert.ok((await r.vol.read(b * BS, BS)).equals(block(1, b)));
    await r.store.close();
  });

  it('a spare WAL segment that cannot be zero-filled (out of space) only means appended segments; preallocated ones come back with the space', async () => {
    const sim = new SimFS();
    const walDir = '/store/volumes/v/wal';
    const segments = async (): Promise<{ names: string[]; preallocated: number }> => {
      const names = await sim.readdir(walDir);
      let preallocated = 0;
      for (const n of names.filter((x) => x.endsWith('.wal'))) {
        const h = decodeSegmentHeader(sim.readRaw(`${walDir}/${n}`) ?? Buffer.alloc(0), WAL_MAGIC);
        if (h && (h.count & WAL_FLAG_PREALLOCATED) !== 0) preallocated++;
      }
      return { names, preallocated };
    };
    sim.failWhen((op) => op.kind === 'write' && op.path.startsWith(`${walDir}/prep-`), 'ENOSPC');
    const e = await open(sim, 'batched', { walPreallocate: true });
    const expect: number[] = [];
    for (let round = 1; round <= 3; round++) {
      await writeBlocks(e.vol, round, 0, 40, expect); // 2.5 segments
      await e.vol.fsync();
      if (round > 1) await e.vol.flush();
      const seen = await segments();
      assert.equal(seen.preallocated, 0, `round ${round}: no spare could be made, every segment is appended`);
      assert.ok(!seen.names.some((n) => n.startsWith('spare-')), `round ${round}: ${seen.names.join(' ')}`);
    }
    assert.equal(e.vol.stats().errors, 0, 'the volume did not fail');
    await assertContent(e.vol, expect, 'with appended segments');

    sim.failWhen(undefined);
    await writeBlocks(e.vol, 4, 0, 40, expect);
    await e.vol.flush(); // the reclaim finds no spare and nothing in flight: one is zero-filled
    for (let i = 0; i < 200 && !(await segments()).names.some((n) => n.startsWith('spare-')); i++) await new Promise((r) => setTimeout(r, 5));
    await writeBlocks(e.vol, 5, 0, 40, expect);
    await e.vol.fsync();
    assert.ok((await segments()).preallocated > 0, 'space returned: the next segment is a preallocated one');
    assert.equal(e.vol.stats().errors, 0);

    const r = await open(e.sim.afterCrash(new Rng(5)));
    await e.store.close().catch(() => undefined);
    await assertContent(r.vol, expect, 'after power loss');
    await r.store.close();
  });

  it('EIO on a WAL write is not retried (only ENOSPC/EDQUOT are)', async () => {
    const sim = new SimFS();
    const e = await open(sim, 'batched');
    await writeBlocks(e.vol, 1, 0, 4, []);
    sim.failWhen((op) => op.kind === 'write' && op.path.includes('/wal/'), 'EIO');
    await writeBlocks(e.vol, 2, 4, 8, []);
    await assert.rejects(e.vol.fsync(), (err: unknown) => isVbfsError(err, 'VBFS_IO') && !isNoSpace(err));
    sim.failWhen(undefined);
    await new Promise((r) => setTimeout(r, 50));
    await assert.rejects(e.vol.write(0, block(3, 0)), (err: unknown) => isVbfsError(err, 'VBFS_IO') && !isNoSpace(err));
    await e.store.close().catch(() => undefined);
  });
});
