import * as assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { S3Backend, type S3BackendOptions } from '../src/backend/s3-backend';
import { acquireLease, beginEpoch, createFenced, decodeLease, encodeLease, type Lease } from '../src/backend/lease';
import { decodeEpochRecord, deltaKey, epochRecordKey, leaseKey, planReplay, sortListing } from '../src/backend/fencing';
import { VbfsError, isVbfsError } from '../src/errors';
import { MemoryBackend } from '../src/backend/memory-backend';
import type { FileHandle, OpenMode } from '../src/io/file-io';
import { NodeFileIO } from '../src/io/node-file-io';
import { PassThroughFileIO } from '../src/io/pass-through-file-io';
import { Store } from '../src/store/store';
import { pattern, rejectsWith } from './backend-suite';
import { FaultProxy } from './helpers/fault-proxy';
import { alive, requireRgw, rgwOptions, type RgwCluster } from './helpers/rgw';

/**
 * The cross-machine lease (src/backend/lease.ts) and the fencing rule
 * (src/backend/fencing.ts) against the real RGW, with short TTLs: a takeover needs
 * the server's clock to show TTL + 1 s since the last renewal (Last-Modified and
 * Date are whole seconds), so each one costs a few seconds.
 */
const CHILD = path.join(__dirname, 'helpers', 'lease-child.js');

describe('lease and fencing against RGW', function () {
  this.timeout(30_000);
  let rgw: RgwCluster;
  const backends: S3Backend[] = [];
  const leases: Lease[] = [];
  let proxy: FaultProxy | null = null;

  before(async function () {
    this.timeout(180_000);
    rgw = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.close();
  });
  afterEach(async () => {
    for (const l of leases.splice(0)) await l.release().catch(() => undefined);
    for (const be of backends.splice(0)) await be.close();
    await proxy?.close();
    proxy = null;
  });

  /** A backend on a fresh prefix, or on `like`'s prefix (another client of the same store). */
  function backend(like?: S3Backend, extra: Partial<S3BackendOptions> = {}): S3Backend {
    const opts = rgwOptions(rgw, extra);
    if (like) opts.prefix = like.prefix;
    const be = new S3Backend(opts);
    backends.push(be);
    return be;
  }
  async function acquire(be: S3Backend, vol: string, opts: Parameters<typeof acquireLease>[2] = {}): Promise<Lease> {
    const l = await acquireLease(be, vol, { ttlMs: 2000, ...opts });
    leases.push(l);
    return l;
  }
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

  it('acquire takes epoch 1, renews in the background, and release lets the next taker in at once with epoch 2', async () => {
    const be = backend();
    // A TTL long enough that a loaded machine's slow requests do not cost the lease:
    // this test is about renewal, not about the margin.
    const a = await acquire(be, 'vol', { ttlMs: 4000, holder: { host: 'host-a', pid: 4242 } });
    assert.equal(a.epoch, 1);
    assert.ok(a.live);
    await sleep(4600); // past the TTL: only renewals keep it
    assert.ok(a.live, 'renewed in the background');
    assert.ok(a.renewals >= 2, `renewals: ${a.renewals}`);
    const rec = decodeLease(await be.get(leaseKey('vol', 1)), 'lease');
    // A renewal may be in flight while we read: the object holds the last one or the one before.
    assert.ok(rec.renewals >= 1 && rec.renewals <= a.renewals && rec.renewals >= a.renewals - 1, `object ${rec.renewals}, holder ${a.renewals}`);
    assert.deepEqual([rec.host, rec.pid, rec.released], ['host-a', 4242, false]);
    await a.release();
    assert.equal(decodeLease(await be.get(leaseKey('vol', 1)), 'lease').released, true);
    assert.throws(
      () => a.assertLive(),
      (e: VbfsError) => e.code === 'VBFS_LEASE_LOST',
    );
    const t0 = Date.now();
    const b = await acquire(backend(be), 'vol');
    assert.equal(b.epoch, 2);
    assert.ok(Date.now() - t0 < 3000, 'a released lease is free without waiting for its TTL (4 s)');
  });

  it('a second acquire is refused with VBFS_LEASE_HELD naming the holder (host, pid, since)', async () => {
    const be = backend();
    const since = '2026-11-27T04:00:00.000Z';
    const a = await acquire(be, 'vol', { holder: { host: 'machine-a', pid: 1234, since } });
    const err = (await rejectsWith(() => acquireLease(backend(be), 'vol', { ttlMs: 2000 }), 'VBFS_LEASE_HELD')) as VbfsError;
    assert.deepEqual([err.details['host'], err.details['pid'], err.details['since'], err.details['epoch']], ['machine-a', 1234, since, 1]);
    assert.match(err.message, /machine-a.*1234.*2026-11-27T04:00:00/);
    assert.ok(a.live);
    assert.deepEqual(sortListing('vol', await be.list('vol/')).leaseEpochs, [1], 'the refused taker created nothing');
  });

  it('racing takers: exactly one wins, on a fresh volume and on an expired lease', async () => {
    const be = backend();
    const race = async (): Promise<{ won: Lease[]; refused: VbfsError[] }> => {
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, (_, i) => acquireLease(backend(be), 'vol', { ttlMs: 1000, holder: { host: `racer-${i}` } })),
      );
      const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as VbfsError] : []));
      for (const e of refused) assert.ok(isVbfsError(e, 'VBFS_LEASE_HELD'), String(e));
      return { won, refused };
    };
    const first = await race();
    assert.equal(first.won.length, 1, 'one winner on a fresh volume');
    assert.equal(first.won[0]!.epoch, 1);
    // The winner stops renewing, as if it crashed (release() would free it at once).
    first.won[0]!.abandon();
    await sleep(2300); // TTL 1 s + the server clock's 1 s granularity
    const second = await race();
    leases.push(...second.won);
    assert.equal(second.won.length, 1, 'one winner of the takeover');
    assert.equal(second.won[0]!.epoch, 2);
    for (const e of second.refused) assert.equal(e.details['epoch'], 2, 'losers name the winner');
    assert.deepEqual(sortListing('vol', await be.list('vol/')).leaseEpochs, [1, 2]);
  });

  it('a holder that stops renewing fences itself at its TTL; a taker gets epoch 2 only after that, by the server clock', async () => {
    const be = backend();
    proxy = await FaultProxy.start(rgw.endpoint);
    const viaProxy = backend(be, { endpoint: proxy.url, attemptTimeoutMs: 300, operationTimeoutMs: 600, backoffBaseMs: 20, backoffMaxMs: 100 });
    const a = await acquire(viaProxy, 'vol', { ttlMs: 2000 });
    let lostAt = 0;
    let lostErr: VbfsError | null = null;
    a.onLost((e) => {
      lostAt = Date.now();
      lostErr = e;
    });
    await sleep(800); // one renewal through
    proxy.outage = 'blackhole'; // partitioned from the bucket
    const cut = Date.now();
    // While A may still be live, a taker is refused.
    await rejectsWith(() => acquireLease(backend(be), 'vol', { ttlMs: 2000 }), 'VBFS_LEASE_HELD');
    const b = await acquire(backend(be), 'vol', { ttlMs: 2000, waitMs: 10_000 });
    const takenAt = Date.now();
    assert.equal(b.epoch, 2);
    assert.ok(lostAt > 0 && lostErr !== null, 'A learned it lost the lease');
    assert.equal((lostErr as VbfsError).code, 'VBFS_LEASE_LOST');
    assert.equal((lostErr as VbfsError).details['reason'], 'expired');
    assert.ok(lostAt < takenAt, `A stopped (${lostAt - cut} ms after the cut) before B took over (${takenAt - cut} ms)`);
    assert.ok(lostAt - cut <= 2000, `A fenced itself within its TTL of its last renewal (${lostAt - cut} ms after the cut)`);
    assert.throws(
      () => a.assertLive(),
      (e: VbfsError) => e.code === 'VBFS_LEASE_LOST',
    );
    // A fenced writer's create is refused before it reaches the bucket.
    proxy.outage = null;
    await rejectsWith(() => createFenced(viaProxy, a, 'vol/chunks/00000001', pattern(10, 1)), 'VBFS_LEASE_LOST');
    await rejectsWith(() => be.get('vol/chunks/00000001'), 'VBFS_NOT_FOUND');
  });

  it('a holder that sees a newer epoch at its next renewal is fenced (superseded), and createFenced on a taken key says so', async () => {
    const be = backend();
    const a = await acquire(be, 'vol', { ttlMs: 1500 });
    // Another writer's epoch 2 appears (a taker that judged by its server's clock).
    const other = { version: 1 as const, epoch: 2, ttlMs: 1500, host: 'h2', pid: 2, since: new Date().toISOString(), token: 'x', renewals: 0, released: false };
    assert.ok(await be.createIfAbsent(leaseKey('vol', 2), encodeLease(other)));
    await be.put('vol/chunks/00000007', pattern(5, 7));
    // createFenced finds the key taken, asks the bucket, learns of epoch 2 at once.
    await rejectsWith(() => createFenced(be, a, 'vol/chunks/00000007', pattern(5, 8)), 'VBFS_LEASE_LOST');
    assert.deepEqual(await be.get('vol/chunks/00000007'), pattern(5, 7), 'never overwritten');
    assert.throws(
      () => a.assertLive(),
      (e: VbfsError) => e.code === 'VBFS_LEASE_LOST' && e.details['reason'] === 'superseded' && e.details['newerEpoch'] === 2,
    );

    const c = await acquire(backend(), 'vol2', { ttlMs: 1500 });
    let lost: VbfsError | null = null;
    c.onLost((e) => (lost = e));
    assert.ok(await c.verify().then(() => true));
    assert.ok(await backends[backends.length - 1]!.createIfAbsent(leaseKey('vol2', 2), encodeLease({ ...other })));
    await sleep(1000); // the next renewal (every 500 ms) lists the epochs
    assert.ok(lost !== null, 'onLost fired from the renewal');
    assert.equal((lost as VbfsError).details['reason'], 'superseded');
  });

  it('renewal retries through 503s and delays keep the lease; an outage past the TTL fences the holder', async () => {
    const be = backend();
    proxy = await FaultProxy.start(rgw.endpoint);
    const viaProxy = backend(be, { endpoint: proxy.url, attemptTimeoutMs: 1500, operationTimeoutMs: 2500, backoffBaseMs: 50, backoffMaxMs: 200 });
    // Renewing every 600 ms, each renewal must be back within 2.7 s (TTL - margin) of
    // the send of the one before: a renewal that returns later finds the lease lost.
    const a = await acquire(viaProxy, 'vol', { ttlMs: 3000, renewIntervalMs: 600 });
    let lost: VbfsError | null = null;
    a.onLost((e) => (lost = e));
    proxy.next('503', 3);
    proxy.next('delay', 2, 700);
    await sleep(4500); // longer than the TTL: only renewals that got through keep it
    assert.ok(a.live, `kept through 503s and delays (renewals ${a.renewals})`);
    assert.equal(lost, null);
    assert.ok(viaProxy.stats.retryReasons.slowDown >= 3, JSON.stringify(viaProxy.stats));
    assert.ok(a.renewals >= 2);
    proxy.outage = '503';
    const outage = Date.now();
    while (lost === null && Date.now() - outage < 5000) await sleep(50);
    assert.ok(lost !== null, 'lost within the TTL');
    assert.ok(Date.now() - outage <= 3000, `fenced ${Date.now() - outage} ms into the outage (TTL 3000 ms)`);
    assert.equal((lost as VbfsError).details['reason'], 'expired');
    proxy.outage = null;
    const b = await acquire(backend(be), 'vol', { ttlMs: 2000, waitMs: 10_000 });
    assert.equal(b.epoch, 2);
  });

  it('lost is final: a renewal whose answer comes back after the deadline does not revive the lease', async () => {
    const be = backend();
    proxy = await FaultProxy.start(rgw.endpoint);
    const viaProxy = backend(be, { endpoint: proxy.url, attemptTimeoutMs: 5000, operationTimeoutMs: 6000 });
    // Deadline 1750 ms after the acquire; the first renewal is sent at 600 ms and
    // answered at about 2000 ms: in time for its own 600 + 1750, too late for the lease.
    const a = await acquire(viaProxy, 'vol', { ttlMs: 2000, renewIntervalMs: 600 });
    const losses: VbfsError[] = [];
    a.onLost((e) => losses.push(e));
    proxy.next('delay', 1, 1400);
    await sleep(2300);
    assert.equal(proxy.counts.faulted, 1, 'the delayed renewal went through');
    assert.equal(decodeLease(await be.get(leaseKey('vol', 1)), 'lease').renewals, 1, 'and landed');
    assert.equal(losses.length, 1);
    assert.equal(losses[0]!.details['reason'], 'expired');
    assert.equal(a.renewals, 0, 'not counted as ours');
    assert.throws(
      () => a.assertLive(),
      (e: VbfsError) => e.code === 'VBFS_LEASE_LOST',
    );
  });

  it('two processes: a holder SIGSTOPped past its TTL is taken over; after SIGCONT its writes fail and the new epoch stays intact', async function () {
    this.timeout(60_000);
    const be = backend();
    const vol = 'vol';
    const child: ChildProcess = fork(CHILD, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
    const inbox: Array<Record<string, unknown>> = [];
    const waiters: Array<() => void> = [];
    child.on('message', (m: Record<string, unknown>) => {
      inbox.push(m);
      for (const w of waiters.splice(0)) w();
    });
    const next = async (type: string, timeoutMs = 15_000): Promise<Record<string, unknown>> => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const i = inbox.findIndex((m) => m['type'] === type);
        if (i >= 0) return inbox.splice(i, 1)[0]!;
        if (Date.now() > end) throw new Error(`child sent no '${type}' (got ${JSON.stringify(inbox)})`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
    };
    const ask = (m: Record<string, unknown>): void => {
      child.send(m);
    };
    const b64 = (b: Buffer): string => b.toString('base64');
    try {
      await next('ready');
      ask({ type: 'acquire', backend: { ...rgwOptions(rgw), prefix: be.prefix }, volumeKey: vol, ttlMs: 2000 });
      assert.equal((await next('acquired'))['epoch'], 1);
      // The child writes as epoch 1: its epoch record, a chunk, the delta naming it.
      ask({ type: 'begin' });
      assert.deepEqual(await next('begun'), { type: 'begun', firstSeq: 1, adopted: [] });
      for (const [key, data] of [
        [`${vol}/chunks/00000001`, pattern(100, 1)],
        [deltaKey(vol, 1, 1), pattern(50, 11)],
      ] as const) {
        ask({ type: 'write', key, data: b64(Buffer.from(data)) });
        assert.deepEqual(await next('wrote'), { type: 'wrote', key, created: true });
      }
      // It passes its liveness check for the next write, and stalls before the PUT.
      ask({ type: 'check' });
      await next('checked');
      child.kill('SIGSTOP');
      const stoppedAt = Date.now();

      // The takeover, from this process: by the server's clock, after the TTL.
      const b = await acquire(backend(be), vol, { ttlMs: 2000, waitMs: 15_000 });
      assert.equal(b.epoch, 2);
      assert.ok(Date.now() - stoppedAt >= 2000, `took over ${Date.now() - stoppedAt} ms after the stop`);
      const { plan: taken, record: rec2 } = await beginEpoch(be, b);
      assert.deepEqual(taken.replay, [{ epoch: 1, seq: 1 }]);
      assert.deepEqual(rec2.adopted, [{ epoch: 1, firstSeq: 1, lastSeq: 1 }]);
      assert.equal(rec2.firstSeq, 2);
      assert.ok(await createFenced(be, b, `${vol}/chunks/00000002`, pattern(100, 2)));
      assert.ok(await createFenced(be, b, deltaKey(vol, 2, 2), pattern(50, 22)));

      child.kill('SIGCONT');
      const lost = await next('lost');
      assert.equal(lost['code'], 'VBFS_LEASE_LOST');
      // Its next write checks the lease first: refused, nothing lands.
      ask({ type: 'write', key: deltaKey(vol, 1, 2), data: b64(pattern(50, 12)) });
      assert.deepEqual(await next('write-failed'), { type: 'write-failed', key: deltaKey(vol, 1, 2), code: 'VBFS_LEASE_LOST' });
      await rejectsWith(() => be.get(deltaKey(vol, 1, 2)), 'VBFS_NOT_FOUND');
      // The PUTs that passed their check before the stop do go out. The chunk id the
      // new epoch used is refused (If-None-Match); the delta under its own epoch lands.
      ask({ type: 'late-write', key: `${vol}/chunks/00000002`, data: b64(pattern(100, 3)) });
      assert.deepEqual(await next('late-wrote'), { type: 'late-wrote', key: `${vol}/chunks/00000002`, created: false, code: 'VBFS_LEASE_LOST' });
      ask({ type: 'late-write', key: deltaKey(vol, 1, 2), data: b64(pattern(50, 12)) });
      assert.equal((await next('late-wrote'))['created'], true);

      // The new epoch's objects are intact, and a reader never replays the late delta.
      assert.deepEqual(await be.get(`${vol}/chunks/00000002`), pattern(100, 2));
      assert.deepEqual(await be.get(deltaKey(vol, 2, 2)), pattern(50, 22));
      assert.deepEqual(decodeEpochRecord(await be.get(epochRecordKey(vol, 2)), 'r2'), rec2);
      const after = sortListing(vol, await be.list(`${vol}/`));
      const recs = await Promise.all(after.recordEpochs.map(async (e) => decodeEpochRecord(await be.get(epochRecordKey(vol, e)), `record ${e}`)));
      const plan = planReplay({ ...after, records: recs });
      assert.deepEqual(plan.replay, [
        { epoch: 1, seq: 1 },
        { epoch: 2, seq: 2 },
      ]);
      assert.deepEqual(plan.fenced, [{ epoch: 1, seq: 2 }]);
      assert.ok(b.live);
      await b.verify();
    } finally {
      if (child.exitCode === null && child.pid !== undefined && alive(child.pid)) {
        child.kill('SIGCONT');
        ask({ type: 'exit' });
        await new Promise<void>((r) => {
          const t = setTimeout(() => {
            child.kill('SIGKILL');
            r();
          }, 3000);
          child.once('exit', () => {
            clearTimeout(t);
            r();
          });
        });
      }
    }
  });
});

/**
 * Renewal timing against an in-memory bucket whose answers take a set time (a loaded
 * server): deterministic, no RGW.
 */
describe('lease renewal under a slow server (in-memory bucket)', function () {
  this.timeout(20_000);

  /** The LeaseBackend calls on a Map, each PUT and LIST answered after `putMs` / `listMs` once `slow` is set. */
  class SlowBucket {
    readonly objects = new Map<string, { data: Buffer; modifiedMs: number }>();
    slow = false;
    putMs = 0;
    listMs = 0;
    puts = 0;
    private wait(ms: number): Promise<void> {
      return this.slow && ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
    }
    async createIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
      if (this.objects.has(key)) return false;
      this.objects.set(key, { data: Buffer.from(data), modifiedMs: Date.now() });
      return true;
    }
    async put(key: string, data: Uint8Array): Promise<void> {
      await this.wait(this.putMs);
      this.puts++;
      this.objects.set(key, { data: Buffer.from(data), modifiedMs: Date.now() });
    }
    async getStamped(key: string): Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }> {
      const o = this.objects.get(key);
      if (!o) throw new Error(`no ${key}`);
      return { data: o.data, modifiedMs: o.modifiedMs, serverNowMs: Date.now() };
    }
    async list(prefix: string): Promise<string[]> {
      await this.wait(this.listMs);
      return [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    }
    async delete(key: string): Promise<void> {
      this.objects.delete(key);
    }
  }

  it('every renewal answered in 400 ms and its listing in 600 ms: the lease stays live (the interval counts from the send, latencies do not add up past the TTL)', async () => {
    // TTL 2000 ms: live until 1750 ms after the send of the last renewal that
    // succeeded; renewals every 666 ms. Counted from the answer of the PUT and the
    // LIST, the sends drift 666 + 400 + 600 ms apart and the lease runs out at about
    // 2.1 s although no renewal failed; counted from the send, they are 666 ms apart.
    const bucket = new SlowBucket();
    const lease = await acquireLease(bucket, 'vol', { ttlMs: 2000 });
    const losses: VbfsError[] = [];
    lease.onLost((e) => losses.push(e));
    bucket.slow = true;
    bucket.putMs = 400;
    bucket.listMs = 600;
    try {
      await new Promise((r) => setTimeout(r, 5000));
      assert.deepEqual(
        losses.map((e) => e.message),
        [],
      );
      assert.ok(lease.live);
      assert.ok(lease.renewals >= 5, `renewed ${lease.renewals} times in 5 s`);
    } finally {
      bucket.slow = false;
      await lease.release();
    }
  });
});

/**
 * A batched fsync acknowledges only what this writer may still vouch for: a WAL sync
 * that completes after the volume's lease ran out is not acknowledged (the volume is
 * fenced: a writer on another machine may take over and never see this WAL).
 */
describe('fsync and a lease lost during its WAL sync (in-memory bucket)', function () {
  this.timeout(20_000);

  /** A memory bucket with conditional creates (so the store takes a lease) whose lease renewals can be cut. */
  class LeasingMemoryBackend extends MemoryBackend {
    cutLease = false;
    override async put(key: string, data: Uint8Array): Promise<void> {
      if (this.cutLease && key.includes('/lease/')) throw new VbfsError('VBFS_IO', 'lease renewals cut (test)');
      return super.put(key, data);
    }
    async createIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
      if ((await this.list(key)).includes(key)) return false;
      await super.put(key, data);
      return true;
    }
    async getStamped(key: string): Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }> {
      return { data: await this.get(key), modifiedMs: Date.now(), serverNowMs: Date.now() };
    }
  }

  /** WAL syncs wait while `held` (a slow disk under the fsync). */
  class HeldSyncFileIO extends PassThroughFileIO {
    private gate: Promise<void> | null = null;
    private open_: (() => void) | null = null;
    syncsHeld = 0;
    hold(): void {
      this.gate = new Promise((r) => (this.open_ = r));
    }
    letGo(): void {
      this.open_?.();
      this.gate = null;
    }
    override async open(p: string, mode: OpenMode): Promise<FileHandle> {
      const fh = await this.inner.open(p, mode);
      if (!p.includes('/wal/')) return fh;
      const held = async (): Promise<void> => {
        if (this.gate) {
          this.syncsHeld++;
          await this.gate;
        }
      };
      return new Proxy(fh, {
        get: (t, prop, recv) => {
          if (prop === 'datasync' || prop === 'sync') {
            return async () => {
              await held();
              return prop === 'sync' ? t.sync() : t.datasync();
            };
          }
          const v: unknown = Reflect.get(t, prop, recv);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
    }
  }

  it('the WAL sync completes after the lease ran out: the fsync fails with VBFS_LEASE_LOST instead of acknowledging', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-lease-fsync-'));
    const be = new LeasingMemoryBackend();
    const io = new HeldSyncFileIO(new NodeFileIO());
    const store = await Store.open(dir, { backend: be, metadata: 'backend', fileIO: io, leaseTtlMs: 1000 });
    try {
      await store.createVolume('v', { size: 1024 * 1024, durability: 'batched' });
      const vol = await store.openVolume('v', { batchMs: 60_000, flushIntervalMs: 3_600_000 });
      await vol.write(0, pattern(4096, 1));
      await vol.fsync(); // the lease is live: acknowledged
      await vol.write(4096, pattern(4096, 2));
      io.hold();
      const fsync = vol.fsync(); // the lease is live when it starts
      be.cutLease = true; // renewals fail from now on: the lease runs out at 750 ms
      await new Promise((r) => setTimeout(r, 1200));
      assert.equal(io.syncsHeld, 1, 'the fsync waits in its WAL sync');
      io.letGo();
      await rejectsWith(() => fsync, 'VBFS_LEASE_LOST');
    } finally {
      io.letGo();
      be.cutLease = false;
      await store.close().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
