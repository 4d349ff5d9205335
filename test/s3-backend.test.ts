import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import { REPO, run } from './helpers/fuse-env';
import { S3Backend, parseS3Url } from '../src/backend/s3-backend';
import { backendSuite, pattern, rejectsWith } from './backend-suite';
import { RGW_SCRIPT, TEST_BUCKET, alive, processesUnder, requireCeph, requireRgw, rgwOptions, rgwTestPrefix, type RgwCluster } from './helpers/rgw';

/**
 * The S3 backend against a real Ceph RADOS Gateway (test/helpers/ceph/rgw-cluster.sh,
 * started once per run by test/helpers/rgw.ts). Each test gets a fresh key prefix in
 * one bucket, so the conformance suite's "empty backend" costs no bucket creation.
 */
describe('parseS3Url', () => {
  it('splits bucket and prefix, normalizing the prefix to end in one /', () => {
    assert.deepEqual(parseS3Url('s3://bucket'), { bucket: 'bucket', prefix: '' });
    assert.deepEqual(parseS3Url('s3://bucket/'), { bucket: 'bucket', prefix: '' });
    assert.deepEqual(parseS3Url('s3://my.bucket-1/vols'), { bucket: 'my.bucket-1', prefix: 'vols/' });
    assert.deepEqual(parseS3Url('s3://b12/a/b/c/'), { bucket: 'b12', prefix: 'a/b/c/' });
  });

  it('refuses what is not an s3 URL, bad bucket names and bad prefixes', () => {
    for (const bad of [
      '',
      'bucket/prefix',
      'http://bucket/x',
      's3://',
      's3:///x',
      's3://Bucket/x',
      's3://ab/x',
      's3://a..b/x',
      's3://b_c/x',
      's3://bucket/a//b',
      's3://bucket/../x',
      's3://bucket//x',
    ]) {
      assert.throws(
        () => parseS3Url(bad),
        (e: { code?: string }) => e.code === 'VBFS_INVALID_ARGUMENT',
        bad,
      );
    }
  });
});

describe('rgw-cluster.sh refuses to touch what it did not make', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-rgwsh-'));
    fs.writeFileSync(path.join(dir, 'precious'), 'x');
  });
  afterEach(() => {
    // If the script failed to, stop the daemons it started here: their command lines
    // name this test's own temp directory, so they are ours.
    for (const pid of processesUnder(fs.realpathSync(dir))) process.kill(pid, 'SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('stop leaves a directory without its marker alone', async () => {
    const r = await run(RGW_SCRIPT, ['stop', dir]);
    assert.equal(r.code, 1, r.stderr);
    assert.deepEqual(fs.readdirSync(dir), ['precious']);
  });

  it('start refuses a directory that is not empty, and starts nothing', async () => {
    const r = await run(RGW_SCRIPT, ['start', dir]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, '');
    assert.deepEqual(fs.readdirSync(dir), ['precious']);
  });

  it('a start that fails stops every daemon it started; stop then removes the directory', async function () {
    requireCeph(this);
    const cluster = path.join(dir, 'cluster');
    // Too short for radosgw to come up: the start fails after the mon and OSD are running.
    const r = await run(RGW_SCRIPT, ['start', cluster], { env: { ...process.env, RGW_CLUSTER_START_TIMEOUT: '1' } });
    assert.equal(r.code, 1, r.stderr);
    const pids = fs.readFileSync(path.join(cluster, 'pids'), 'utf8').trim().split('\n');
    assert.equal(pids.length, 3, 'mon, osd and rgw were started');
    assert.deepEqual(processesUnder(fs.realpathSync(cluster)), [], 'nothing left running');
    assert.equal((await run(RGW_SCRIPT, ['stop', cluster])).code, 0);
    assert.deepEqual(fs.readdirSync(dir), ['precious']);
  });

  it('stop of a directory that does not exist is a no-op', async () => {
    const r = await run(RGW_SCRIPT, ['stop', path.join(dir, 'nope')]);
    assert.equal(r.code, 0, r.stderr);
  });
});

describe('S3 tests where Ceph is not installed', () => {
  // Run one S3 test file in a child mocha whose PATH has no Ceph binaries.
  const mocha = path.join(REPO, 'node_modules', 'mocha', 'bin', 'mocha.js');
  const file = path.join(REPO, 'dist', 'test', 's3-faults.test.js');
  const env = (ci: boolean): NodeJS.ProcessEnv => {
    const e: NodeJS.ProcessEnv = { ...process.env, PATH: '/nonexistent' };
    if (ci) e['CI'] = 'true';
    else delete e['CI'];
    return e;
  };

  it('fails in CI (CI=true): a missing Ceph is not a pass', async () => {
    const r = await run(process.execPath, [mocha, '--no-config', file], { env: env(true) });
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stdout + r.stderr, /S3 tests cannot run in CI: .*not installed/);
  });

  it('is skipped visibly elsewhere', async () => {
    const r = await run(process.execPath, [mocha, '--no-config', file], { env: env(false) });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SKIPPED \(no Ceph: /);
    assert.match(r.stdout, /0 passing/);
    assert.match(r.stdout, /pending/);
  });
});

describe('S3Backend against Ceph RGW', function () {
  let rgw: RgwCluster;

  before(async function () {
    this.timeout(180_000);
    rgw = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.ensureBucket(); // idempotent
    await be.close();
  });

  it('runs on a cluster of our own daemons, under one directory', () => {
    assert.equal(rgw.pids.length, 3);
    for (const pid of rgw.pids) {
      assert.ok(alive(pid), `pid ${pid} is not running`);
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      assert.ok(cmd.includes(`${fs.realpathSync(rgw.dir)}/ceph.conf`), cmd.join(' '));
    }

    console.log(`      (cluster ready in ${rgw.startMs} ms)`);
  });

  backendSuite('S3Backend on Ceph RGW', async () => new S3Backend(rgwOptions(rgw)));

  it('lists across pages', async () => {
    const be = new S3Backend(rgwOptions(rgw, { listPageSize: 5 }));
    const keys = Array.from({ length: 23 }, (_, i) => `v/chunks/${String(i).padStart(4, '0')}`);
    await Promise.all(keys.map((k, i) => be.put(k, pattern(10, i))));
    const before = be.stats.requests;
    assert.deepEqual(await be.list('v/'), keys);
    assert.equal(be.stats.requests - before, 5, '23 keys in pages of 5');
    await be.close();
  });

  it('keeps backends with different prefixes in one bucket apart', async () => {
    const a = new S3Backend(rgwOptions(rgw));
    const b = new S3Backend(rgwOptions(rgw));
    await a.put('k', pattern(10, 1));
    assert.deepEqual(await b.list(''), []);
    await rejectsWith(() => b.get('k'), 'VBFS_NOT_FOUND');
    assert.equal(a.describe('k'), `s3://${TEST_BUCKET}/${a.prefix}k`);
    await a.close();
    await b.close();
  });

  it('creates an object only once with createIfAbsent (If-None-Match: *)', async () => {
    const be = new S3Backend(rgwOptions(rgw));
    assert.equal(await be.createIfAbsent('lease', Buffer.from('holder-1')), true);
    assert.equal(await be.createIfAbsent('lease', Buffer.from('holder-2')), false);
    assert.equal((await be.get('lease')).toString(), 'holder-1');
    await be.delete('lease');
    assert.equal(await be.createIfAbsent('lease', Buffer.from('holder-3')), true);
    assert.equal(await be.supportsConditionalCreate(), true);
    await be.close();
  });

  it('races of createIfAbsent have exactly one winner', async () => {
    const be = new S3Backend(rgwOptions(rgw));
    const wins = await Promise.all(Array.from({ length: 8 }, (_, i) => be.createIfAbsent('race', Buffer.from(`holder-${i}`))));
    assert.equal(wins.filter((w) => w).length, 1, String(wins));
    assert.equal((await be.get('race')).toString(), `holder-${wins.indexOf(true)}`);
    await be.close();
  });

  it('round-trips a 4 MiB chunk object, whole and in ranges', async () => {
    const be = new S3Backend(rgwOptions(rgw));
    const chunk = pattern(4 << 20, 42);
    const t0 = Date.now();
    await be.put('v/chunks/big', chunk);
    const t1 = Date.now();
    assert.ok((await be.get('v/chunks/big')).equals(chunk));
    const t2 = Date.now();
    assert.ok((await be.get('v/chunks/big', 1 << 20, 65536)).equals(chunk.subarray(1 << 20, (1 << 20) + 65536)));
    assert.equal(be.stats.bytesPut, 4 << 20);
    assert.equal(be.stats.bytesGot, (4 << 20) + 65536);
    assert.equal(be.stats.retries, 0);

    console.log(`      (4 MiB PUT ${t1 - t0} ms, GET ${t2 - t1} ms)`);
    await be.close();
  });

  it('holds the chunk objects of a Store passed the backend: flushed data reads back from the bucket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-s3store-'));
    try {
      const opts = rgwOptions(rgw);
      const store = await Store.open(dir, { backend: new S3Backend(opts) });
      const info = await store.createVolume('v', { size: 64 << 20 });
      const vol = await store.openVolume('v');
      const data = pattern(3 << 20, 7);
      await vol.write(4096, data);
      await vol.close(); // a clean close flushes everything into chunk objects
      await store.close();
      const be = new S3Backend(opts);
      assert.ok((await be.list(`${info.id}/chunks/`)).length > 0, 'chunk objects in the bucket');
      const again = await Store.open(dir, { backend: be, diskCacheBytes: 0 }); // no disk cache: every read from the bucket
      const v2 = await again.openVolume('v');
      assert.ok((await v2.read(4096, data.length)).equals(data));
      assert.ok(be.stats.bytesGot >= data.length, `read from the bucket (${be.stats.bytesGot} bytes)`);
      await v2.close();
      await again.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes endpoint, credentials and region from the AWS_* environment, path-style', async () => {
    const saved = { ...process.env };
    try {
      for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
      process.env['AWS_ACCESS_KEY_ID'] = rgw.accessKeyId;
      process.env['AWS_SECRET_ACCESS_KEY'] = rgw.secretAccessKey;
      process.env['AWS_ENDPOINT_URL_S3'] = rgw.endpoint;
      const { bucket, prefix } = parseS3Url(`s3://${TEST_BUCKET}/${rgwTestPrefix()}`);
      const be = new S3Backend({ bucket, prefix }); // no region either: defaulted for a custom endpoint
      await be.put('x', pattern(100, 1));
      assert.deepEqual(await be.get('x'), pattern(100, 1));
      await be.close();
      delete process.env['AWS_ENDPOINT_URL_S3'];
      process.env['AWS_ENDPOINT_URL'] = rgw.endpoint;
      process.env['AWS_REGION'] = 'eu-west-3';
      const be2 = new S3Backend({ bucket, prefix });
      assert.deepEqual(await be2.list(''), ['x']);
      await be2.close();
    } finally {
      for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });

  it('fails with VBFS_IO at once, without retrying, on bad credentials and a missing bucket', async () => {
    const bad = new S3Backend(rgwOptions(rgw, { credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: 'wrong' } }));
    const err = (await rejectsWith(() => bad.put('k', pattern(1, 1)), 'VBFS_IO')) as { details: Record<string, unknown> };
    assert.equal(err.details['status'], 403);
    assert.equal(bad.stats.retries, 0);
    await bad.close();
    const nobucket = new S3Backend(rgwOptions(rgw, { bucket: 'vbfs-no-such-bucket' }));
    await rejectsWith(() => nobucket.get('k'), 'VBFS_IO');
    await rejectsWith(() => nobucket.put('k', pattern(1, 1)), 'VBFS_IO');
    assert.equal(nobucket.stats.retries, 0);
    await nobucket.close();
  });
});
