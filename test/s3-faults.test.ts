import * as assert from 'node:assert/strict';
import { S3Backend, type S3BackendOptions } from '../src/backend/s3-backend';
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
});
