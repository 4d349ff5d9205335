/**
 * Run buffers (src/store/run-buffers.ts): chunk runs are read into buffers reused
 * from read to read, never into a fresh Buffer per backend read; and reuse never
 * lets bytes of an earlier read stand in for a short read.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { FileBackend } from '../src/backend/file-backend';
import { isVbfsError } from '../src/errors';
import { NodeFileIO } from '../src/io/node-file-io';
import { RunBuffers } from '../src/store/run-buffers';
import { Store } from '../src/store/store';
import { tmpDir } from './helpers/fuse-env';

const BS = 4096;
const HDR = 64;
const REC = 32 + BS;

/** A file backend that remembers the memory each ranged read went into. */
class RecordingBackend extends FileBackend {
  readonly into = new Set<ArrayBufferLike>();
  override getInto(key: string, offset: number, dst: Buffer): Promise<number> {
    this.into.add(dst.buffer);
    return super.getInto(key, offset, dst);
  }
}

describe('RunBuffers', () => {
  it('hands a given-back buffer out again, by power-of-two class, and keeps at most perClass of each', () => {
    const rb = new RunBuffers(2);
    const a = rb.take(4128);
    assert.equal(a.length, 64 * 1024);
    rb.give(a);
    assert.equal(rb.bytes, 64 * 1024);
    assert.equal(rb.take(5000), a);
    const b = rb.take(33 * REC); // 132,096 bytes: the 256 KiB class
    assert.equal(b.length, 256 * 1024);
    const [c, d, e] = [rb.take(1), rb.take(1), rb.take(1)];
    for (const x of [a, c, d, e]) rb.give(x);
    assert.equal(rb.bytes, 2 * 64 * 1024);
    rb.trim();
    assert.equal(rb.bytes, 0);
  });

  it('does not keep a buffer of a foreign size, nor a detached one', () => {
    const rb = new RunBuffers();
    rb.give(Buffer.alloc(5000));
    const big = rb.take(5 * 1024 * 1024);
    assert.equal(big.length, 5 * 1024 * 1024);
    rb.give(big);
    const t = rb.take(1000);
    structuredClone(t.buffer, { transfer: [t.buffer as ArrayBuffer] }); // as a transfer to a worker does
    rb.give(t);
    assert.equal(rb.bytes, 0);
  });
});

describe('reader: chunk runs read into reused buffers', function () {
  this.timeout(60_000);
  let dir = '';
  beforeEach(async () => {
    dir = await tmpDir('runbuf');
  });
  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('hundreds of uncached reads go into a handful of buffers, with the right bytes', async () => {
    const data = randomBytes(256 * BS);
    const backend = new RecordingBackend(path.join(dir, 'objects'), new NodeFileIO());
    const store = await Store.open(dir, { backend });
    await store.createVolume('v', { size: data.length });
    let vol = await store.openVolume('v', { chunkBytes: HDR + 64 * REC });
    await vol.write(0, data);
    await vol.close();
    // No cache, no readahead: every read is a backend read.
    vol = await store.openVolume('v', { cacheBytes: 0, readaheadBytes: 0 });
    let reads = 0;
    for (let i = 0; i < 300; i++) {
      const b = (i * 97) % 256;
      const len = i % 3 === 0 ? 16 * BS : BS;
      const n = Math.min(len, data.length - b * BS);
      assert.deepEqual(await vol.read(b * BS, n), data.subarray(b * BS, b * BS + n), `read ${i} at block ${b}`);
      reads++;
    }
    assert.equal(reads, 300);
    assert.ok(backend.into.size > 0, 'reads go through getInto');
    assert.ok(backend.into.size <= 4, `300 reads used ${backend.into.size} buffers`);
    await vol.close();
    await store.close();
  });

  it('a short read (chunk object cut) is VBFS_CORRUPT, even when the reused buffer still holds that record from an earlier read', async () => {
    const data = randomBytes(32 * BS);
    const store = await Store.open(dir);
    await store.createVolume('v', { size: data.length });
    let vol = await store.openVolume('v', { chunkBytes: HDR + 16 * REC });
    await vol.write(0, data);
    await vol.close();
    const files: string[] = [];
    for (const e of await fsp.readdir(path.join(dir, 'objects'), { recursive: true, withFileTypes: true })) {
      if (e.isFile() && e.parentPath.endsWith('chunks')) files.push(path.join(e.parentPath, e.name));
    }
    files.sort();
    vol = await store.openVolume('v', { cacheBytes: 0, readaheadBytes: 0 });
    // Block 15 is the last record of the first chunk object: read it once, into a run buffer.
    assert.deepEqual(await vol.read(15 * BS, BS), data.subarray(15 * BS, 16 * BS));
    // Cut its record short under the open volume: the next read of it gets fewer bytes
    // than it asked for, into the same buffer, whose tail still holds the whole record.
    await fsp.truncate(files[0] as string, HDR + 15 * REC + 100);
    await assert.rejects(vol.read(15 * BS, BS), (e: unknown) => isVbfsError(e, 'VBFS_CORRUPT'));
    await assert.rejects(vol.read(14 * BS, 2 * BS), (e: unknown) => isVbfsError(e, 'VBFS_CORRUPT'));
    assert.deepEqual(await vol.read(14 * BS, BS), data.subarray(14 * BS, 15 * BS));
    assert.deepEqual(await vol.read(16 * BS, 16 * BS), data.subarray(16 * BS));
    await vol.close();
    await store.close();
  });
});
