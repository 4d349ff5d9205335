import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import type { Durability } from '../src/types';
import type { VolumeStats, VolumeTunables } from '../src/store/types';
import { CACHED, HOT, PENDING, PERSISTED } from '../src/map/block-index';
import { NodeFileIO } from '../src/io/node-file-io';

/**
 * The block states are real: a write makes its block Hot, the WAL sync that
 * covers it (an fsync, or batched mode's group commit) makes it Pending, the
 * flush Persisted, a read Cached; the per-state counts in stats() (and so in
 * .stats) follow. On the real file system: the syncs are real fdatasyncs.
 */
const BS = 4096;
const QUIET: Partial<VolumeTunables> = { flushBytes: 1 << 30, flushIntervalMs: 1_000_000, batchMs: 1_000_000, batchBlocks: 1 << 20, readaheadBytes: 0 };

async function setup(durability: Durability, extra: Partial<VolumeTunables> = {}): Promise<{ vol: Volume; cleanup: () => Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-states-'));
  const store = await Store.open(dir, { fileIO: new NodeFileIO() });
  await store.createVolume('s', { size: 16 << 20, blockSize: BS, durability });
  const vol = await store.openVolume('s', { ...QUIET, ...extra });
  return {
    vol,
    cleanup: async () => {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function counts(s: VolumeStats): [number, number, number, number] {
  return [s.blocksHot, s.blocksPending, s.blocksPersisted, s.blocksCached];
}

describe('block states', () => {
  it('Hot -> Pending when the WAL sync covering the block completes, then Persisted, then Cached', async () => {
    const { vol, cleanup } = await setup('relaxed');
    try {
      await vol.write(0, Buffer.alloc(3 * BS, 1));
      assert.deepEqual([vol.blockState(0), vol.blockState(2)], [HOT, HOT], 'written, not synced');
      assert.deepEqual(counts(vol.stats()), [3, 0, 0, 0]);

      await vol.fsync();
      assert.deepEqual([vol.blockState(0), vol.blockState(2)], [PENDING, PENDING], 'the fsync covered them');
      assert.deepEqual(counts(vol.stats()), [0, 3, 0, 0]);

      // A write after the sync is Hot while the synced ones stay Pending; a
      // rewrite of a Pending block makes it Hot again (its new version is unsynced).
      await vol.write(5 * BS, Buffer.alloc(BS, 2));
      await vol.write(1 * BS, Buffer.alloc(BS, 3));
      assert.deepEqual([vol.blockState(0), vol.blockState(1), vol.blockState(5)], [PENDING, HOT, HOT]);
      assert.deepEqual(counts(vol.stats()), [2, 2, 0, 0]);

      await vol.flush(); // syncs the WAL, then packs every block into a chunk
      assert.deepEqual([vol.blockState(0), vol.blockState(1), vol.blockState(5)], [PERSISTED, PERSISTED, PERSISTED]);
      assert.deepEqual(counts(vol.stats()), [0, 0, 4, 0]);

      assert.equal((await vol.read(BS, BS))[0], 3);
      assert.equal(vol.blockState(1), CACHED);
      assert.deepEqual(counts(vol.stats()), [0, 0, 3, 1]);

      await vol.write(BS, Buffer.alloc(BS, 4));
      assert.equal(vol.blockState(1), HOT, 'a new write of a cached block');
      assert.deepEqual(counts(vol.stats()), [1, 0, 3, 0]);
    } finally {
      await cleanup();
    }
  });

  it('thousands of blocks written before a sync all become Pending (no block is lost track of)', async () => {
    const { vol, cleanup } = await setup('relaxed');
    try {
      await vol.write(0, Buffer.alloc(16 << 20, 9)); // 4096 blocks in one write: appended before any sync completes
      await vol.fsync();
      assert.deepEqual(counts(vol.stats()), [0, 4096, 0, 0]);
    } finally {
      await cleanup();
    }
  });

  it('batched mode: the group commit, not an fsync, makes blocks Pending', async () => {
    const { vol, cleanup } = await setup('batched', { batchBlocks: 4 });
    try {
      // Four blocks reach batchBlocks: a background sync starts, nobody waits for it.
      for (let b = 0; b < 4; b++) await vol.write(b * BS, Buffer.alloc(BS, b + 1));
      const deadline = Date.now() + 5000;
      while (vol.blockState(3) !== PENDING && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      assert.equal(vol.blockState(3), PENDING);
      assert.deepEqual(counts(vol.stats()), [0, 4, 0, 0]);
    } finally {
      await cleanup();
    }
  });
});
