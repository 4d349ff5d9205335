import * as assert from 'node:assert/strict';
import { VbfsError } from '../src/errors';
import { MemoryBackend } from '../src/backend/memory-backend';
import { Store } from '../src/store/store';
import type { VolumeOpenOptions } from '../src/store/types';
import { pattern, rejectsWith } from './backend-suite';
import { bucketStores } from './helpers/bucket-stores';

/**
 * The `remote` durability mode (issue 11): an fsync returns only once what it covers
 * is in the backend (chunk objects and map delta), so a machine whose local disk
 * (WAL included) is lost right after the fsync loses nothing it acknowledged. Run on
 * an in-memory backend that says it is remote and can be slowed down or taken down;
 * test/s3-kill.test.ts does it through RGW and a real mount.
 */
class RemoteMemory extends MemoryBackend {
  readonly remote = true;
  delayMs = 0;
  down = false;
  readonly putKeys: string[] = [];

  override async put(key: string, data: Uint8Array): Promise<void> {
    if (this.down) throw new VbfsError('VBFS_IO', `backend down (test): put ${key}`);
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    this.putKeys.push(key);
    await super.put(key, data);
  }
}

/** The bucket as it is now (the keys are listed and copied without an await in between puts that matter: objects are immutable). */
async function copyOf(b: MemoryBackend): Promise<MemoryBackend> {
  const out = new MemoryBackend();
  for (const k of await b.list('')) await out.put(k, await b.get(k));
  return out;
}

// Long flush interval and large flush size: nothing reaches the bucket unless an fsync (or close) sends it.
const OPTS: VolumeOpenOptions = { chunkBytes: 64 * 1024, flushBytes: 64 << 20, flushIntervalMs: 3_600_000, backendRetryMs: 20 };

describe('remote durability', function () {
  this.timeout(60_000);
  const { tmpDir, open, track } = bucketStores('vbfs-remote-');

  it('fsync returns once the data is in the bucket: a new machine reads it with the first one never closed', async () => {
    const backend = new RemoteMemory();
    const a = await open(backend);
    await a.createVolume('v', { size: 4 << 20, durability: 'remote' });
    const v = await a.openVolume('v', OPTS);
    assert.equal(v.durability, 'remote');
    const data = pattern(3 * 4096, 5);
    await v.write(8192, data);
    await v.fsync();
    const id = (await a.volumeInfo('v')).id;
    assert.ok((await backend.list(`${id}/chunks/`)).length > 0, 'a chunk object in the bucket');
    assert.ok((await backend.list(`${id}/map/`)).length > 0, 'a map delta in the bucket');
    // The first machine's disk is gone (v never closed, its WAL never read again).
    const b = await open(backend);
    const v2 = await b.openVolume('v', { ...OPTS, readOnly: true });
    assert.deepEqual(await v2.read(8192, data.length), data);
    await v2.close();
  });

  it('concurrent fsyncs share flushes (group commit), and each covers its own write', async () => {
    const backend = new RemoteMemory();
    const a = await open(backend);
    await a.createVolume('v', { size: 4 << 20, durability: 'remote' });
    const v = await a.openVolume('v', OPTS);
    const id = (await a.volumeInfo('v')).id;
    backend.delayMs = 30; // each flush takes a while: the fsyncs pile up behind it
    const n = 8;
    const rounds = 4;
    const snapshots: { block: number; want: number; bucket: MemoryBackend }[] = [];
    await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        for (let r = 0; r < rounds; r++) {
          await v.write(i * 4096, pattern(4096, 100 + i * rounds + r));
          await v.fsync();
          // What this fsync covered must be in the bucket now: keep a copy to check below.
          snapshots.push({ block: i, want: 100 + i * rounds + r, bucket: await copyOf(backend) });
        }
      }),
    );
    const deltas = backend.putKeys.filter((k) => k.startsWith(`${id}/map/`)).length;
    // Every round's fsyncs arrive while one flush runs and share the next one: about
    // one or two map commits per round, not one per fsync (n * rounds).
    assert.ok(deltas >= rounds && deltas <= 2 * rounds + 1, `map commits for ${n * rounds} fsyncs: ${deltas}`);
    for (const snap of snapshots) {
      const c = await open(snap.bucket);
      const seen = await c.openVolume('v', { ...OPTS, readOnly: true });
      assert.deepEqual(await seen.read(snap.block * 4096, 4096), pattern(4096, snap.want), `block ${snap.block}, seed ${snap.want}`);
      await seen.close();
    }
    const b = await open(backend);
    const v2 = await b.openVolume('v', { ...OPTS, readOnly: true });
    for (let i = 0; i < n; i++) assert.deepEqual(await v2.read(i * 4096, 4096), pattern(4096, 100 + i * rounds + rounds - 1), `block ${i}`);
    await v2.close();
  });

  it('an fsync during a backend outage waits for the backend, then returns with the data in the bucket', async () => {
    const backend = new RemoteMemory();
    const a = await open(backend);
    await a.createVolume('v', { size: 4 << 20, durability: 'remote' });
    const v = await a.openVolume('v', OPTS);
    await v.write(0, pattern(4096, 1));
    backend.down = true;
    let done = false;
    const fsync = v.fsync().then(() => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(done, false, 'fsync returned while the backend was down');
    assert.equal(v.stats().backendDown, 1);
    backend.down = false;
    await fsync;
    const b = await open(backend);
    const v2 = await b.openVolume('v', { ...OPTS, readOnly: true });
    assert.deepEqual(await v2.read(0, 4096), pattern(4096, 1));
    await v2.close();
  });

  it('is refused on a local (file) backend, at create and as a mount override', async () => {
    const s = track(await Store.open(tmpDir()));
    await rejectsWith(() => s.createVolume('v', { size: 1 << 20, durability: 'remote' }), 'VBFS_INVALID_ARGUMENT');
    assert.deepEqual(await s.listVolumes(), [], 'nothing created');
    await s.createVolume('w', { size: 1 << 20 });
    await rejectsWith(() => s.openVolume('w', { durability: 'remote' }), 'VBFS_INVALID_ARGUMENT');
    const w = await s.openVolume('w'); // the refused open left no lock behind
    await w.close();
  });
});
