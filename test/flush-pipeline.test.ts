import * as assert from 'node:assert/strict';
import { MemoryBackend } from '../src/backend/memory-backend';
import { VbfsError } from '../src/errors';
import { chunkKey } from '../src/chunk/chunk';
import { MapStore } from '../src/map/map-store';
import type { ChunkPlacement } from '../src/format/map-records';
import { Store } from '../src/store/store';
import type { VolumeTunables } from '../src/store/types';
import { SimFS } from './helpers/sim-fs';
import { Rng } from './helpers/rng';

/**
 * The flusher writes waves of chunk objects and overlaps them: the next wave's puts
 * run while a wave's map commit is written (a bucket's round trip, a disk's
 * fdatasync), flushWaves waves in flight (2 over a remote backend by default). What
 * must not change: a chunk is named by the map only after its put succeeded, and
 * commits go in order.
 */
const BS = 4096;
/** Small chunks: 15 records each, so a few hundred blocks make several waves of 4. */
const CHUNK = 64 * 1024;
const PER_CHUNK = Math.floor((CHUNK - 64) / (32 + BS));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A remote-like memory backend: each chunk put takes `ms`; counts puts in flight; can fail chosen chunks. */
class SlowBackend extends MemoryBackend {
  readonly remote = true;
  inFlight = 0;
  peak = 0;
  /** Chunk keys whose put resolved, in order. */
  readonly done: string[] = [];
  failing = new Set<string>();
  /** A failing put waits until this holds (at most 10 s), so what runs meanwhile does not depend on the machine's load. */
  failWhen: ((done: string[]) => boolean) | null = null;

  constructor(private readonly ms: number) {
    super();
  }

  override async put(key: string, data: Uint8Array): Promise<void> {
    if (!key.includes('/chunks/')) return super.put(key, data);
    this.inFlight++;
    this.peak = Math.max(this.peak, this.inFlight);
    try {
      await sleep(this.ms);
      if (this.failing.has(key)) {
        for (let waited = 0; this.failWhen && !this.failWhen(this.done) && waited < 10_000; waited += 5) await sleep(5);
        throw new VbfsError('VBFS_IO', `injected: put '${key}' refused`, { key });
      }
      await super.put(key, data);
      this.done.push(key);
    } finally {
      this.inFlight--;
    }
  }
}

function chunkId(key: string): number {
  return parseInt(key.slice(key.lastIndexOf('/') + 1), 16);
}

describe('flush pipeline: waves overlap, the map stays safe', () => {
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with its `this` (call) below
  const realCommit = MapStore.prototype.commit;
  /** Every map commit: the chunk ids it names, and the chunk puts that had resolved by then. */
  let commits: { ids: number[]; putDone: Set<number> }[] = [];
  let backend: SlowBackend;

  beforeEach(() => {
    commits = [];
    MapStore.prototype.commit = function (this: MapStore, placements: ChunkPlacement[]): Promise<void> {
      commits.push({ ids: placements.map((p) => p.chunkId), putDone: new Set(backend.done.map(chunkId)) });
      return realCommit.call(this, placements);
    };
  });
  afterEach(() => {
    MapStore.prototype.commit = realCommit;
  });

  async function setup(t: Partial<VolumeTunables>, mapCommitMs = 0) {
    const store = await Store.open('/store', {
      fileIO: new SimFS(),
      backend,
      diskCacheBytes: 0,
      // A slow map commit (a bucket delta's round trip): the next wave has time to be written meanwhile.
      failpoint: async (name) => {
        if (name === 'flush:afterMapCommit' && mapCommitMs > 0) {
          inFlightAtCommit.push(backend.inFlight);
          await sleep(mapCommitMs);
        }
      },
    });
    await store.createVolume('p', { size: 16 << 20, blockSize: BS });
    const vol = await store.openVolume('p', { chunkBytes: CHUNK, flushBytes: 1 << 30, flushIntervalMs: 1_000_000, ...t });
    return { store, vol };
  }
  let inFlightAtCommit: number[] = [];
  beforeEach(() => {
    inFlightAtCommit = [];
  });

  it('flushWaves 4: the next waves are written while a wave commits; every commit names only chunks already put, in order', async () => {
    backend = new SlowBackend(20);
    const { store, vol } = await setup({ flushWaves: 4 }, 30);
    const data = new Rng(7).bytes(PER_CHUNK * 4 * 5 * BS); // five waves of four chunks
    await vol.write(0, data);
    await vol.flush();
    assert.ok(backend.peak > 4, `at most ${backend.peak} chunk puts in flight: the waves did not overlap`);
    assert.ok(
      inFlightAtCommit.some((n) => n > 0),
      `no chunk put in flight during any map commit (${inFlightAtCommit.join(',')}): the backend idled while the map committed`,
    );
    let last = -1;
    for (const c of commits) {
      for (const id of c.ids) {
        assert.ok(c.putDone.has(id), `chunk ${id} committed before its put resolved`);
        assert.ok(id > last, `chunk ${id} committed after chunk ${last}: commits out of order`);
        last = id;
      }
    }
    assert.equal(commits.flatMap((c) => c.ids).length, 20);
    assert.deepEqual(await vol.read(0, data.length), data);
    await vol.close();
    await store.close();
  });

  it('flushWaves 1: one wave at a time, as before (the tunable bounds the puts in flight)', async () => {
    backend = new SlowBackend(10);
    const { store, vol } = await setup({ flushWaves: 1 }, 10);
    await vol.write(0, new Rng(8).bytes(PER_CHUNK * 4 * 3 * BS));
    await vol.flush();
    assert.ok(backend.peak <= 4, `${backend.peak} chunk puts in flight with flushWaves 1`);
    assert.deepEqual(inFlightAtCommit, [0, 0, 0]);
    await vol.close();
    await store.close();
  });

  it('over a remote backend two waves overlap by default (8 chunk puts in flight at most)', async () => {
    backend = new SlowBackend(20);
    const { store, vol } = await setup({}, 30);
    const data = new Rng(10).bytes(PER_CHUNK * 4 * 5 * BS);
    await vol.write(0, data);
    await vol.flush();
    assert.ok(backend.peak > 4 && backend.peak <= 8, `${backend.peak} chunk puts in flight`);
    assert.ok(
      inFlightAtCommit.some((n) => n > 0),
      `no chunk put in flight during any map commit (${inFlightAtCommit.join(',')})`,
    );
    assert.deepEqual(await vol.read(0, data.length), data);
    await vol.close();
    await store.close();
  });

  it('a wave whose put fails is not committed, nor is any wave after it, even if its puts succeeded; their chunks are deleted', async () => {
    backend = new SlowBackend(10);
    const { store, vol } = await setup({ flushWaves: 4, backendRetryMs: 1_000_000 });
    const data = new Rng(9).bytes(PER_CHUNK * 4 * 4 * BS); // four waves
    await vol.write(0, data);
    // Chunk ids start at 1 (0: none); the first chunk of the second wave is refused.
    const info = (await store.listVolumes()).find((v) => v.name === 'p');
    assert.ok(info);
    backend.failing.add(chunkKey(info.id, 5));
    // It fails only once a chunk of the third wave is written: a pipeline that runs ahead gets there.
    backend.failWhen = (done) => done.map(chunkId).some((id) => id > 8);
    await assert.rejects(vol.flush(), (err: unknown) => err instanceof VbfsError && err.code === 'VBFS_IO');
    const committed = commits.flatMap((c) => c.ids);
    assert.deepEqual(committed, [1, 2, 3, 4], 'only the first wave is committed');
    assert.ok(
      backend.done.map(chunkId).some((id) => id > 8),
      'later waves were written meanwhile (the pipeline ran ahead)',
    );
    // The orphans of the waves after the failed one are deleted, not left for the next recovery.
    await sleep(20);
    const left = (await backend.list(`${info.id}/chunks/`)).map(chunkId);
    assert.deepEqual(left, [1, 2, 3, 4]);
    // Nothing was lost: the data is still in the write buffer and the WAL.
    backend.failing.clear();
    await vol.flush();
    assert.deepEqual(await vol.read(0, data.length), data);
    await vol.close();
    await store.close();
  });
});
