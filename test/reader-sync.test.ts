/**
 * Volume.readIntoSync (the FUSE read handler's first try): a read whose blocks are
 * all in memory is answered at once with the right bytes; one that needs the
 * backend returns false with nothing counted, and readInto() then reads it.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { Store } from '../src/store/store';
import { tmpDir } from './helpers/fuse-env';

const BS = 4096;

describe('reader: reads answered synchronously from memory', function () {
  this.timeout(60_000);
  let dir = '';
  before(async () => {
    dir = await tmpDir('rsync');
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('in-memory blocks (write buffer, cache, empty) at once; a block only in a chunk falls back, uncounted', async () => {
    const data = randomBytes(64 * BS);
    const store = await Store.open(dir);
    await store.createVolume('v', { size: 128 * BS });
    let vol = await store.openVolume('v');
    await vol.write(0, data);
    const out = Buffer.alloc(32 * BS);
    // Still in the write buffer, and the never-written tail is zeros.
    assert.equal(vol.readIntoSync(48 * BS, out), true);
    assert.deepEqual(out, Buffer.concat([data.subarray(48 * BS), Buffer.alloc(16 * BS)]));
    await vol.close();

    vol = await store.openVolume('v', { readaheadBytes: 0 });
    const before = vol.stats();
    assert.equal(vol.readIntoSync(0, out), false, 'blocks only in a chunk object');
    assert.equal(vol.stats().reads, before.reads, 'a fallback is not counted twice');
    await vol.readInto(0, out); // fills the cache
    assert.deepEqual(out, data.subarray(0, 32 * BS));
    out.fill(7);
    const hits = vol.stats().cacheHits;
    assert.equal(vol.readIntoSync(BS + 100, out.subarray(0, 3 * BS)), true);
    assert.deepEqual(out.subarray(0, 3 * BS), data.subarray(BS + 100, 4 * BS + 100));
    assert.equal(vol.stats().cacheHits, hits + 4);
    // Part cached, part not: falls back as a whole.
    assert.equal(vol.readIntoSync(30 * BS, out.subarray(0, 4 * BS)), false);
    // Out of range or closed: false, and readInto() reports the error.
    assert.equal(vol.readIntoSync(127 * BS, out.subarray(0, 2 * BS)), false);
    await vol.close();
    assert.equal(vol.readIntoSync(0, out), false);
    await store.close();
  });
});
