/**
 * The engine's read path on damaged chunk data (no FUSE): VBFS_CORRUPT on every
 * read of the damaged block, one log line per damaged record however often it is
 * read, `corruptReads` counts each failed read, the damaged block is never cached,
 * and the rest of the volume reads back exactly.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { isVbfsError } from '../src/errors';
import { Store } from '../src/store/store';
import type { Logger } from '../src/types';
import { tmpDir } from './helpers/fuse-env';

const BS = 4096;
const HDR = 64;
const REC = 32 + BS; // raw records (compression off)

class Lines implements Logger {
  readonly lines: string[] = [];
  error(m: string): void {
    this.lines.push(m);
  }
  warn(m: string): void {
    this.lines.push(m);
  }
  info(): void {}
  debug(): void {}
}

describe('reads of damaged chunk data (engine)', function () {
  this.timeout(30_000);
  let dir = '';

  before(async () => {
    dir = await tmpDir('damage');
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('VBFS_CORRUPT on every read of the block, logged once with file and offset, counted, never cached', async () => {
    const data = randomBytes(64 * BS);
    let store = await Store.open(dir);
    const info = await store.createVolume('v', { size: 64 * BS });
    let vol = await store.openVolume('v', { chunkBytes: HDR + 16 * REC });
    await vol.write(0, data);
    await vol.close(); // flushes into 4 chunks of 16 blocks
    await store.close();

    const chunks = (await fsp.readdir(path.join(dir, 'objects', info.id, 'chunks'))).sort();
    assert.equal(chunks.length, 4, chunks.join(', '));
    const file = path.join(dir, 'objects', info.id, 'chunks', chunks[1]!); // blocks 16..31
    const target = 20;
    const recOff = HDR + (target - 16) * REC;
    const obj = await fsp.readFile(file);
    obj[recOff + 32 + 1000]! ^= 0x04;
    await fsp.writeFile(file, obj);

    const log = new Lines();
    store = await Store.open(dir, { logger: log });
    vol = await store.openVolume('v');
    try {
      for (let i = 1; i <= 3; i++) {
        await assert.rejects(vol.read(target * BS, BS), (e) => isVbfsError(e, 'VBFS_CORRUPT'));
        assert.equal(vol.stats().corruptReads, i);
      }
      // A sequential read up to the block (readahead runs over it), then the block itself.
      for (let b = 16; b < target; b++) assert.deepEqual(await vol.read(b * BS, BS), data.subarray(b * BS, (b + 1) * BS));
      await new Promise((r) => setTimeout(r, 50));
      await assert.rejects(vol.read(target * BS, BS), (e) => isVbfsError(e, 'VBFS_CORRUPT'));
      await assert.rejects(vol.read(0, 64 * BS), (e) => isVbfsError(e, 'VBFS_CORRUPT'));
      for (const b of [0, target - 1, target + 1, 63]) assert.deepEqual(await vol.read(b * BS, BS), data.subarray(b * BS, (b + 1) * BS));
      const about = log.lines.filter((l) => l.includes(file));
      assert.equal(about.length, 1, log.lines.join('\n'));
      assert.ok(about[0]!.includes(`offset ${recOff}`), about[0]);
      assert.equal(vol.stats().corruptReads, 5);
    } finally {
      await vol.close();
      await store.close();
    }
  });
});
