import * as assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { S3Backend, type S3BackendOptions, type S3Stats } from '../src/backend/s3-backend';
import { isVbfsError } from '../src/errors';
import { Store } from '../src/store/store';
import type { Logger } from '../src/types';
import { FaultProxy, type Fault } from './helpers/fault-proxy';
import { requireRgw, rgwOptions, type RgwCluster } from './helpers/rgw';
import { Rng, envInt } from './helpers/rng';
import { BLOCK, BLOCKS, KILL_LEASE_TTL_MS, KILL_TUNABLES, decodeBlock, newer, writeOf, type Version } from './helpers/s3-kill-model';

const diagLogger = (tag: string): Logger | undefined =>
  process.env['VBFS_S3_KILL_LOG']
    ? {
        error: (m, meta) => console.error(`[${tag}] ERROR ${m} ${meta ? JSON.stringify(meta) : ''}`),
        warn: (m, meta) => console.error(`[${tag}] WARN ${m} ${meta ? JSON.stringify(meta) : ''}`),
        info: (m, meta) => console.error(`[${tag}] info ${m} ${meta ? JSON.stringify(meta) : ''}`),
        debug: () => undefined,
      }
    : undefined;

const CHILD = path.join(__dirname, 'helpers', 's3-kill-child.js');

type Msg =
  | { type: 'open' | 'flushing' | 'overlap' | 'done' }
  | { type: 'ack'; writes: number[] }
  | { type: 'closed'; stats: S3Stats }
  | { type: 'error'; code: string; message: string };

/**
 * kill -9 in the middle of flushes to a real Ceph RGW, nothing acknowledged lost. A
 * child process writes stamped blocks to a bucket volume (batched durability) and
 * reports what each fsync acknowledged; it is SIGKILLed at a seeded moment after a
 * seeded number of flushes reached a chunk PUT. Each round the store is opened again
 * from the SAME directory (the WAL is local): every block must hold the version the
 * last acknowledged write gave it or a newer one that was written there, never torn,
 * misplaced or older bytes; what a reopen shows must survive the next crash. After
 * each round's clean close the volume is opened from a NEW, empty directory (the
 * bucket alone) and must read the same. A last round runs through a fault proxy that
 * answers 503/500 and resets connections during the flushes: retries lose nothing,
 * the clean close reaches the bucket and fsck finds no error (no duplicate or
 * conflicting chunk). A reopen of the test's own whose lease runs out before its flush
 * (a loaded machine) is fenced and flushes nothing: it is retried, and counted. A
 * writer that loses its own lease before its kill stops as a fenced one (reported).
 *
 * VBFS_S3_KILL_SEED=N replays a seed; VBFS_S3_KILL_ROUNDS the number of kills;
 * VBFS_S3_KILL_LOG=1 prints the warnings and errors of every store (children too).
 */
describe('kill -9 during S3 flushes (Ceph RGW): nothing acknowledged lost', function () {
  // Five kills, each waiting out a 2 s lease, then a proxy round: ~2 min here, more on a loaded machine.
  this.timeout(600_000);
  let rgw: RgwCluster;
  const dirs: string[] = [];
  const tmp = (): string => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-s3kill-'));
    dirs.push(d);
    return d;
  };

  before(async function () {
    this.timeout(300_000);
    rgw = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.close();
  });
  after(() => {
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });

  /** The newest version each block must hold at least (acknowledged, or seen after a reopen). */
  type Floor = (Version | null)[];
  /**
   * One per test, passed around, never shared: a test that mocha timed out keeps running
   * in the background (its children acknowledge writes), and with one shared floor its
   * acknowledgements were checked against the next test's volume (seen under load:
   * "block 102 holds null, older than acknowledged" in the remote test, a write of the
   * timed-out test's round 1).
   */
  const newFloor = (): Floor => new Array<Version | null>(BLOCKS).fill(null);

  function acknowledge(floor: Floor, seed: number, round: number, writes: number[]): void {
    for (const i of writes) {
      const w = writeOf(seed, round, i);
      for (let b = w.block; b < w.block + w.blocks; b++) if (newer({ round, i }, floor[b] ?? null)) floor[b] = { round, i };
    }
  }

  /**
   * The lease TTL of the test's own reopens. Longer than the killed writers' (a reopen
   * waits for theirs, not for its own): on a loaded machine a 2 s lease runs out
   * within one read of the volume, and that reopen then has to be retried.
   */
  const VERIFY_LEASE_TTL_MS = 10_000;
  /** Reopens whose own lease ran out before their flush (a loaded machine), retried from the same directory. */
  let leaseLosses = 0;

  /**
   * Open `dir`, read the whole volume, flush it to the bucket and close. The flush is
   * explicit: a volume whose lease ran out is fenced, and its close then flushes
   * nothing (it fails with VBFS_LEASE_LOST when there was something to flush); what
   * it read stays in this directory's WAL only. That
   * open is retried: no other writer came in between, so the same directory replays
   * the same WAL (a new directory retries from the bucket, which it changed nothing in).
   */
  async function readAll(dir: string, backend: S3BackendOptions, tag: string): Promise<Buffer> {
    for (let attempt = 1; ; attempt++) {
      const store = await Store.open(dir, { backend: new S3Backend(backend), metadata: 'backend', leaseTtlMs: VERIFY_LEASE_TTL_MS, logger: diagLogger(tag) });
      try {
        // A killed writer still holds the volume's lease in the bucket until its TTL
        // runs out (another machine cannot tell a dead holder from a slow one): wait for it.
        let vol: Awaited<ReturnType<Store['openVolume']>> | null = null;
        for (const deadline = Date.now() + 6 * KILL_LEASE_TTL_MS + VERIFY_LEASE_TTL_MS + 10_000; vol === null;) {
          try {
            vol = await store.openVolume('v', KILL_TUNABLES);
          } catch (err) {
            if (!isVbfsError(err, 'VBFS_LEASE_HELD') || Date.now() > deadline) throw err;
            await new Promise((r) => setTimeout(r, 500));
          }
        }
        const all = await vol.read(0, BLOCKS * BLOCK);
        await vol.flush();
        await vol.close();
        return all;
      } catch (err) {
        if (!isVbfsError(err, 'VBFS_LEASE_LOST') || attempt >= 5) throw err;
        leaseLosses++;
      } finally {
        // After a lost lease the close fails the same way (already counted above).
        await store.close().catch((err: unknown) => {
          if (!isVbfsError(err, 'VBFS_LEASE_LOST')) throw err;
        });
      }
    }
  }

  /** Open `dir`, check every block against the floor, raise the floor to what is seen. */
  async function verify(floor: Floor, seed: number, rounds: number, dir: string, backend: S3BackendOptions, exact: boolean): Promise<{ newerThanAck: number }> {
    const all = await readAll(dir, backend, `verify ${exact ? 'new' : 'same'} r${rounds}`);
    let newerThanAck = 0;
    for (let b = 0; b < BLOCKS; b++) {
      const got = decodeBlock(seed, all.subarray(b * BLOCK, (b + 1) * BLOCK), b, rounds);
      if (typeof got === 'string') assert.fail(got);
      const want = floor[b] ?? null;
      if (newer(want, got)) assert.fail(`block ${b}: holds ${JSON.stringify(got)}, older than acknowledged ${JSON.stringify(want)} (seed ${seed})`);
      if (exact) assert.deepEqual(got, want, `block ${b} (seed ${seed})`);
      if (newer(got, want)) {
        newerThanAck++;
        floor[b] = got; // seen after a reopen: must survive the next crash
      }
    }
    return { newerThanAck };
  }

  interface RoundResult {
    acked: number;
    flushesSeen: number;
    /** Map deltas committed while the next wave's chunk PUTs were in flight. */
    overlaps: number;
    killedInFlush: boolean;
    /** The killed writer lost its own (2 s) lease first on a loaded machine: fenced, it stopped like a killed one. */
    fenced: boolean;
    stats?: S3Stats;
  }

  /**
   * One child: until the kill (killAfterFlush set) or its clean close. With
   * killAfterOverlap, the kill comes that many overlapped wave commits in (a wave's map
   * delta committed while the next wave's chunk PUTs were in flight: the window that
   * overlapping waves open), or at flush killAfterFlush if that comes first.
   */
  function runChild(
    floor: Floor,
    seed: number,
    round: number,
    dir: string,
    backend: S3BackendOptions,
    opts: {
      writes: number;
      killAfterFlush?: number;
      killAfterOverlap?: number;
      killDelayMs?: number;
      onFlush?: (n: number) => void;
      durability?: 'remote';
    },
  ): Promise<RoundResult> {
    const args = { dir, backend, seed, round, writes: opts.writes, closeAtEnd: opts.killAfterFlush === undefined, durability: opts.durability };
    const child = fork(CHILD, [JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
    const res: RoundResult = { acked: 0, flushesSeen: 0, overlaps: 0, killedInFlush: false, fenced: false };
    let killing = false;
    const killSoon = (): void => {
      if (killing) return;
      killing = true;
      setTimeout(() => {
        res.killedInFlush = child.exitCode === null;
        child.kill('SIGKILL');
      }, opts.killDelayMs ?? 0);
    };
    return new Promise((resolve, reject) => {
      child.on('message', (m: Msg) => {
        switch (m.type) {
          case 'ack':
            acknowledge(floor, seed, round, m.writes);
            res.acked += m.writes.length;
            return;
          case 'flushing':
            // Count flushes from the first acknowledgement on: under load the first
            // flushes can come before any ack reaches us, and a kill then proves nothing.
            if (res.acked === 0) return;
            res.flushesSeen++;
            opts.onFlush?.(res.flushesSeen);
            if (opts.killAfterFlush !== undefined && res.flushesSeen === opts.killAfterFlush) killSoon();
            return;
          case 'overlap':
            if (res.acked === 0) return;
            res.overlaps++;
            if (opts.killAfterOverlap !== undefined && res.overlaps === opts.killAfterOverlap) killSoon();
            return;
          case 'closed':
            res.stats = m.stats;
            return;
          case 'error':
            // A writer that was to be killed anyway and lost its lease first (renewals
            // late on a loaded machine) is fenced: it stops writing, like a killed one,
            // and what it acknowledged must be there all the same.
            if (m.code === 'VBFS_LEASE_LOST' && opts.killAfterFlush !== undefined) {
              res.fenced = true;
              return;
            }
            reject(new Error(`child failed (${m.code}): ${m.message}`));
            return;
          default:
            return;
        }
      });
      child.on('exit', (code, signal) => {
        if (opts.killAfterFlush !== undefined ? signal === 'SIGKILL' || res.fenced : code === 0) resolve(res);
        else reject(new Error(`child ended with ${code ?? signal} (seed ${seed}, round ${round})`));
      });
    });
  }

  it('SIGKILL at seeded moments of flushes to the bucket; reopen from the same directory and from a new one; then a round through 503s and resets', async () => {
    const seed = envInt('VBFS_S3_KILL_SEED', Date.now() % 100_000);
    const kills = envInt('VBFS_S3_KILL_ROUNDS', 5);
    const rng = new Rng(seed);
    const floor = newFloor();
    const backend = rgwOptions(rgw);
    const dir = tmp();
    const setup = await Store.open(dir, { backend: new S3Backend(backend), metadata: 'backend' });
    await setup.createVolume('v', { size: BLOCKS * BLOCK, durability: 'batched' });
    await setup.close();

    const report: string[] = [];
    let round = 0;
    for (; round < kills; round++) {
      // Even rounds (flush waves of one chunk, killTunables): killed at an overlapped wave
      // commit, or at flush 60 if none comes; odd rounds at a seeded flush.
      const atOverlap = round % 2 === 0 ? 1 + rng.int(4) : undefined;
      const killAfterFlush = atOverlap !== undefined ? 60 : 1 + rng.int(8);
      const killDelayMs = rng.int(atOverlap !== undefined ? 20 : 60);
      const r = await runChild(floor, seed, round, dir, backend, { writes: 100_000, killAfterFlush, killAfterOverlap: atOverlap, killDelayMs });
      assert.ok(r.killedInFlush || r.fenced, `round ${round}: the child was still running at the kill (seed ${seed})`);
      // (A writer fenced by its own lease before its first acknowledgement proves less, but is checked all the same.)
      assert.ok(r.acked > 0 || r.fenced, `round ${round}: nothing acknowledged before the kill (seed ${seed})`);
      if (process.env['VBFS_S3_KILL_LOG'])
        console.error(`round ${round}: ${r.fenced ? 'fenced' : 'killed'}, ${r.acked} acked, ${r.flushesSeen} flushes, ${r.overlaps} overlaps`);
      // Same directory: the local WAL replays what the bucket did not get yet.
      const same = await verify(floor, seed, round, dir, backend, false);
      // New, empty directory: after that clean close the bucket alone holds it all.
      await verify(floor, seed, round, tmp(), backend, true);
      report.push(
        `round ${round}: ${r.fenced ? 'fenced (lost its lease) before being killed' : 'killed'} ${killDelayMs} ms after ${atOverlap !== undefined ? `overlapped commit ${atOverlap} (or flush ${killAfterFlush})` : `flush ${killAfterFlush}`}, ${r.flushesSeen} flushes and ${r.overlaps} overlapped wave commits seen, ${r.acked} writes acknowledged, ${same.newerThanAck} blocks newer than acknowledged`,
      );
    }

    // Faults during the flushes: 503s, 500s, resets before and after the request took effect.
    const proxy = await FaultProxy.start(rgw.endpoint);
    try {
      const faults: Fault[] = ['503', 'reset', 'resetAfterUpstream', '500AfterUpstream', '500'];
      const viaProxy: S3BackendOptions = { ...backend, endpoint: proxy.url, backoffBaseMs: 10, backoffMaxMs: 100 };
      const r = await runChild(floor, seed, round, dir, viaProxy, {
        writes: 400,
        onFlush: (n) => proxy.next(faults[n % faults.length] as Fault, 1 + (n % 2)),
      });
      assert.ok(r.stats && r.stats.retries > 0, 'the proxy made the flushes retry');
      assert.equal(r.stats.gaveUp, 0);
      assert.equal(r.acked, 400);
      report.push(`proxy round: ${r.flushesSeen} flushes, ${proxy.counts.faulted} faults injected, ${r.stats.retries} retries`);
    } finally {
      await proxy.close();
    }
    // Everything was acknowledged and closed: exactly the newest writes, from the bucket alone.
    await verify(floor, seed, round, dir, backend, true);
    const fresh = tmp();
    await verify(floor, seed, round, fresh, backend, true);
    const check = await Store.open(fresh, { backend: new S3Backend(backend), metadata: 'backend' });
    try {
      const fsck = await check.fsckVolume('v');
      assert.equal(fsck.errors, 0, JSON.stringify(fsck.problems));
      report.push(`fsck: ${fsck.chunks} chunks, ${fsck.orphanChunks} orphan, ${fsck.warnings} warnings`);
    } finally {
      await check.close();
    }
    report.push(`reopens that lost their own lease and were retried: ${leaseLosses}`);
    console.log(`      seed ${seed}\n      ${report.join('\n      ')}`);
  });

  it('remote durability: SIGKILL at seeded moments of flushes through a proxy that answers 503/500 and resets; each time the local directory is lost: the bucket alone has every acknowledged write', async () => {
    const seed = envInt('VBFS_S3_KILL_SEED', Date.now() % 100_000);
    const kills = envInt('VBFS_S3_KILL_ROUNDS', 5);
    const rng = new Rng(seed + 1);
    const floor = newFloor();
    const backend = rgwOptions(rgw); // a fresh prefix: a volume of its own
    const setup = await Store.open(tmp(), { backend: new S3Backend(backend), metadata: 'backend' });
    await setup.createVolume('v', { size: BLOCKS * BLOCK, durability: 'remote' });
    await setup.close();
    const proxy = await FaultProxy.start(rgw.endpoint);
    const report: string[] = [];
    try {
      const faults: Fault[] = ['503', 'reset', 'resetAfterUpstream', '500AfterUpstream', '500'];
      const viaProxy: S3BackendOptions = { ...backend, endpoint: proxy.url, backoffBaseMs: 10, backoffMaxMs: 100 };
      for (let round = 0; round < kills; round++) {
        const killAfterFlush = 1 + rng.int(8);
        const killDelayMs = rng.int(60);
        // Each round on a new machine: the last one's directory (its WAL) is gone.
        const r = await runChild(floor, seed, round, tmp(), viaProxy, {
          writes: 100_000,
          killAfterFlush,
          killDelayMs,
          durability: 'remote',
          onFlush: (n) => proxy.next(faults[(n + round) % faults.length] as Fault, 1 + (n % 2)),
        });
        assert.ok(r.killedInFlush || r.fenced, `round ${round}: the child was still running at the kill (seed ${seed})`);
        // (A writer fenced by its own lease before its first acknowledgement proves less, but is checked all the same.)
        assert.ok(r.acked > 0 || r.fenced, `round ${round}: nothing acknowledged before the kill (seed ${seed})`);
        if (process.env['VBFS_S3_KILL_LOG'])
          console.error(`remote round ${round}: ${r.fenced ? 'fenced' : 'killed'}, ${r.acked} acked, ${r.flushesSeen} flushes, ${r.overlaps} overlaps`);
        const seen = await verify(floor, seed, round, tmp(), backend, false);
        report.push(
          `remote round ${round}: ${r.fenced ? 'fenced (lost its lease) before being killed' : 'killed'} ${killDelayMs} ms after flush ${killAfterFlush}, ${r.acked} writes acknowledged, ${r.overlaps} overlapped wave commits, ${seen.newerThanAck} blocks newer than acknowledged`,
        );
      }
      report.push(`remote: ${proxy.counts.faulted} faults injected`);
      assert.ok(proxy.counts.faulted > 0, 'the proxy injected faults');
    } finally {
      await proxy.close();
    }
    console.log(`      seed ${seed}\n      ${report.join('\n      ')}`);
  });
});
