import * as assert from 'node:assert/strict';
import { MemoryBackend } from '../src/backend/memory-backend';
import { VbfsError, isVbfsError } from '../src/errors';
import { FRAME_HEADER } from '../src/format/frame';
import { type ChunkPlacement, allocPlacement } from '../src/format/map-records';
import { BlockIndex } from '../src/map/block-index';
import { BucketMapMedium } from '../src/map/bucket-map-medium';
import { MapStore } from '../src/map/map-store';
import { silentLogger, type Logger } from '../src/types';
import { SimFS } from './helpers/sim-fs';
import { commitOf } from './helpers/placements';

/**
 * Map log recovery with sync frames (format 2): every commit write begins with an
 * 'S' frame claiming what the previous fdatasyncs covered. A commit write that never
 * completed its fdatasync may reach the disk with a hole before frames that did:
 * that is a torn tail, cut. Damage inside a synced commit is corruption.
 */
const ID = '00112233445566778899aabbccddeeff';
const DIR = '/map';

async function load(sim: SimFS, logger: Logger = silentLogger): Promise<BlockIndex> {
  const index = new BlockIndex(1024);
  await new MapStore(sim, DIR, ID, logger, () => undefined).load(index, false);
  return index;
}

describe('map log sync frames', () => {
  let sim: SimFS;
  let file: string;
  let firstWriteEnd: number;
  beforeEach(async () => {
    sim = new SimFS();
    await sim.mkdir(DIR);
    await sim.fsyncDir('/');
    const m = new MapStore(sim, DIR, ID, silentLogger, () => undefined);
    await m.load(new BlockIndex(1024), false);
    await m.commit([commitOf(1, 0, 4)]);
    file = sim.files(`${DIR}/`)[0] as string;
    firstWriteEnd = (sim.readRaw(file) as Buffer).length;
    await m.commit([commitOf(2, 10, 4), commitOf(3, 20, 200)]); // one write: S, C(2), C(3)
    await m.close();
  });

  it('a hole at the start of the last commit write, with its later frames intact, is a torn tail', async () => {
    const raw = Buffer.from(sim.readRaw(file) as Buffer);
    raw.fill(0, firstWriteEnd, firstWriteEnd + FRAME_HEADER + 16 + 40); // the S frame and the start of C(2)
    sim.writeRaw(file, raw);
    const warnings: string[] = [];
    const index = await load(sim, { ...silentLogger, warn: (m: string) => warnings.push(m) });
    assert.equal(index.persistedSeq(0), 101, 'the synced commit is kept');
    assert.equal(index.persistedSeq(20), 0, 'the unsynced commit write is dropped whole, even its intact frame');
    assert.equal(warnings.length, 1);
    assert.equal((sim.readRaw(file) as Buffer).length, firstWriteEnd, 'cut at the damage');
  });

  it('damage inside a commit that a later sync frame proves synced is corruption', async () => {
    const raw = Buffer.from(sim.readRaw(file) as Buffer);
    raw[firstWriteEnd - 10] = (raw[firstWriteEnd - 10] as number) ^ 4; // inside C(1), before the second write's S claim
    sim.writeRaw(file, raw);
    await assert.rejects(load(sim), (err: unknown) => isVbfsError(err, 'VBFS_CORRUPT') && /fdatasync covered/.test(err.message));
  });
});

describe('bucket map: a checkpoint whose cleanup fails', () => {
  /** A bucket whose DELETEs fail while `failDeletes` (a flaky store, or one that refuses them). */
  class FlakyDeletes extends MemoryBackend {
    failDeletes = false;
    override async delete(key: string): Promise<void> {
      if (this.failDeletes) throw new VbfsError('VBFS_IO', `delete ${key} failed (test)`);
      return super.delete(key);
    }
  }
  const apply = (index: BlockIndex, p: ChunkPlacement): void => {
    for (let i = 0; i < p.count; i++) index.setPersisted(p.blocks[i] as number, p.seqs[i] as number, p.chunkId, p.offsets[i] as number, p.lens[i] as number, 0);
  };

  it('after a checkpoint the replaced map deltas are deleted several at a time (each is a round trip to the bucket), and none is left', async () => {
    /** Deletes that take a while, counting how many overlap. */
    class SlowDeletes extends MemoryBackend {
      running = 0;
      peak = 0;
      override async delete(key: string): Promise<void> {
        this.running++;
        this.peak = Math.max(this.peak, this.running);
        await new Promise((r) => setTimeout(r, 5));
        this.running--;
        return super.delete(key);
      }
    }
    const be = new SlowDeletes();
    const sim = new SimFS();
    const index = new BlockIndex(1024);
    const m = new MapStore(sim, DIR, ID, silentLogger, () => undefined, new BucketMapMedium(be, ID, 1));
    await m.load(index, false);
    for (let n = 1; n <= 20; n++) {
      const c = commitOf(n, 4 * n, 4);
      await m.commit([c]);
      apply(index, c);
    }
    const deltas = async (): Promise<string[]> => (await be.list(`${ID}/`)).filter((k) => !k.includes('checkpoint'));
    assert.ok((await deltas()).length >= 20, 'one delta object per commit');
    await m.checkpoint(index, 3000, 21);
    assert.ok(be.peak > 1, `deletes overlapped (peak ${be.peak})`);
    assert.ok(be.peak <= 8, `at most 8 at a time (peak ${be.peak})`);
    assert.deepEqual(await deltas(), [], 'every replaced delta deleted');
    await m.close();
    const again = new BlockIndex(1024);
    await new MapStore(sim, DIR, ID, silentLogger, () => undefined, new BucketMapMedium(be, ID, 1)).load(again, false);
    for (let n = 1; n <= 20; n++) assert.equal(again.persistedSeq(4 * n), 100 * n + 1, `block ${4 * n} from the checkpoint`);
  });

  it('the DELETEs after a published checkpoint fail: the next commit still goes past the checkpoint and is replayed on open', async () => {
    const be = new FlakyDeletes();
    const sim = new SimFS();
    const index = new BlockIndex(1024);
    const m = new MapStore(sim, DIR, ID, silentLogger, () => undefined, new BucketMapMedium(be, ID, 1));
    await m.load(index, false);
    for (const [n, block] of [
      [1, 0],
      [2, 10],
    ] as const) {
      const c = commitOf(n, block, 4);
      await m.commit([c]);
      apply(index, c);
      if (n === 1) await m.checkpoint(index, 200, 2); // a first one: the second has an older checkpoint to delete
    }
    be.failDeletes = true;
    await assert.rejects(m.checkpoint(index, 300, 3), (err: unknown) => isVbfsError(err, 'VBFS_IO'));
    be.failDeletes = false;
    const after = commitOf(3, 20, 4);
    await m.commit([after]); // its WAL records would be reclaimed now
    await m.close();

    const again = new BlockIndex(1024);
    await new MapStore(sim, DIR, ID, silentLogger, () => undefined, new BucketMapMedium(be, ID, 1)).load(again, false);
    assert.equal(again.persistedSeq(0), 101, 'in the checkpoint');
    assert.equal(again.persistedSeq(10), 201, 'in the checkpoint');
    assert.equal(again.persistedSeq(20), 301, 'the commit after the checkpoint whose cleanup failed');
  });
});

describe('map checkpoint behind a commit', () => {
  it("sees the index updates the commit's caller makes after the commit resolves (a relocate behind a failpoint's await): no false VBFS_CORRUPT, and a load finds them", async () => {
    const sim = new SimFS();
    await sim.mkdir(DIR);
    await sim.fsyncDir('/');
    const m = new MapStore(sim, DIR, ID, silentLogger, () => undefined);
    const index = new BlockIndex(1024);
    await m.load(index, false);
    const first = commitOf(1, 0, 8);
    await m.commit([first]);
    for (let i = 0; i < 8; i++) index.setPersisted(i, first.seqs[i] as number, 1, first.offsets[i] as number, 4096, 0);
    assert.equal(index.extentCount, 1);
    // Every other block copied to chunk 2 with its seq (what the compactor commits):
    // after the relocation the index holds 8 extents, not 1.
    const copy = allocPlacement(2, 4);
    for (let k = 0; k < 4; k++) {
      copy.blocks[k] = 2 * k;
      copy.seqs[k] = first.seqs[2 * k] as number;
      copy.offsets[k] = 64 + k * 4128;
      copy.lens[k] = 4096;
    }
    // The flusher awaits a failpoint between its commit and the index update: a few
    // promise hops, which used to let the checkpoint queued behind count the index first.
    const failpoint = async (): Promise<void> => undefined;
    const committed = m.commit([copy]).then(async () => {
      await failpoint();
      await failpoint();
      for (let k = 0; k < 4; k++) assert.ok(index.relocate(2 * k, copy.seqs[k] as number, 1, 2, copy.offsets[k] as number, 4096, 0));
    });
    const checkpointed = m.checkpoint(index, 1000, 3); // queued behind the commit
    await committed;
    await checkpointed;
    assert.equal(index.extentCount, 8);
    await m.close();
    const again = await load(sim);
    for (let b = 0; b < 8; b++) assert.equal(again.persistedChunk(b), b % 2 === 0 ? 2 : 1, `block ${b}`);
  });
});
