import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../src/backend/backend';
import { deltaKey, epochRecordKey, leaseKey } from '../src/backend/fencing';
import { S3Backend } from '../src/backend/s3-backend';
import { VbfsError, isVbfsError } from '../src/errors';
import { Store } from '../src/store/store';
import type { VolumeOpenOptions } from '../src/store/types';
import type { Volume } from '../src/store/volume';
import { pattern, rejectsWith } from './backend-suite';
import { bucketStores } from './helpers/bucket-stores';
import { FaultProxy } from './helpers/fault-proxy';
import { requireRgw, rgwOptions, type RgwCluster } from './helpers/rgw';

/** An S3Backend whose every request can be made to fail at once: a partitioned machine. */
class CuttableBackend implements Backend {
  readonly kind = 's3';
  cut = false;
  constructor(private readonly inner: S3Backend) {}
  private check(): void {
    if (this.cut) throw new VbfsError('VBFS_IO', 'network cut (test)');
  }
  async put(key: string, data: Uint8Array): Promise<void> {
    this.check();
    return this.inner.put(key, data);
  }
  async get(key: string, offset?: number, length?: number): Promise<Buffer> {
    this.check();
    return this.inner.get(key, offset, length);
  }
  async delete(key: string): Promise<void> {
    this.check();
    return this.inner.delete(key);
  }
  async list(prefix: string): Promise<string[]> {
    this.check();
    return this.inner.list(prefix);
  }
  async createIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    this.check();
    return this.inner.createIfAbsent(key, data);
  }
  async getStamped(key: string): Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }> {
    this.check();
    return this.inner.getStamped(key);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The same bucket through a backend without conditional creates: the store takes no lease (as before leases existed). */
class NoLeaseBackend implements Backend {
  readonly kind = 's3';
  constructor(private readonly inner: S3Backend) {}
  put(key: string, data: Uint8Array): Promise<void> {
    return this.inner.put(key, data);
  }
  get(key: string, offset?: number, length?: number): Promise<Buffer> {
    return this.inner.get(key, offset, length);
  }
  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }
  list(prefix: string): Promise<string[]> {
    return this.inner.list(prefix);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

const OPTS: VolumeOpenOptions = { chunkBytes: 64 * 1024, flushIntervalMs: 3_600_000 };

/**
 * The lease wired into bucket volumes (Store.openVolume), against a real Ceph RGW:
 * the epoch in the keys, fencing of a writer whose lease ran out, a fenced writer's
 * late objects and local WAL never laid over a newer epoch's data.
 */
describe('bucket volume lease in the store (Ceph RGW)', function () {
  this.timeout(120_000);
  let rgw: RgwCluster;
  const stores = bucketStores('vbfs-s3lease-');
  const tmp = stores.tmpDir;
  before(async function () {
    this.timeout(300_000);
    rgw = await requireRgw(this);
    const be = new S3Backend(rgwOptions(rgw));
    await be.ensureBucket();
    await be.close();
  });
  const open = (backend: Backend, dir: string, leaseTtlMs?: number): Promise<Store> => stores.open(backend, dir, { leaseTtlMs });

  it('takes epoch 1, then 2 after a release: the epoch is in the keys; a read-only open takes none; a second writer is refused with VBFS_LEASE_HELD', async () => {
    const prefix = rgwOptions(rgw).prefix;
    const a = await open(new S3Backend(rgwOptions(rgw, { prefix })), tmp());
    await a.createVolume('v', { size: 1024 * 1024 });
    const id = (await a.volumeInfo('v')).id;
    const v = await a.openVolume('v', OPTS);
    const b = await open(new S3Backend(rgwOptions(rgw, { prefix })), tmp());
    await rejectsWith(() => b.openVolume('v', OPTS), 'VBFS_LEASE_HELD');
    const ro = await b.openVolume('v', { ...OPTS, readOnly: true });
    await ro.close();
    await v.write(0, pattern(4096, 1));
    await v.close();
    const v2 = await b.openVolume('v', OPTS); // released on close: no wait for the TTL
    await v2.write(4096, pattern(4096, 2));
    await v2.close();
    const keys = await a.backend.list(`${id}/`);
    for (const k of [leaseKey(id, 2), epochRecordKey(id, 1), epochRecordKey(id, 2)]) assert.ok(keys.includes(k), `${k} in ${keys.join(' ')}`);
    assert.ok(
      keys.some((k) => k.startsWith(`${id}/map/00000002/`) && !k.endsWith('/epoch')) || keys.some((k) => k.startsWith(`${id}/checkpoint/00000002/`)),
      'epoch 2 wrote its map under its epoch',
    );
    const r = await b.openVolume('v', { ...OPTS, readOnly: true });
    assert.ok((await r.read(0, 8192)).equals(Buffer.concat([pattern(4096, 1), pattern(4096, 2)])));
    await r.close();
  });

  it('delete and fsck --repair take the lease: refused with VBFS_LEASE_HELD while a writer on another machine holds it; delete leaves no object behind, its lease included', async () => {
    const prefix = rgwOptions(rgw).prefix;
    const a = await open(new S3Backend(rgwOptions(rgw, { prefix })), tmp());
    await a.createVolume('v', { size: 1024 * 1024 });
    const id = (await a.volumeInfo('v')).id;
    const v = await a.openVolume('v', OPTS);
    await v.write(0, pattern(4096, 1));
    await v.flush();
    // Another machine: its store directory has no LOCK of v, only the bucket knows.
    const b = await open(new S3Backend(rgwOptions(rgw, { prefix })), tmp());
    await rejectsWith(() => b.deleteVolume('v'), 'VBFS_LEASE_HELD');
    await rejectsWith(() => b.fsckVolume('v', { repair: true }), 'VBFS_LEASE_HELD');
    assert.equal((await b.fsckVolume('v')).errors, 0, 'a read-only fsck needs no lease');
    assert.deepEqual(
      (await b.listVolumes()).map((i) => i.name),
      ['v'],
      'the refused delete changed nothing',
    );
    await v.write(4096, pattern(4096, 2)); // the writer was not disturbed
    await v.close();
    const repaired = await b.fsckVolume('v', { repair: true });
    assert.equal(repaired.errors, 0);
    const w = await b.openVolume('v', OPTS); // the repair released its lease: no wait for the TTL
    await w.close();
    await b.deleteVolume('v');
    assert.deepEqual(await b.listVolumes(), []);
    assert.deepEqual(await a.backend.list(`${id}/`), [], 'no object of the deleted volume (lease included) is left');
  });

  it('renewals go through their own S3 client: chunk PUTs held up for twice the TTL with every socket of the data client busy, and the lease stays live', async () => {
    const proxy = await FaultProxy.start(rgw.endpoint);
    try {
      // Two sockets for data: four chunk PUTs of a flush wave take both and queue the rest.
      const backend = new S3Backend(rgwOptions(rgw, { endpoint: proxy.url, maxSockets: 2 }));
      const a = await open(backend, tmp(), 3_000);
      await a.createVolume('v', { size: 4 * 1024 * 1024 });
      const v = await a.openVolume('v', OPTS);
      await v.write(0, pattern(4 * 64 * 1024, 3));
      proxy.delayWhere = (req) => (req.method === 'PUT' && (req.url ?? '').includes('/chunks/') ? 6_000 : 0);
      const t0 = Date.now();
      const flushed = v.flush();
      await new Promise((r) => setTimeout(r, 4_500)); // past the TTL, the PUTs still held
      // A write checks the lease first: VBFS_LEASE_LOST if no renewal got through.
      await v.write(512 * 1024, pattern(4096, 4));
      await flushed;
      assert.ok(Date.now() - t0 >= 5_000, 'the chunk PUTs were held up');
      proxy.delayWhere = null;
      await v.fsync();
      await v.close();
      const r = await a.openVolume('v', { ...OPTS, readOnly: true });
      assert.ok((await r.read(0, 4 * 64 * 1024)).equals(pattern(4 * 64 * 1024, 3)));
      await r.close();
    } finally {
      proxy.delayWhere = null;
      await proxy.close();
    }
  });

  it('a volume written before leases (epoch 1 deltas, no epoch record) takes epoch 1 and continues its run', async () => {
    const prefix = rgwOptions(rgw).prefix;
    const old = await open(new NoLeaseBackend(new S3Backend(rgwOptions(rgw, { prefix }))), tmp());
    await old.createVolume('v', { size: 1024 * 1024 });
    const v0 = await old.openVolume('v', OPTS);
    await v0.write(0, pattern(4096, 1));
    await v0.flush();
    await v0.write(4096, pattern(4096, 2));
    await v0.flush();
    await v0.close();
    const s = await open(new S3Backend(rgwOptions(rgw, { prefix })), tmp());
    const v1 = await s.openVolume('v', OPTS);
    await v1.write(8192, pattern(4096, 3));
    await v1.flush();
    await v1.close();
    const v2 = await s.openVolume('v', { ...OPTS, readOnly: true });
    assert.ok((await v2.read(0, 12288)).equals(Buffer.concat([pattern(4096, 1), pattern(4096, 2), pattern(4096, 3)])));
    await v2.close();
  });

  it('a writer whose lease ran out is fenced (VBFS_LEASE_LOST); its late delta never counts and its local WAL is not replayed over the newer epoch', async () => {
    const prefix = rgwOptions(rgw).prefix;
    const dirA = tmp();
    const cutA = new CuttableBackend(new S3Backend(rgwOptions(rgw, { prefix })));
    const a = await open(cutA, dirA, 2000);
    await a.createVolume('v', { size: 1024 * 1024 });
    const id = (await a.volumeInfo('v')).id;
    const va: Volume = await a.openVolume('v', OPTS);
    await va.write(0, pattern(4096, 1));
    await va.flush(); // in the bucket
    await va.write(4096, pattern(4096, 2));
    await va.fsync(); // only in A's WAL: B never sees it
    cutA.cut = true; // partitioned: renewals fail, the lease runs out on A's own clock
    await new Promise((r) => setTimeout(r, 2100));
    await rejectsWith(() => va.write(8192, pattern(4096, 3)), 'VBFS_LEASE_LOST');
    await rejectsWith(() => va.fsync(), 'VBFS_LEASE_LOST');

    // B takes over once the server says A's lease is older than its TTL.
    const b = await open(new S3Backend(rgwOptions(rgw, { prefix })), tmp());
    let vb: Volume | null = null;
    for (let i = 0; !vb; i++) {
      try {
        vb = await b.openVolume('v', OPTS);
      } catch (err) {
        if (!isVbfsError(err, 'VBFS_LEASE_HELD') || i > 30) throw err;
        await new Promise((r) => setTimeout(r, 300));
      }
    }
    assert.ok((await vb.read(0, 8192)).equals(Buffer.concat([pattern(4096, 1), Buffer.alloc(4096)])), "B sees what A flushed, not A's WAL");
    await vb.write(0, pattern(4096, 4));
    await vb.close();

    // A fenced writer's late delta (epoch 1, far past its adopted run) lands anyway:
    // never replayed (a stale header: it would fail the open if it were).
    const raw = new S3Backend(rgwOptions(rgw, { prefix }));
    await raw.put(deltaKey(id, 1, 999), Buffer.from('late delta of a fenced writer'));
    await raw.close();
    const r = await b.openVolume('v', { ...OPTS, readOnly: true }); // a reader too
    assert.ok((await r.read(0, 4096)).equals(pattern(4096, 4)));
    await r.close();

    cutA.cut = false;
    // The fenced volume flushes nothing on close, and says so: its fsynced write at 4096
    // never reached the bucket (a silent close would tell an unmount all went well).
    const closeErr = await rejectsWith(() => va.close(), 'VBFS_LEASE_LOST', 'close of a fenced volume with unflushed writes');
    assert.equal((closeErr as VbfsError).details['unflushedBytes'], 4096);
    await a.close(); // the volume is closed: the store's close has nothing left to report
    const a2 = await open(new S3Backend(rgwOptions(rgw, { prefix })), dirA);
    const v = await a2.openVolume('v', OPTS);
    // Seqs keep A's stale records from replacing B's blocks; the aside keeps them from
    // coming back in blocks B never wrote (a filesystem on top would be a mix of both).
    assert.ok((await v.read(0, 8192)).equals(Buffer.concat([pattern(4096, 4), Buffer.alloc(4096)])), "B's volume, without A's WAL replayed into it");
    assert.ok(
      fs.readdirSync(path.join(dirA, 'volumes', 'v')).some((n) => n.startsWith('wal.fenced-1-')),
      "A's WAL kept aside",
    );
    await v.close();
  });
});
