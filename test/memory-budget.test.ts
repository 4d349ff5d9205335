import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';

/**
 * Issue 14, item 10: memory is bounded per store (per mount), not per volume. Six
 * volumes written and read at once keep their write buffers plus read caches
 * (accounted bytes, not RSS) within the store's budget, and give it all back
 * when idle.
 */
const MiB = 1024 * 1024;

describe('store memory budget', () => {
  it('six volumes written and read at once stay within memoryBytes; idle volumes give it back', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-mem-'));
    const budget = 120 * MiB;
    const store = await Store.open(dir, { memoryBytes: budget });
    try {
      const vols = [];
      for (let i = 0; i < 6; i++) {
        await store.createVolume(`v${i}`, { size: 64 * MiB, durability: 'async' });
        vols.push(await store.openVolume(`v${i}`, { flushIntervalMs: 1_000_000, idleTrimMs: 300 }));
      }
      let peak = 0;
      const sample = (): void => {
        peak = Math.max(peak, store.memoryInUse);
      };
      const per = 24 * MiB;
      await Promise.all(
        vols.map(async (v, i) => {
          const buf = Buffer.alloc(128 * 1024, i + 1);
          for (let off = 0; off < per; off += buf.length) {
            await v.write(off, buf);
            sample();
          }
          await v.flush();
        }),
      );
      // Reads fill the caches (readahead included).
      await Promise.all(
        vols.map(async (v, i) => {
          for (let off = 0; off < per; off += 1024 * 1024) {
            const got = await v.read(off, 1024 * 1024);
            assert.equal(got[0], i + 1);
            sample();
          }
        }),
      );
      assert.ok(peak > budget / 4, `the volumes did use memory (${peak} bytes)`);
      assert.ok(peak <= budget, `write buffers + caches peaked at ${(peak / MiB).toFixed(1)} MiB, budget ${budget / MiB} MiB`);
      // Idle: everything flushed, no I/O for idleTrimMs.
      const t0 = Date.now();
      while (store.memoryInUse > 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 100));
      assert.equal(store.memoryInUse, 0, 'idle volumes hold no write buffer or cache');
      // And they work after giving it back.
      await vols[0]!.write(0, Buffer.alloc(4096, 9));
      assert.equal((await vols[0]!.read(0, 4096))[0], 9);
      assert.equal((await vols[1]!.read(0, 4096))[0], 2);
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
