import * as assert from 'node:assert/strict';
import { Store } from '../src/store/store';
import type { VolumeTunables } from '../src/store/types';
import { SimFS } from './helpers/sim-fs';
import { ThrottledFileIO } from './helpers/throttled-file-io';

/**
 * A writer that outruns a slow disk waits for the flusher, but for about one
 * flush wave at a time, never for a whole write buffer (issue 14, item 9: one
 * FUSE write waited 55 s behind a 256 MiB flush). Measured in units that do not
 * depend on the machine: how many waves were committed, and how many bytes the
 * throttled disk wrote, while a single write() was blocked.
 */
const BS = 4096;
const KiB = 1024;
const TUNABLES: Partial<VolumeTunables> = {
  writeBufferBytes: 1024 * KiB, // 256 slots
  chunkBytes: 64 * KiB, // 15 blocks per chunk, 4 chunks (60 blocks) per wave: the buffer is 4.3 waves
  walSegmentBytes: 256 * KiB,
  flushBytes: 256 * KiB,
  flushIntervalMs: 1_000_000,
};

describe('slow disk: write latency is bounded by one flush wave', () => {
  for (const durability of ['async', 'relaxed'] as const) {
    it(`${durability}: a writer of 4x the write buffer never waits for more than one wave`, async () => {
      const sim = new SimFS();
      const disk = new ThrottledFileIO(sim, 0);
      let waves = 0;
      const store = await Store.open('/store', {
        fileIO: disk,
        failpoint: (name) => {
          if (name === 'flush:afterMapCommit') waves++;
        },
      });
      await store.createVolume('v', { size: 16 * 1024 * KiB, blockSize: BS, durability });
      const vol = await store.openVolume('v', TUNABLES);
      disk.bytesPerSec = 4e6;
      const buf = Buffer.alloc(16 * KiB, 0x5a);
      const total = 4 * (TUNABLES.writeBufferBytes as number);
      let maxWaves = 0;
      let maxDiskBytes = 0;
      let blocked = 0;
      for (let off = 0; off < total; off += buf.length) {
        buf.writeUInt32LE(off, 0);
        const w0 = waves;
        const d0 = disk.bytesWritten;
        await vol.write(off, buf);
        if (waves > w0) blocked++;
        maxWaves = Math.max(maxWaves, waves - w0);
        maxDiskBytes = Math.max(maxDiskBytes, disk.bytesWritten - d0);
      }
      disk.bytesPerSec = 0;
      assert.ok(waves >= 8, `the flusher ran (${waves} waves)`);
      assert.ok(blocked > 0, 'the writer did outrun the disk');
      // One wave in progress when the write arrived; before the fix a blocked write
      // waited for every wave of the flush (the whole buffer, 4-5 waves).
      assert.ok(maxWaves <= 1, `a write waited for ${maxWaves} waves`);
      // A wave's chunks (240 KiB) plus the WAL backlog the writer may leave (one wave).
      const wave = 4 * 64 * KiB;
      assert.ok(maxDiskBytes <= 2 * wave, `a write waited for ${maxDiskBytes} bytes of disk writes (one wave: ${wave})`);
      const back = await vol.read(total - buf.length, buf.length);
      assert.equal(back.readUInt32LE(0), total - buf.length);
      await store.close();
    });
  }
});
