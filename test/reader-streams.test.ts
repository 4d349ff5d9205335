/**
 * Readahead per sequential stream (src/store/reader.ts): two sequential readers
 * interleaved each keep their readahead, and so does one whose requests arrive
 * pairwise out of order (the kernel's 128 KiB pieces of a larger read, several in
 * flight). Readahead shows as cache hits: the blocks a read finds already cached.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import { tmpDir } from './helpers/fuse-env';

const BS = 4096;
const STEP = 8; // blocks per read

describe('reader: readahead per sequential stream', function () {
  this.timeout(60_000);
  let dir = '';
  let store: Store;
  let vol: Volume;
  const data = randomBytes(512 * BS);

  before(async () => {
    dir = await tmpDir('streams');
    store = await Store.open(dir);
    await store.createVolume('v', { size: data.length });
    const v = await store.openVolume('v');
    await v.write(0, data);
    await v.close();
  });
  beforeEach(async () => {
    vol = await store.openVolume('v', { readaheadBytes: 64 * BS });
  });
  afterEach(async () => {
    await vol.close();
  });
  after(async () => {
    await store.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const readStep = async (block: number): Promise<void> => {
    assert.deepEqual(await vol.read(block * BS, STEP * BS), data.subarray(block * BS, (block + STEP) * BS));
  };

  it('two interleaved sequential readers both read ahead', async () => {
    for (let i = 0; i < 16; i++) {
      await readStep(i * STEP);
      await readStep(256 + i * STEP);
    }
    const s = vol.stats();
    // Each stream's first two reads miss (the second one starts its readahead); the rest hit.
    assert.ok(s.cacheHits >= 2 * 13 * STEP, `hits ${s.cacheHits} of ${32 * STEP} blocks read`);
  });

  it('a reader whose requests arrive pairwise out of order reads ahead', async () => {
    for (let i = 0; i < 32; i += 2) {
      await readStep((i + 1) * STEP);
      await readStep(i * STEP);
    }
    const s = vol.stats();
    assert.ok(s.cacheHits >= 26 * STEP, `hits ${s.cacheHits} of ${32 * STEP} blocks read`);
  });

  it('random reads start no readahead', async () => {
    const blocks = [300, 17, 450, 92, 211, 5, 388, 140];
    for (const b of blocks) await readStep(b);
    assert.equal(vol.stats().cacheHits, 0);
  });
});
