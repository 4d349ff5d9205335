import * as assert from 'node:assert/strict';
import { S3Backend, type S3BackendOptions } from '../src/backend/s3-backend';
import { isVbfsError } from '../src/errors';
import type { ChunkPlacement } from '../src/format/map-records';
import { BlockIndex } from '../src/map/block-index';
import { BucketMapMedium } from '../src/map/bucket-map-medium';
import { MapStore } from '../src/map/map-store';
import { silentLogger } from '../src/types';
import { SimFS } from './helpers/sim-fs';
import { commitOf } from './helpers/placements';
import { pattern, rejectsWith } from './backend-suite';
import { FaultProxy } from './helpers/fault-proxy';
import { requireRgw, rgwOptions, type RgwCluster } from './helpers/rgw';

/**
 * The S3 backend through a fault-injecting proxy in front of the real RGW: retries
 * get through 5xx answers, resets and stalls, every retry is counted, and an outage
 * ends in a clear VBFS_IO after the configured deadline instead of a hang.
 */
describe('S3Backend through a fault-injecting proxy (RGW behind it)', function () {
  this.timeout(20_000); // an outage test that hangs must fail, not wait for mocha's 120 s
  let rgw: RgwCluster;
  let proxy: FaultProxy;
  const opened: S3Backend[] = [];

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
    for (const be of opened.splice(0)) await be.close();
    await proxy.close();
  });

  function viaProxy(extra: Partial<S3BackendOptions> = {}): S3Backend {
    const be = new S3Backend(
      rgwOptions(rgw, { endpoint: proxy.url, attemptTimeoutMs: 1000, operationTimeoutMs: 4000, backoffBaseMs: 20, backoffMaxMs: 200, ...extra }),
    );
    opened.push(be);
    return be;
  }

  it('retries through 503 SlowDown and 500 answers, counting each retry and its reason', async () => {
    const be = viaProxy();
    proxy.next('503', 3);
    await be.put('k', pattern(5000, 1));
    assert.equal(be.stats.retries, 3);
    assert.equal(be.stats.retryReasons.slowDown, 3);
    proxy.next('500', 2);
    assert.deepEqual(await be.get('k'), pattern(5000, 1));
    assert.equal(be.stats.retries, 5);
    assert.equal(be.stats.retryReasons.serverError, 2);
    assert.equal(be.stats.requests, 7);
    assert.equal(be.stats.gaveUp, 0);
    assert.equal(proxy.counts.faulted, 5);
  });

  it('retries through connections reset mid-request', async () => {
    const be = viaProxy();
    proxy.next('reset', 2);
    await be.put('k', pattern(70_000, 2));
    proxy.next('reset', 2);
    assert.deepEqual(await be.get('k', 100, 1000), pattern(70_000, 2).subarray(100, 1100));
    proxy.next('reset');
    assert.deepEqual(await be.list(''), ['k']);
    proxy.next('reset');
    await be.delete('k');
    assert.equal(be.stats.retryReasons.connection, 6, JSON.stringify(be.stats));
    assert.equal(be.stats.retries, 6);
    assert.deepEqual(await be.list(''), []);
  });

  it('retries an attempt that gets no answer within the attempt timeout', async () => {
    const be = viaProxy({ attemptTimeoutMs: 300 });
    await be.put('k', pattern(100, 3));
    proxy.next('delay', 1, 1500);
    const t0 = Date.now();
    assert.deepEqual(await be.get('k'), pattern(100, 3));
    assert.ok(Date.now() - t0 < 1500, 'did not wait for the stalled attempt');
    assert.equal(be.stats.retryReasons.timeout, 1);
  });

  it('a permanent outage (no answers at all) fails with VBFS_IO after the operation timeout, not a hang', async () => {
    const be = viaProxy({ attemptTimeoutMs: 400, operationTimeoutMs: 1500 });
    await be.put('k', pattern(100, 4));
    proxy.outage = 'blackhole';
    const t0 = Date.now();
    const err = (await rejectsWith(() => be.get('k'), 'VBFS_IO')) as { details: Record<string, unknown> };
    const took = Date.now() - t0;
    assert.ok(took >= 1000 && took < 2500, `gave up after ${took} ms (deadline 1500 ms)`);
    assert.equal(err.details['gaveUp'], true);
    assert.equal(err.details['timedOut'], true);
    assert.equal(be.stats.gaveUp, 1);
    assert.ok(be.stats.retryReasons.timeout >= 2, `retried the stalled attempts (${be.stats.retryReasons.timeout})`);
    // Once the store answers again, the same backend works.
    proxy.outage = null;
    assert.deepEqual(await be.get('k'), pattern(100, 4));
  });

  it('a permanent 503 outage stops after maxAttempts, with backoff between attempts', async () => {
    const be = viaProxy({ maxAttempts: 5, backoffBaseMs: 50, backoffMaxMs: 400, operationTimeoutMs: 30_000 });
    proxy.outage = '503';
    const t0 = Date.now();
    const err = (await rejectsWith(() => be.put('k', pattern(10, 5)), 'VBFS_IO')) as { details: Record<string, unknown> };
    assert.equal(err.details['attempts'], 5);
    assert.equal(err.details['status'], 503);
    assert.equal(proxy.counts.requests, 5, 'no more requests than attempts');
    assert.equal(be.stats.retries, 4);
    assert.equal(be.stats.gaveUp, 1);
    assert.ok(Date.now() - t0 < 5000);
  });

  it('a permanent outage of refused connections fails with VBFS_IO too', async () => {
    const be = viaProxy({ operationTimeoutMs: 1000 });
    await proxy.close(); // nothing listens on its port any more
    const t0 = Date.now();
    await rejectsWith(() => be.list(''), 'VBFS_IO');
    assert.ok(Date.now() - t0 < 2500);
    assert.ok(be.stats.retryReasons.connection >= 1);
    proxy = await FaultProxy.start(rgw.endpoint); // for afterEach
  });

  it('does not retry answers that will not change: 404, 403', async () => {
    const be = viaProxy();
    await rejectsWith(() => be.get('missing'), 'VBFS_NOT_FOUND');
    assert.equal(proxy.counts.requests, 1);
    const denied = viaProxy({ credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: 'wrong' } });
    await rejectsWith(() => denied.put('k', pattern(1, 1)), 'VBFS_IO');
    assert.equal(proxy.counts.requests, 2);
    assert.equal(be.stats.retries + denied.stats.retries, 0);
  });

  it("createIfAbsent whose answer was lost (reset, 500): its own create counts as created, another holder's does not", async () => {
    const be = viaProxy();
    proxy.next('resetAfterUpstream');
    assert.equal(await be.createIfAbsent('lease', Buffer.from('holder-A nonce-1')), true, 'created by the first, unanswered attempt');
    assert.equal((await be.get('lease')).toString(), 'holder-A nonce-1');
    proxy.next('resetAfterUpstream');
    assert.equal(await be.createIfAbsent('lease', Buffer.from('holder-B nonce-2')), false);
    assert.equal((await be.get('lease')).toString(), 'holder-A nonce-1');
    assert.equal(be.stats.retryReasons.connection, 2);
    // A 500 leaves the outcome open too: the create may have happened.
    proxy.next('500AfterUpstream');
    assert.equal(await be.createIfAbsent('lease2', Buffer.from('holder-A nonce-3')), true, 'created by the attempt that got a 500');
    proxy.next('503');
    assert.equal(await be.createIfAbsent('lease2', Buffer.from('holder-C nonce-4')), false);
    assert.equal((await be.get('lease2')).toString(), 'holder-A nonce-3');
  });
  describe('a map checkpoint whose last PUT lands but whose answer is lost after every retry', () => {
    const ID = '00112233445566778899aabbccddeeff';
    const apply = (index: BlockIndex, p: ChunkPlacement): void => {
      for (let i = 0; i < p.count; i++)
        index.setPersisted(p.blocks[i] as number, p.seqs[i] as number, p.chunkId, p.offsets[i] as number, p.lens[i] as number, 0);
    };
    const isEndPart = (url: string | undefined): boolean => url !== undefined && /\/checkpoint\/.*-end$/.test(url.split('?')[0] ?? '');
    async function opened(be: S3Backend): Promise<{ m: MapStore; index: BlockIndex }> {
      const index = new BlockIndex(1024);
      const m = new MapStore(new SimFS(), '/map', ID, silentLogger, () => undefined, new BucketMapMedium(be, ID, 1));
      await m.load(index, false);
      return { m, index };
    }

    it('a listing settles it: the checkpoint counts, and the next commit goes past it and is replayed on open', async () => {
      const be = viaProxy({ operationTimeoutMs: 2000 });
      const { m, index } = await opened(be);
      const first = commitOf(1, 0, 4);
      await m.commit([first]);
      apply(index, first);
      // Every attempt at the `-end` part is stored by RGW and answered 500 (retries too).
      proxy.faultWhere = (req) => (req.method === 'PUT' && isEndPart(req.url) ? '500AfterUpstream' : null);
      // A failed checkpoint is not fatal to every caller (the compactor logs it and goes
      // on), so what matters is where the next commit goes: before the listing it went
      // below the checkpoint that had landed, and was lost on open.
      await m.checkpoint(index, 200, 2).catch(() => undefined);
      proxy.faultWhere = null;
      assert.ok(proxy.counts.faulted >= 2, 'the -end PUT was retried and failed each time');
      const after = commitOf(2, 10, 4);
      await m.commit([after]); // the flusher reclaims its WAL records now
      await m.close();
      const again = (await opened(be)).index;
      assert.equal(again.persistedSeq(0), 101, 'in the checkpoint');
      assert.equal(again.persistedSeq(10), 201, 'the commit after the checkpoint');
    });

    it('when the listing fails too, the checkpoint fails with VBFS_IO and the map takes no more commits (the next open decides)', async () => {
      const be = viaProxy({ operationTimeoutMs: 1000 });
      const { m, index } = await opened(be);
      const first = commitOf(1, 0, 4);
      await m.commit([first]);
      apply(index, first);
      proxy.faultWhere = (req) =>
        req.method === 'PUT' && isEndPart(req.url) ? '500AfterUpstream' : req.method === 'GET' && req.url?.includes('list-type') ? '503' : null;
      const unsure = (err: unknown): boolean => isVbfsError(err, 'VBFS_IO') && err.details['checkpointUnsure'] === true;
      await assert.rejects(m.checkpoint(index, 200, 2), unsure);
      proxy.faultWhere = null;
      await assert.rejects(m.commit([commitOf(2, 10, 4)]), unsure);
      await m.close();
      const again = (await opened(be)).index;
      assert.equal(again.persistedSeq(0), 101, 'the checkpoint landed: it counts');
      assert.equal(again.persistedSeq(10), 0, 'refused, never committed');
    });
  });
});
