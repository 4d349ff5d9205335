import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { SimFS, type TearMode } from './helpers/sim-fs';
import { Rng, envInt, seedsFromEnv } from './helpers/rng';
import { runInWorker } from './helpers/in-worker';
import { BLOCK, MODE_OF_SEED, SEEDS_DEFAULT, SIZE, TEARS, openStore, walOf, type SweepResult } from './helpers/crash-runner';

/**
 * Crash simulation: see helpers/crash-runner.ts for what is checked after each
 * simulated power loss. Each seed's sweep runs in a worker thread with a deadline,
 * so an engine that spins or hangs fails with the crash point it was running.
 *
 * Replay: VBFS_SEED=<seed> [VBFS_CRASH_TEAR=random|reorder] [VBFS_CRASH_AT=<mutating op> | VBFS_CRASH_FAILPOINT=<name>:<nth>]
 * Scale: VBFS_CRASH_POINTS (random crash points per seed and tear mode, default 80), VBFS_CRASH_OPS (workload length).
 *
 * Each sweep runs with both power-cut models (TEARS): 'random' (the unsynced tail torn
 * in order) and 'reorder' (every page of every unsynced write lands or not, in any
 * order, as real disks do). Every planned crash must fire. The title of each sweep
 * ends with the number of crashes it ran, and the totals per durability mode and
 * tear mode are printed at the end.
 */
const POINTS = envInt('VBFS_CRASH_POINTS', 80);
const SEEDS = seedsFromEnv(SEEDS_DEFAULT);
const DEADLINE_MS = envInt('VBFS_CRASH_DEADLINE_MS', 120_000);
const RUNNER = path.join(__dirname, 'helpers', 'crash-runner.js');
const ONLY_TEAR = process.env.VBFS_CRASH_TEAR || null;
/** Seeds (and tear modes) the sweeps also run on an encrypted volume: 13 batched + lz4, 18 relaxed. */
const ENCRYPTED_SWEEPS: ReadonlyArray<readonly [number, TearMode]> = [
  [13, 'reorder'],
  [18, 'random'],
];

describe('crash simulation (SimFS power loss)', function () {
  this.timeout(DEADLINE_MS + 10_000);
  const onlyAt = process.env.VBFS_CRASH_AT ? Number(process.env.VBFS_CRASH_AT) : null;
  const onlyFp = process.env.VBFS_CRASH_FAILPOINT || null;
  const tears = TEARS.filter((t) => ONLY_TEAR === null || t === ONLY_TEAR);
  if (tears.length === 0) throw new Error(`VBFS_CRASH_TEAR=${ONLY_TEAR}: not one of ${TEARS.join(', ')}`);
  /** Crashes run per "durability mode, tear mode", for the summary. */
  const totals = new Map<string, number>();
  const count = (ctx: Mocha.Context, key: string, r: SweepResult): void => {
    totals.set(key, (totals.get(key) ?? 0) + r.crashes);
    if (ctx.test) ctx.test.title += `: ${r.crashes} crash points`;
  };

  for (const tear of tears) {
    for (const seed of SEEDS) {
      const mode = MODE_OF_SEED[seed % MODE_OF_SEED.length];
      const key = `${mode}, ${walOf(seed)}, ${tear}`;
      const replay = `VBFS_SEED=${seed} VBFS_CRASH_TEAR=${tear}`;
      if (onlyFp === null) {
        it(`seed ${seed} (${mode}, ${walOf(seed)}, tear ${tear}): crash at ${onlyAt !== null ? `op ${onlyAt}` : `${POINTS} seeded op numbers`} (${replay})`, async function () {
          count(this, key, await runInWorker<SweepResult>(RUNNER, 'crashSweep', [seed, POINTS, onlyAt, tear, false], DEADLINE_MS));
        });
      }
      if (onlyAt === null) {
        it(`seed ${seed} (${mode}, ${walOf(seed)}, tear ${tear}): crash at the 1st, 2nd, middle and last hit of every named failpoint${onlyFp ? ` (only ${onlyFp})` : ''} (${replay})`, async function () {
          count(this, key, await runInWorker<SweepResult>(RUNNER, 'failpointSweep', [seed, onlyFp, tear, false], DEADLINE_MS));
        });
      }
    }
  }

  // Encrypted volumes: two seeds (one lz4, different modes), both sweeps, one tear mode each.
  for (const [seed, tear] of ENCRYPTED_SWEEPS) {
    if (!tears.includes(tear)) continue;
    const mode = MODE_OF_SEED[seed % MODE_OF_SEED.length];
    const key = `${mode}, ${walOf(seed)}, ${tear}, encrypted`;
    const replay = `VBFS_SEED=${seed} VBFS_CRASH_TEAR=${tear}`;
    if (onlyFp === null) {
      it(`seed ${seed} (${mode}, ${walOf(seed)}, tear ${tear}), encrypted: crash at ${onlyAt !== null ? `op ${onlyAt}` : `${POINTS} seeded op numbers`} (${replay})`, async function () {
        count(this, key, await runInWorker<SweepResult>(RUNNER, 'crashSweep', [seed, POINTS, onlyAt, tear, true], DEADLINE_MS));
      });
    }
    if (onlyAt === null) {
      it(`seed ${seed} (${mode}, ${walOf(seed)}, tear ${tear}), encrypted: crash at the 1st, 2nd, middle and last hit of every named failpoint${onlyFp ? ` (only ${onlyFp})` : ''} (${replay})`, async function () {
        count(this, key, await runInWorker<SweepResult>(RUNNER, 'failpointSweep', [seed, onlyFp, tear, true], DEADLINE_MS));
      });
    }
  }

  // Encrypted, writes sealed in the crypto worker (acknowledged before their WAL
  // append): fewer points, as each volume open starts a worker thread.
  if (onlyFp === null && tears.includes('reorder')) {
    const seed = 13;
    const points = Math.min(POINTS, envInt('VBFS_CRASH_WORKER_POINTS', 6));
    const replay = `VBFS_SEED=${seed} VBFS_CRASH_TEAR=reorder`;
    it(`seed ${seed} (batched, ${walOf(seed)}, tear reorder), encrypted, sealed in the crypto worker: crash at ${onlyAt !== null ? `op ${onlyAt}` : `${points} seeded op numbers`} (${replay})`, async function () {
      count(
        this,
        'batched, reorder, encrypted, worker',
        await runInWorker<SweepResult>(RUNNER, 'crashSweep', [seed, points, onlyAt, 'reorder', { sealBlocks: 2 }], DEADLINE_MS),
      );
    });
  }

  after(() => {
    if (totals.size === 0) return;
    const lines = [...totals].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `      ${k}: ${n}`);
    process.stdout.write(`    crash points run (durability mode, WAL, tear mode):\n${lines.join('\n')}\n`);
  });

  for (const tear of tears) {
    it(`a crash at any step of createVolume or deleteVolume leaves the volume whole or gone (tear ${tear})`, async function () {
      count(this, `lifecycle, ${tear}`, await runInWorker<SweepResult>(RUNNER, 'lifecycleCrashSweep', [SEEDS[0] ?? 11, tear], DEADLINE_MS));
    });
  }

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

  it('names failpoints in the flush and the checkpoint path, around the seq reservation and between the compactor steps', () =>
    runInWorker(RUNNER, 'checkFailpointNames', [SEEDS[0] ?? 11], DEADLINE_MS));
});
