import * as assert from 'node:assert/strict';
import { Store } from '../../src/store/store';
import { isVbfsError } from '../../src/errors';
import { SimFS } from './sim-fs';

/**
 * Bodies of regression tests that can spin the event loop when they fail, so
 * test/regressions.test.ts runs them in a worker thread with a deadline.
 */

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Found by the model test (VBFS_SEED=2): with flushBytes = one block, a background
 * flush that ends while a read-modify-write holds a freshly allocated (not yet
 * committed) arena slot re-kicks the flusher; the snapshot is empty (the slot is not
 * any block's current version yet), flushOnce() resolves at once, its finally re-kicks
 * again: a microtask loop that starves the RMW's own I/O forever. The engine spins
 * at 100% CPU; timers never fire.
 *
 * The RMW is started after 0..40 event-loop turns, so that for some delay the
 * background flush ends while the RMW's backend read is in flight.
 */
export async function rmwDuringFinishingFlush(progress: (msg: string) => void = () => {}): Promise<void> {
  const bs = 512;
  for (let turns = 0; turns <= 40; turns++) {
    progress(`RMW started ${turns} event-loop turns after the flush was kicked`);
    const sim = new SimFS();
    const store = await Store.open('/s', { fileIO: sim });
    await store.createVolume('v', { size: 64 * bs, blockSize: bs, durability: 'relaxed' });
    const vol = await store.openVolume('v', { flushBytes: bs, cacheBytes: 0 });
    await vol.write(0, Buffer.alloc(bs, 1));
    await vol.flush(); // block 0 now lives only in a chunk
    const full = vol.write(bs, Buffer.alloc(bs, 2)); // kicks a background flush
    for (let i = 0; i < turns; i++) await tick();
    const partial = vol.write(10, Buffer.alloc(5, 3)); // read-modify-write of block 0
    await Promise.all([full, partial]);
    const want = Buffer.alloc(2 * bs, 1);
    want.fill(2, bs);
    want.fill(3, 10, 15);
    assert.deepEqual(await vol.read(0, 2 * bs), want);
    await store.close();
  }
}

/**
 * Found by the crash test: when the WAL fails during a flush (here a real I/O error,
 * EIO on the WAL's fdatasync), flush() rejects as it should, but a second promise of
 * the same flush rejects with nobody listening. Node >= 15 kills the process on an
 * unhandled rejection: a failing disk would take the whole FUSE daemon down instead of
 * failing the one request. (runInWorker fails the job on any unhandled rejection.)
 */
export async function walErrorDuringFlushIsHandled(): Promise<void> {
  const bs = 512;
  const sim = new SimFS();
  const store = await Store.open('/s', { fileIO: sim });
  await store.createVolume('v', { size: 64 * bs, blockSize: bs, durability: 'relaxed' });
  const vol = await store.openVolume('v', { flushBytes: 1 << 20, flushIntervalMs: 1_000_000 });
  await vol.write(0, Buffer.alloc(4 * bs, 1));
  sim.failWhen((op) => (op.kind === 'datasync' || op.kind === 'write') && op.path.includes('/wal/'));
  await assert.rejects(vol.flush(), (e) => isVbfsError(e, 'VBFS_IO'));
  await new Promise((r) => setTimeout(r, 50));
  await store.close().catch(() => {});
}
