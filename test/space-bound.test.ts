import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import { Rng, envInt } from './helpers/rng';

/**
 * Overwrite bound (issue 10): fill a 1 GiB volume, overwrite 3x its size in random
 * 4 KiB blocks plus a hot/cold pattern (10% of the blocks rewritten 20 times), with
 * background compaction at its default policy, then let it settle: the store holds
 * at most 1.6x the live bytes. Through the library on a tmpfs store (/dev/shm), as a
 * FUSE mount adds only the kernel round trips and would not fit the time budget.
 *
 * The suite runs it on 256 MiB (about a minute of CPU at 1 GiB, more than the suite
 * can spend on a shared machine); VBFS_BOUND_MIB=1024 runs the 1 GiB.
 */
const MIB = 1024 * 1024;
const VOLUME_MIB = envInt('VBFS_BOUND_MIB', 256);
const BS = 4096;
const IN_FLIGHT = 64;

async function writeAll(vol: Volume, blocks: Iterable<number>, rng: Rng): Promise<number> {
  const buf = rng.bytes(BS * 256);
  let n = 0;
  const inflight = new Set<Promise<void>>();
  for (const b of blocks) {
    // Distinct content per write (a slice at a moving offset), no allocation per write.
    const off = (n * 97) % 255;
    const p: Promise<void> = vol.write(b * BS, buf.subarray(off * BS, (off + 1) * BS)).then(() => {
      inflight.delete(p);
    });
    inflight.add(p);
    n++;
    if (inflight.size >= IN_FLIGHT) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return n;
}

function* randomBlocks(rng: Rng, blocks: number, count: number): Generator<number> {
  for (let i = 0; i < count; i++) yield rng.int(blocks);
}

describe('space reclaim: overwrite bound', function () {
  this.timeout(Math.max(300_000, VOLUME_MIB * 3000));
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  let dir = '';
  before(() => {
    dir = fs.mkdtempSync(path.join(base, 'vbfs-bound-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it(`${VOLUME_MIB} MiB filled, 3x random 4 KiB overwrites + 10% hot blocks x20: stored <= 1.6x live once compaction settles`, async () => {
    const store = await Store.open(dir);
    await store.createVolume('b', { size: VOLUME_MIB * MIB, durability: 'relaxed' });
    // Policy defaults (start 1.5x, target 1.25x, 25% chunks, 32 MiB/s while busy); only
    // checked more often than every 5 s, so the test waits less.
    const vol = await store.openVolume('b', { compactIntervalMs: Number(process.env.VBFS_BOUND_INTERVAL ?? 500) });
    try {
      const blocks = (VOLUME_MIB * MIB) / BS;
      const rng = new Rng(10);
      const t0 = Date.now();
      for (let off = 0; off < VOLUME_MIB * MIB; off += MIB) await vol.write(off, rng.bytes(MIB));
      await writeAll(vol, randomBlocks(rng, blocks, 3 * blocks), rng);
      const hot: number[] = [];
      for (let i = 0; i < blocks / 10; i++) hot.push(rng.int(blocks));
      for (let pass = 0; pass < 20; pass++) await writeAll(vol, hot, rng);
      await vol.flush();
      const tWrites = Date.now() - t0;
      const atEnd = vol.stats();
      // Settled: no compaction running and none started over two check intervals.
      let quiet = 0;
      let rounds = -1;
      const deadline = Date.now() + 120_000;
      while (quiet < 3 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 500));
        const s = vol.stats();
        quiet = s.compacting === 0 && s.compactRounds === rounds ? quiet + 1 : 0;
        rounds = s.compactRounds;
      }
      const s = vol.stats();
      const amp = s.storedBytes / s.liveBytes;
      process.stdout.write(
        `      writes ${(tWrites / 1000).toFixed(1)} s; at the end of the writes: stored ${(atEnd.storedBytes / MIB).toFixed(0)} MiB, ` +
          `live ${(atEnd.liveBytes / MIB).toFixed(0)} MiB (${atEnd.spaceAmplification.toFixed(2)}x); settled after ${((Date.now() - t0 - tWrites) / 1000).toFixed(1)} s: ` +
          `stored ${(s.storedBytes / MIB).toFixed(0)} MiB, live ${(s.liveBytes / MIB).toFixed(0)} MiB (${amp.toFixed(3)}x), ` +
          `${s.compactRounds} rounds, ${s.compactedChunks} chunks compacted, ${(s.compactBytesReclaimed / MIB).toFixed(0)} MiB reclaimed\n`,
      );
      assert.ok(s.liveBytes >= VOLUME_MIB * MIB, `live bytes ${s.liveBytes} below the volume's ${VOLUME_MIB} MiB (every block was written)`);
      assert.ok(amp <= 1.6, `stored ${s.storedBytes} bytes = ${amp.toFixed(3)}x the live ${s.liveBytes}`);
      // What the backend really holds agrees with the counters (the chunk files on disk).
      const objects = path.join(dir, 'objects');
      let onDisk = 0;
      const walk = (d: string): void => {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) {
          if (e.isDirectory()) walk(path.join(d, e.name));
          else if (d.endsWith('chunks')) onDisk += fs.statSync(path.join(d, e.name)).size;
        }
      };
      walk(objects);
      assert.ok(onDisk <= s.liveBytes * 1.6, `chunk files hold ${onDisk} bytes = ${(onDisk / s.liveBytes).toFixed(3)}x the live bytes`);
    } finally {
      await vol.close();
      await store.close();
    }
  });
});
