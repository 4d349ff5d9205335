import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { S3Backend, type S3BackendOptions } from '../src/backend/s3-backend';
import { isVbfsError } from '../src/errors';
import { errno, toErrno } from '../src/fuse/errno';
import { renderStats } from '../src/fuse/stats-file';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import type { VolumeOpenOptions } from '../src/store/types';
import { pattern } from './backend-suite';
import { FaultProxy } from './helpers/fault-proxy';
import { requireRgw, rgwOptions, type RgwCluster } from './helpers/rgw';

/**
 * A volume over the S3 backend while the bucket is unreachable (the fault proxy in
 * front of a real RGW): writes land in the WAL up to the write buffer, then wait
 * (no error); reads that need the bucket fail with EIO after backendReadTimeoutMs;
 * when the bucket is back, flushing resumes and every acknowledged byte is there,
 * also after a reopen. Short timeouts throughout.
 */
describe('S3 backend outage: backpressure, read timeouts, recovery (RGW behind a fault proxy)', function () {
  this.timeout(60_000);
  let rgw: RgwCluster;
  let proxy: FaultProxy;
  const cleanup: (() => Promise<void>)[] = [];

  before(async function () {
    this.timeout(180_000);
    rgw = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.close();
  });
  beforeEach(async () => {
    proxy = await FaultProxy.start(rgw.endpoint);
  });
  afterEach(async () => {
    proxy.outage = null;
    for (const f of cleanup.splice(0).reverse()) await f().catch(() => undefined);
    await proxy.close();
  });

  // Short enough that an outage is seen within seconds, long enough for a loaded RGW on a shared machine.
  const FAST: Partial<S3BackendOptions> = { attemptTimeoutMs: 1000, operationTimeoutMs: 2500, backoffBaseMs: 20, backoffMaxMs: 100 };
  const SMALL: VolumeOpenOptions = {
    writeBufferBytes: 1 << 20,
    flushBytes: 256 << 10,
    chunkBytes: 256 << 10,
    flushIntervalMs: 50,
    backendRetryMs: 100,
    cacheBytes: 0,
    readaheadBytes: 0,
  };

  /** A store over RGW through the proxy (no disk cache unless asked: reads must reach the bucket). */
  async function openStore(dir: string, s3: S3BackendOptions, diskCacheBytes = 0): Promise<Store> {
    const store = await Store.open(dir, { backend: new S3Backend(s3), diskCacheBytes });
    cleanup.push(() => store.close());
    return store;
  }

  function tmp(): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-outage-'));
    cleanup.push(async () => fs.rmSync(d, { recursive: true, force: true }));
    return d;
  }

  /** 'pending' if p has not settled within ms. */
  async function settledWithin(p: Promise<unknown>, ms: number): Promise<'resolved' | 'rejected' | 'pending'> {
    let timer: NodeJS.Timeout | undefined;
    const out = await Promise.race([
      p.then(
        () => 'resolved' as const,
        () => 'rejected' as const,
      ),
      new Promise<'pending'>((r) => (timer = setTimeout(() => r('pending'), ms))),
    ]);
    clearTimeout(timer);
    return out;
  }

  async function verify(vol: Volume, expected: Buffer): Promise<void> {
    const got = await vol.read(0, expected.length);
    assert.ok(got.equals(expected), 'every acknowledged byte reads back');
  }

  for (const outage of ['blackhole', '503', 'reset'] as const) {
    it(`writes wait (no error) once the write buffer is full during an outage (${outage}); flushing resumes after it, nothing acknowledged is lost, also after a reopen`, async () => {
      const dir = tmp();
      const s3 = rgwOptions(rgw, { ...FAST, endpoint: proxy.url });
      let store = await openStore(dir, s3);
      await store.createVolume('v', { size: 16 << 20 });
      let vol = await store.openVolume('v', SMALL);
      const data = pattern(4 << 20, 11);
      const W = 64 << 10;
      // Some data in the bucket before the outage.
      await vol.write(0, data.subarray(0, W));
      await vol.flush();
      proxy.outage = outage;
      let acked = W;
      let waiting: Promise<void> | null = null;
      for (let off = W; off < data.length; off += W) {
        const w = vol.write(off, data.subarray(off, off + W));
        const st = await settledWithin(w, 1500);
        assert.notEqual(st, 'rejected', `write at ${off} failed during the outage`);
        if (st === 'pending') {
          waiting = w;
          break;
        }
        acked = off + W;
      }
      assert.ok(waiting, 'a writer waits once the write buffer is full');
      assert.ok(acked >= 512 << 10, `writes kept landing in the WAL (${acked} bytes acknowledged)`);
      assert.ok(acked <= (1 << 20) + W, `...up to the write buffer cap (${acked} bytes)`);
      assert.equal(await settledWithin(waiting, 1500), 'pending', 'still waiting, not failed');
      const st = vol.stats();
      assert.equal(st.backendDown, 1);
      assert.ok(st.backendRetries > 0 && st.backendErrors > 0, JSON.stringify(st));
      assert.match(
        renderStats({ uptimeSeconds: 0, openHandles: 0, fuseErrors: 0 }, [{ name: 'v', durability: 'batched', size: 0, stats: st }]),
        /^backend_retries +\d+$/m,
      );

      proxy.outage = null;
      await waiting; // flushing resumed and made room
      for (let off = acked + W; off < data.length; off += W) await vol.write(off, data.subarray(off, off + W));
      await vol.fsync();
      await vol.flush();
      assert.equal(vol.stats().backendDown, 0);
      await verify(vol, data);
      await vol.close();
      await store.close();

      // Reopen, in a new process's shoes: everything comes back from the bucket.
      store = await openStore(dir, rgwOptions(rgw, { prefix: s3.prefix }));
      vol = await store.openVolume('v', SMALL);
      assert.equal(vol.stats().blocksPending + vol.stats().blocksHot, 0, 'nothing left to replay');
      await verify(vol, data);
      await vol.close();
    });
  }

  it('acknowledged writes survive a close during the outage (they stay in the WAL) and reach the bucket at the next open', async () => {
    const dir = tmp();
    const s3 = rgwOptions(rgw, { ...FAST, endpoint: proxy.url });
    let store = await openStore(dir, s3);
    await store.createVolume('v', { size: 16 << 20 });
    let vol = await store.openVolume('v', SMALL);
    const data = pattern(512 << 10, 12);
    proxy.outage = '503';
    await vol.write(0, data);
    await vol.fsync();
    await vol.close(); // does not fail, does not hang: the WAL holds the data
    await store.close();
    proxy.outage = null;
    store = await openStore(dir, rgwOptions(rgw, { prefix: s3.prefix }));
    vol = await store.openVolume('v', SMALL);
    await vol.flush();
    assert.equal(vol.stats().blocksPersisted + vol.stats().blocksCached, data.length / 4096, 'flushed into the bucket');
    await verify(vol, data);
    await vol.close();
  });

  it('a read of a block that is only in the bucket fails with EIO after backendReadTimeoutMs, never hangs, and reads right once the bucket is back', async () => {
    const dir = tmp();
    // The backend's own deadline is long: the volume's read timeout must be what ends the read.
    const s3 = rgwOptions(rgw, { ...FAST, operationTimeoutMs: 30_000, endpoint: proxy.url });
    const store = await openStore(dir, s3);
    await store.createVolume('v', { size: 16 << 20 });
    let vol = await store.openVolume('v', SMALL);
    const data = pattern(256 << 10, 13);
    await vol.write(0, data);
    await vol.close(); // flushed: the blocks are in the bucket only
    vol = await store.openVolume('v', { ...SMALL, backendReadTimeoutMs: 700 });
    cleanup.push(() => vol.close());
    for (const outage of ['blackhole', '503'] as const) {
      proxy.outage = outage;
      const out = Buffer.alloc(data.length, 0xee);
      const t0 = Date.now();
      const err = await vol.readInto(0, out).then(
        () => null,
        (e: unknown) => e,
      );
      const took = Date.now() - t0;
      assert.ok(isVbfsError(err, 'VBFS_IO'), `${outage}: ${String(err)}`);
      assert.equal(toErrno(err), errno.EIO);
      // No answer at all: the read timeout ends it; 503s: the backend gives up first (maxAttempts).
      if (outage === 'blackhole') assert.ok(took >= 600, `${outage}: failed after ${took} ms (timeout 700 ms)`);
      assert.ok(took < 3000, `${outage}: failed after ${took} ms (timeout 700 ms)`);
      // Nothing was written into the caller's buffer, not even late (no wrong bytes).
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(out.equals(Buffer.alloc(data.length, 0xee)), 'no bytes of the failed read');
    }
    proxy.outage = null;
    await verify(vol, data);
    assert.equal(vol.stats().corruptReads, 0);
  });

  it('counts every retry of a flush in .stats (backendRetries)', async () => {
    const dir = tmp();
    const store = await openStore(dir, rgwOptions(rgw, { ...FAST, endpoint: proxy.url }));
    await store.createVolume('v', { size: 16 << 20 });
    const vol = await store.openVolume('v', SMALL);
    cleanup.push(() => vol.close());
    await vol.write(0, pattern(8192, 14));
    const before = vol.stats().backendRetries;
    proxy.next('503', 2);
    proxy.next('reset');
    await vol.flush();
    assert.equal(vol.stats().backendRetries - before, 3);
    assert.equal(vol.stats().backendDown, 0);
  });

  it('caps retry attempts in flight over the whole backend: an outage does not become a retry storm', async () => {
    const be = new S3Backend(
      rgwOptions(rgw, {
        attemptTimeoutMs: 200,
        operationTimeoutMs: 20_000,
        maxAttempts: 1000,
        backoffBaseMs: 10,
        backoffMaxMs: 20,
        maxConcurrentRetries: 2,
        endpoint: proxy.url,
      }),
    );
    cleanup.push(() => be.close());
    proxy.outage = 'blackhole'; // every attempt waits for its timeout
    const puts = Array.from({ length: 20 }, (_, i) => be.put(`k${i}`, pattern(100, i)));
    await new Promise((r) => setTimeout(r, 1500));
    const during = be.stats.requests;
    proxy.outage = null;
    await Promise.all(puts); // all get through once the store answers
    assert.equal(be.stats.retryPeak, 2, 'never more than 2 retries in flight');
    assert.ok(be.stats.retriesQueued > 0, 'retries waited for their place');
    // 20 first attempts, then at most 2 per attempt timeout (200 ms): about 35 in 1.5 s, not 20 per 200 ms (150).
    assert.ok(during <= 20 + 2 * 9, `${during} attempts during the outage`);
    for (let i = 0; i < 20; i++) assert.deepEqual(await be.get(`k${i}`), pattern(100, i));
  });
});
