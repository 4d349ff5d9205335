import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../src/backend/backend';
import { MemoryBackend } from '../src/backend/memory-backend';
import { S3Backend } from '../src/backend/s3-backend';
import { chunkKey } from '../src/chunk/chunk';
import { BucketMapMedium } from '../src/map/bucket-map-medium';
import { Store } from '../src/store/store';
import type { VolumeOpenOptions } from '../src/store/types';
import { pattern, rejectsWith } from './backend-suite';
import { bucketStores } from './helpers/bucket-stores';
import { requireRgw, rgwOptions, type RgwCluster } from './helpers/rgw';

/**
 * A store whose volumes live in the backend (StoreOptions.metadata 'backend'): the
 * store directory keeps only the WAL and the LOCK, so a new, empty directory opens
 * the same volumes from the bucket alone. Run on the memory backend (fast, no Ceph)
 * and on a real Ceph RGW.
 */
const TINY: VolumeOpenOptions = { chunkBytes: 64 * 1024, flushBytes: 32 * 1024, checkpointBytes: 4 * 1024 };

function bucketStoreSuite(name: string, newBackend: () => Backend | Promise<Backend>, sameBucket: (b: Backend) => Backend, backendIsS3 = false): void {
  describe(name, function () {
    this.timeout(180_000);
    const { open } = bucketStores('vbfs-s3store-');

    it('opens a volume from a new, empty store directory: metadata, map deltas and checkpoints are in the bucket', async () => {
      const backend = await newBackend();
      const a = await open(backend);
      await a.createVolume('v', { size: 4 * 1024 * 1024, durability: 'strict' });
      await a.createVolume('w', { size: 1024 * 1024 });
      const v = await a.openVolume('v', TINY);
      const data = pattern(3 * 64 * 1024 + 4096, 7);
      await v.write(8192, data);
      await v.flush();
      await v.write(1024 * 1024, pattern(4096, 9)); // a second flush: a second delta
      await v.flush();
      await v.write(8192, pattern(4096, 11)); // overwrite: the first chunk loses a block
      await v.close(); // final flush + checkpoint
      const keys = await backend.list('');
      const id = (await a.volumeInfo('v')).id;
      assert.ok(keys.includes('index/v') && keys.includes('index/w'), 'name index');
      assert.ok(keys.includes(`${id}/volume.json`), 'volume.json in the bucket');
      assert.ok(
        keys.some((k) => new RegExp(`^${id}/checkpoint/00000001/[0-9a-f]{12}/000000-[0-9a-f]{8}-end$`).test(k)),
        `a complete checkpoint object: ${keys.join(' ')}`,
      );
      assert.ok(!fs.existsSync(path.join(a.dir, 'volumes', 'v', 'map')), 'no local map');
      assert.ok(!fs.existsSync(path.join(a.dir, 'volumes', 'v', 'volume.json')), 'no local volume.json');
      await a.close();

      // Another machine: a new directory, the same bucket.
      const b = await open(sameBucket(backend));
      assert.deepEqual(
        (await b.listVolumes()).map((i) => i.name),
        ['v', 'w'],
      );
      const v2 = await b.openVolume('v', TINY);
      const want = Buffer.from(data);
      pattern(4096, 11).copy(want, 0);
      assert.deepEqual(await v2.read(8192, data.length), want);
      assert.deepEqual(await v2.read(1024 * 1024, 4096), pattern(4096, 9));
      assert.deepEqual(await v2.read(0, 8192), Buffer.alloc(8192));
      await v2.close();
      const report = await b.fsckVolume('v');
      assert.equal(report.errors, 0, JSON.stringify(report.problems));
      assert.equal(report.mappedBlocks, (data.length + 4096) / 4096);
    });

    it('map deltas without a checkpoint (a crash before close) are replayed on the new machine', async () => {
      const backend = await newBackend();
      const a = await open(backend);
      await a.createVolume('v', { size: 1024 * 1024 });
      const v = await a.openVolume('v', { ...TINY, checkpointBytes: 1 << 30 });
      await v.write(0, pattern(128 * 1024, 3));
      await v.flush();
      await v.write(4096, pattern(4096, 4));
      await v.flush();
      const id = (await a.volumeInfo('v')).id;
      const deltas = (await backend.list(`${id}/map/`)).filter((k) => /^[0-9a-f]{32}\/map\/00000001\/[0-9a-f]{12}$/.test(k));
      assert.ok(deltas.length >= 2, `one delta object per commit: ${deltas.join(' ')}`);
      assert.equal((await backend.list(`${id}/checkpoint/`)).length, 0);
      // The first machine is gone without closing (its WAL with it). Read-only: in a
      // bucket with leases its unreleased lease keeps writers out until the TTL.
      const b = await open(sameBucket(backend));
      const v2 = await b.openVolume('v', { ...TINY, readOnly: true });
      const want = pattern(128 * 1024, 3);
      pattern(4096, 4).copy(want, 4096);
      assert.deepEqual(await v2.read(0, want.length), want);
      await v2.close();
    });

    it('GC: a chunk leaves the bucket only once a durable map no longer needs it; orphans are removed on open', async () => {
      const backend = await newBackend();
      const a = await open(backend);
      await a.createVolume('v', { size: 1024 * 1024 });
      const v = await a.openVolume('v', TINY);
      await v.write(0, pattern(4096, 1));
      await v.flush();
      const id = (await a.volumeInfo('v')).id;
      const first = chunkKey(id, 1);
      assert.ok((await backend.list(`${id}/chunks/`)).includes(first));
      await v.write(0, pattern(4096, 2)); // supersedes chunk 1's only block
      await v.flush();
      await v.close();
      assert.ok(!(await backend.list(`${id}/chunks/`)).includes(first), 'the dead chunk was deleted after the commit that superseded it');
      // A flush that crashed before its map commit leaves an object no map knows.
      const orphan = chunkKey(id, 0x99);
      await backend.put(orphan, Buffer.alloc(64));
      const b = await open(sameBucket(backend));
      const v2 = await b.openVolume('v', TINY);
      assert.ok(!(await backend.list(`${id}/chunks/`)).includes(orphan), 'orphan removed on open');
      assert.deepEqual(await v2.read(0, 4096), pattern(4096, 2));
      await v2.close();
    });

    it('a checkpoint whose last part never arrived is ignored: the previous one and its deltas still hold the map', async () => {
      const backend = await newBackend();
      const a = await open(backend);
      await a.createVolume('v', { size: 1024 * 1024 });
      const v = await a.openVolume('v', TINY);
      await v.write(0, pattern(64 * 1024, 5));
      await v.close();
      const id = (await a.volumeInfo('v')).id;
      // A later checkpoint was being streamed when the writer died: a part without -end.
      const torn = `${id}/checkpoint/00000001/00000000ffff/000000-00000010`;
      await backend.put(torn, Buffer.alloc(16, 0xee));
      const b = await open(sameBucket(backend));
      const v2 = await b.openVolume('v', TINY);
      assert.deepEqual(await v2.read(0, 64 * 1024), pattern(64 * 1024, 5));
      assert.ok(!(await backend.list(`${id}/checkpoint/`)).includes(torn), 'the incomplete checkpoint is removed by a writable open');
      await v2.close();
    });

    // 300 flushes: on the memory backend only (the rule is the map store's, not the backend's).
    if (!backendIsS3)
      it('writes a checkpoint after 256 deltas even when their bytes are far below checkpointBytes (each delta is a GET on open)', async () => {
        const backend = await newBackend();
        const a = await open(backend);
        await a.createVolume('v', { size: 4 * 1024 * 1024 });
        const v = await a.openVolume('v', { ...TINY, checkpointBytes: 1 << 30 });
        const id = (await a.volumeInfo('v')).id;
        for (let i = 0; i < 300; i++) {
          await v.write((i % 1000) * 4096, pattern(4096, i));
          await v.flush();
        }
        const deltas = await backend.list(`${id}/map/`);
        assert.ok(deltas.length < 256 && deltas.length > 0, `deltas left after the automatic checkpoint: ${deltas.length}`);
        assert.equal((await backend.list(`${id}/checkpoint/`)).length, 1);
        assert.equal(v.stats().checkpoints, 1);
        await v.close();
      });

    it('a damaged index entry lists the volume as damaged; the others still list', async () => {
      const backend = await newBackend();
      const a = await open(backend);
      await a.createVolume('good', { size: 1024 * 1024 });
      await backend.put('index/bad', Buffer.from('not a volume id'));
      const states = await a.listVolumeStates();
      assert.deepEqual(
        states.map((s) => [s.name, s.info ? 'ok' : 'damaged']),
        [
          ['bad', 'damaged'],
          ['good', 'ok'],
        ],
      );
      assert.deepEqual(
        (await a.listVolumes()).map((i) => i.name),
        ['good'],
      );
    });

    it('names are unique in the bucket, delete removes every object of the volume', async () => {
      const backend = await newBackend();
      const a = await open(backend);
      await a.createVolume('v', { size: 1024 * 1024 });
      const b = await open(sameBucket(backend));
      await rejectsWith(() => b.createVolume('v', { size: 1024 * 1024 }), 'VBFS_EXISTS');
      const id = (await a.volumeInfo('v')).id;
      const v = await a.openVolume('v', TINY);
      await v.write(0, pattern(8192, 1));
      await v.close();
      await b.deleteVolume('v');
      await rejectsWith(() => a.volumeInfo('v'), 'VBFS_NOT_FOUND');
      assert.deepEqual(await backend.list(`${id}/`), []);
      assert.deepEqual(await backend.list('index/'), []);
    });
  });
}

describe('BucketMapMedium checkpoint parts', () => {
  it('streams a checkpoint as part objects, the last marked -end, and reads them back as one byte stream across part boundaries', async () => {
    const backend = new MemoryBackend();
    const id = '00112233445566778899aabbccddeeff';
    const m = new BucketMapMedium(backend, id, 3);
    const groups = [pattern(1000, 1), pattern(10, 2), pattern(5000, 3)];
    const sink = await m.createCheckpoint(0x42);
    for (const g of groups) await sink.write([g.subarray(0, 7), g.subarray(7)]);
    await sink.sync();
    await sink.close();
    assert.equal(await m.openCheckpoint(), null, 'not current before publish (the -end part is held back)');
    await sink.publish();
    assert.deepEqual(await backend.list(`${id}/checkpoint/`), [
      `${id}/checkpoint/00000003/000000000042/000000-000003e8`,
      `${id}/checkpoint/00000003/000000000042/000001-0000000a`,
      `${id}/checkpoint/00000003/000000000042/000002-00001388-end`,
    ]);
    const src = await m.openCheckpoint();
    assert.ok(src);
    const all = Buffer.concat(groups);
    assert.equal(await src.size(), all.length);
    const got = Buffer.alloc(all.length);
    let at = 0;
    while (at < all.length) {
      const n = await src.read(got.subarray(at, Math.min(all.length, at + 777)), at); // windows that straddle parts
      assert.ok(n > 0);
      at += n;
    }
    assert.deepEqual(got, all);
    // A newer one, published, replaces it: the older parts are deleted.
    const next = await m.createCheckpoint(0x50);
    await next.write([pattern(9, 4)]);
    await next.publish();
    assert.deepEqual(await backend.list(`${id}/checkpoint/`), [`${id}/checkpoint/00000003/000000000050/000000-00000009-end`]);
  });
});

describe('bucket store: the writer stops dead at each step of a flush and a checkpoint (memory backend)', () => {
  const points = [
    'flush:beforeChunkWrite',
    'flush:afterChunkWrite',
    'flush:afterMapCommit',
    'flush:afterWalReclaim',
    'checkpoint:beforeRename',
    'checkpoint:afterRename',
  ];
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  for (const point of points) {
    it(`stopped at ${point}: a new machine opens the volume; what an earlier flush wrote is intact, the stopped flush is all or nothing per block`, async () => {
      const backend = unclosable(new MemoryBackend());
      const tmp = (): string => {
        const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-s3stop-'));
        dirs.push(d);
        return d;
      };
      let armed = false;
      let hit: () => void = () => undefined;
      const stopped = new Promise<void>((r) => (hit = r));
      const a = await Store.open(tmp(), {
        backend,
        metadata: 'backend',
        failpoint: async (name) => {
          if (!armed || name !== point) return;
          hit();
          await new Promise<never>(() => undefined); // the process is gone from here on
        },
      });
      await a.createVolume('v', { size: 1024 * 1024 });
      const v = await a.openVolume('v', { ...TINY, flushIntervalMs: 60_000 });
      const first = pattern(96 * 1024, 1);
      await v.write(0, first);
      await v.flush();
      await v.close();
      const v1 = await a.openVolume('v', { ...TINY, flushIntervalMs: 60_000, flushBytes: 1 << 30 }); // one flush: the final one
      const second = pattern(96 * 1024, 2);
      await v1.write(512 * 1024, second);
      await v1.write(4096, pattern(4096, 3)); // overwrites a block of the first flush
      armed = true;
      void v1.close().catch(() => undefined); // final flush + checkpoint: stops at the point
      await stopped;

      const b = await Store.open(tmp(), { backend, metadata: 'backend' });
      const v2 = await b.openVolume('v', TINY);
      const got = await v2.read(0, first.length);
      const blk1 = got.subarray(4096, 8192);
      assert.ok(blk1.equals(first.subarray(4096, 8192)) || blk1.equals(pattern(4096, 3)), 'the overwritten block is one version or the other');
      assert.deepEqual(Buffer.concat([got.subarray(0, 4096), got.subarray(8192)]), Buffer.concat([first.subarray(0, 4096), first.subarray(8192)]));
      const got2 = await v2.read(512 * 1024, second.length);
      if (!point.startsWith('flush:before') && point !== 'flush:afterChunkWrite') {
        // Past the delta PUT: the stopped flush is durable in the bucket.
        assert.deepEqual(got2, second);
        assert.deepEqual(blk1, pattern(4096, 3));
      }
      for (let k = 0; k < second.length; k += 4096) {
        const blk = got2.subarray(k, k + 4096);
        assert.ok(blk.equals(second.subarray(k, k + 4096)) || blk.equals(Buffer.alloc(4096)), `block ${k / 4096} of the stopped flush is whole or absent`);
      }
      await v2.close();
      const report = await b.fsckVolume('v');
      assert.equal(report.errors, 0, JSON.stringify(report.problems));
      await b.close();
    });
  }
});

describe('BucketMapMedium epochs', () => {
  const id = 'ffeeddccbbaa99887766554433221100';
  it('a writer never deletes what a newer epoch wrote, and the newest epoch holds the current checkpoint', async () => {
    const backend = new MemoryBackend();
    const newer = new BucketMapMedium(backend, id, 2);
    const w2 = await newer.createSegment(5, Buffer.from('h2'));
    await w2.append(Buffer.from('x'), 2);
    const ck2 = await newer.createCheckpoint(5);
    await ck2.write([Buffer.from('checkpoint of epoch 2')]);
    await ck2.publish();
    // A writer of epoch 1 that lost the volume: its segment 5 and a checkpoint with a higher first segment.
    const older = new BucketMapMedium(backend, id, 1);
    const w1 = await older.createSegment(5, Buffer.from('h1'));
    await w1.append(Buffer.from('y'), 2);
    const ck1 = await older.createCheckpoint(9);
    await ck1.write([Buffer.from('late checkpoint of epoch 1')]);
    await ck1.publish(); // its cleanup must spare epoch 2's checkpoint
    assert.deepEqual(await older.listSegments(), [5]);
    await older.deleteSegment(5);
    assert.deepEqual(await backend.list(`${id}/map/`), [`${id}/map/00000002/000000000005`], 'only its own delta went');
    const reader = new BucketMapMedium(backend, id, 2);
    assert.deepEqual(await reader.listSegments(), [5]);
    assert.equal((await reader.readSegment(5)).toString(), 'h2x');
    const src = await reader.openCheckpoint();
    assert.ok(src);
    const buf = Buffer.alloc(await src.size());
    await src.read(buf, 0);
    assert.equal(buf.toString(), 'checkpoint of epoch 2');
  });
});

/** One memory "bucket" shared by two stores: closing a store must not empty it. */
function unclosable(b: Backend): Backend {
  return {
    kind: b.kind,
    put: (k, d) => b.put(k, d),
    get: (k, o, l) => b.get(k, o, l),
    delete: (k) => b.delete(k),
    list: (p) => b.list(p),
    close: async () => undefined,
  };
}

bucketStoreSuite(
  'bucket store on the memory backend',
  () => unclosable(new MemoryBackend()),
  (b) => b,
);

describe('bucket store on Ceph RGW', function () {
  this.timeout(300_000);
  let rgw: RgwCluster;
  const opened: S3Backend[] = [];
  before(async function () {
    this.timeout(300_000);
    rgw = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.close();
  });
  after(async () => {
    for (const b of opened) await b.close();
  });
  bucketStoreSuite(
    'S3Backend',
    () => {
      const b = new S3Backend(rgwOptions(rgw));
      opened.push(b);
      return b;
    },
    (b) => {
      const s3 = b as S3Backend;
      const again = new S3Backend({ ...rgwOptions(rgw), prefix: s3.prefix });
      opened.push(again);
      return again;
    },
    true,
  );
});
