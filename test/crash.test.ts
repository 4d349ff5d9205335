import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { SimFS } from './helpers/sim-fs';
import { Rng, envInt, seedsFromEnv } from './helpers/rng';
import { runInWorker } from './helpers/in-worker';
import { BLOCK, MODE_OF_SEED, SEEDS_DEFAULT, SIZE, openStore } from './helpers/crash-runner';

/**
 * Crash simulation: see helpers/crash-runner.ts for what is checked after each
 * simulated power loss. Each seed's sweep runs in a worker thread with a deadline,
 * so an engine that spins or hangs fails with the crash point it was running.
 *
 * Replay: VBFS_SEED=<seed> [VBFS_CRASH_AT=<mutating op> | VBFS_CRASH_FAILPOINT=<name>:<nth>]
 * Scale: VBFS_CRASH_POINTS (random crash points per seed, default 80), VBFS_CRASH_OPS (workload length).
 */
const POINTS = envInt('VBFS_CRASH_POINTS', 80);
const SEEDS = seedsFromEnv(SEEDS_DEFAULT);
const DEADLINE_MS = envInt('VBFS_CRASH_DEADLINE_MS', 120_000);
const RUNNER = path.join(__dirname, 'helpers', 'crash-runner.js');

describe('crash simulation (SimFS power loss)', function () {
  this.timeout(DEADLINE_MS + 10_000);
  const onlyAt = process.env.VBFS_CRASH_AT ? Number(process.env.VBFS_CRASH_AT) : null;
  const onlyFp = process.env.VBFS_CRASH_FAILPOINT || null;

  for (const seed of SEEDS) {
    const mode = MODE_OF_SEED[seed % MODE_OF_SEED.length];
    if (onlyFp === null) {
      it(`seed ${seed} (${mode}): crash at ${onlyAt !== null ? `op ${onlyAt}` : `${POINTS} seeded op numbers`} (VBFS_SEED=${seed})`, () =>
        runInWorker(RUNNER, 'crashSweep', [seed, POINTS, onlyAt], DEADLINE_MS));
    }
    if (onlyAt === null) {
      it(`seed ${seed} (${mode}): crash at every named failpoint${onlyFp ? ` (only ${onlyFp})` : ''} (VBFS_SEED=${seed})`, () =>
        runInWorker(RUNNER, 'failpointSweep', [seed, onlyFp], DEADLINE_MS));
    }
  }

  it('a crash at any step of createVolume or deleteVolume leaves the volume whole or gone', () =>
    runInWorker(RUNNER, 'lifecycleCrashSweep', [SEEDS[0] ?? 11], DEADLINE_MS));

  it('a store and volume created on an empty disk survive power loss together with fsynced data', async () => {
    const sim = new SimFS();
    const store = await openStore(sim);
    await store.createVolume('c', { size: SIZE, blockSize: BLOCK, durability: 'strict' });
    const vol = await store.openVolume('c');
    const data = new Rng(3).bytes(4 * BLOCK);
    await vol.write(0, data);
    await vol.fsync();
    sim.crashNow();
    await store.close().catch(() => {});
    const after = sim.afterCrash(new Rng(1), 'none');
    const again = await openStore(after);
    const names = (await again.listVolumes()).map((v) => v.name);
    assert.deepEqual(names, ['c'], `a created volume with fsynced data vanished after power loss (durable files: ${after.files().join(', ') || 'none'})`);
    const v2 = await again.openVolume('c');
    assert.deepEqual(await v2.read(0, data.length), data);
    await again.close();
  });

  it('names failpoints in the flush and the checkpoint path', () => runInWorker(RUNNER, 'checkFailpointNames', [SEEDS[0] ?? 11], DEADLINE_MS));
});
