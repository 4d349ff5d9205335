import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import { isVbfsError, type VbfsErrorCode } from '../src/errors';
import { crc32cImplementation, setCrc32cAccelerator } from '../src/format/crc32c';
import { loadNativeCrc32c } from '../src/os/native-crc32c';
import { SimFS } from './helpers/sim-fs';
import { Rng } from './helpers/rng';

async function rejectsWith(p: Promise<unknown> | (() => Promise<unknown>), code: VbfsErrorCode): Promise<void> {
  await assert.rejects(typeof p === 'function' ? p() : p, (err: unknown) => {
    assert.ok(isVbfsError(err), `expected a VbfsError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    return true;
  });
}

describe('Store and Volume API', () => {
  let sim: SimFS;
  let store: Store;
  beforeEach(async () => {
    sim = new SimFS({ yieldEachOp: false });
    store = await Store.open('/s', { fileIO: sim });
  });
  afterEach(async () => {
    await store.close().catch(() => undefined);
  });

  it('creates, lists, describes and deletes volumes', async () => {
    const a = await store.createVolume('alpha', { size: 1 << 20 });
    await store.createVolume('beta', { size: 16 * 2 ** 40, blockSize: 65536, durability: 'strict', compression: 'lz4' });
    assert.equal(a.blockSize, 4096);
    assert.equal(a.durability, 'batched');
    assert.deepEqual(
      (await store.listVolumes()).map((v) => v.name),
      ['alpha', 'beta'],
    );
    const b = await store.volumeInfo('beta');
    assert.equal(b.size, 16 * 2 ** 40);
    assert.equal(b.compression, 'lz4');
    await store.deleteVolume('alpha');
    assert.deepEqual(
      (await store.listVolumes()).map((v) => v.name),
      ['beta'],
    );
    await rejectsWith(store.volumeInfo('alpha'), 'VBFS_NOT_FOUND');
  });

  it('a 16 TiB sparse volume reads zeros and takes writes at both ends', async () => {
    await store.createVolume('big', { size: 16 * 2 ** 40 });
    const v = await store.openVolume('big');
    const end = 16 * 2 ** 40;
    await v.write(end - 3, Buffer.from('xyz'));
    await v.write(0, Buffer.from('abc'));
    assert.equal((await v.read(end - 3, 3)).toString(), 'xyz');
    assert.equal((await v.read(0, 3)).toString(), 'abc');
    assert.ok((await v.read(2 ** 43, 8192)).every((x) => x === 0));
    await v.close();
    const again = await store.openVolume('big');
    assert.equal((await again.read(end - 3, 3)).toString(), 'xyz');
  });

  it('refuses bad names, sizes and options with a clear code and creates nothing', async () => {
    for (const name of ['../x', '.hidden', '', 'a/b', 'x'.repeat(65), 'a..b', ' sp']) {
      await rejectsWith(store.createVolume(name, { size: 1 << 20 }), 'VBFS_INVALID_NAME');
    }
    await rejectsWith(store.createVolume('v', { size: -1 }), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(store.createVolume('v', { size: 1000 }), 'VBFS_INVALID_ARGUMENT'); // not a block multiple
    await rejectsWith(store.createVolume('v', { size: 2 ** 49 }), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(store.createVolume('v', { size: 1 << 20, blockSize: 3000 }), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(store.createVolume('v', { size: 1 << 20, durability: 'sometimes' as never }), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(store.createVolume('v', { size: 1 << 20, compression: 'zstd' as never }), 'VBFS_INVALID_ARGUMENT');
    assert.deepEqual(await store.listVolumes(), []);
    assert.deepEqual(await sim.readdir('/s/volumes'), []);
    await rejectsWith(store.openVolume('nope'), 'VBFS_NOT_FOUND');
    await rejectsWith(store.openVolume('../etc'), 'VBFS_INVALID_NAME');
    await rejectsWith(store.deleteVolume('nope'), 'VBFS_NOT_FOUND');
    await store.createVolume('v', { size: 1 << 20 });
    await rejectsWith(store.createVolume('v', { size: 2 << 20 }), 'VBFS_EXISTS');
    assert.equal((await store.volumeInfo('v')).size, 1 << 20);
  });

  it('Store.open hands the hardware CRC-32C to format/ when the platform has it', async () => {
    setCrc32cAccelerator(null);
    const again = await Store.open('/s2', { fileIO: sim });
    assert.equal(crc32cImplementation(), loadNativeCrc32c() !== null ? 'native' : 'js');
    await again.close();
  });

  it('refuses a volume.json that decodes but breaks the store rules as corrupt, and lists it as damaged', async () => {
    const good = await store.createVolume('v', { size: 1 << 20 });
    const file = '/s/volumes/v/volume.json';
    const cases: Array<[string, Record<string, unknown>]> = [
      ['name', { name: '../x' }],
      ['block size', { blockSize: 3000 }],
      ['size', { size: 1000 }],
      ['too large', { size: 2 ** 49 }],
      ['durability', { durability: 'sometimes' }],
      ['id', { id: 'XYZ' }],
    ];
    for (const [what, patch] of cases) {
      sim.writeRaw(file, Buffer.from(JSON.stringify({ ...good, ...patch })));
      await rejectsWith(store.volumeInfo('v'), 'VBFS_CORRUPT').catch((err: Error) => assert.fail(`${what}: ${err.message}`));
      const state = await store.volumeState('v');
      assert.ok(state.damaged !== undefined && state.info === undefined, what);
    }
    sim.writeRaw(file, Buffer.from(JSON.stringify(good)));
    assert.deepEqual(await store.volumeInfo('v'), good);
  });

  it('refuses out-of-range and malformed I/O and leaves the data unchanged', async () => {
    await store.createVolume('v', { size: 1 << 20 });
    const v = await store.openVolume('v');
    await v.write(100, Buffer.from('keep'));
    await rejectsWith(v.write((1 << 20) - 2, Buffer.from('abc')), 'VBFS_OUT_OF_RANGE');
    await rejectsWith(v.write(-1, Buffer.from('a')), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(v.write(1.5, Buffer.from('a')), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(v.read(0, -5), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(v.read(1 << 20, 1), 'VBFS_OUT_OF_RANGE');
    await rejectsWith(store.openVolume('v', { durability: 'fast' as never }), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(store.openVolume('v', { chunkBytes: 10 }), 'VBFS_INVALID_ARGUMENT');
    assert.equal((await v.read(100, 4)).toString(), 'keep');
    assert.equal((await v.read((1 << 20) - 2, 2)).length, 2);
    assert.equal(v.stats().writes, 1);
  });

  it('unaligned writes across block boundaries read back exactly; unwritten bytes are zero', async () => {
    await store.createVolume('v', { size: 64 * 1024, blockSize: 512 });
    const v = await store.openVolume('v', { chunkBytes: 2048, flushBytes: 1024, writeBufferBytes: 4096 });
    const model = Buffer.alloc(64 * 1024);
    const writes: [number, number][] = [
      [1, 1],
      [511, 2],
      [1000, 3000],
      [5000, 10],
      [4090, 700],
      [0, 513],
      [60000, 5536],
    ];
    let k = 1;
    for (const [off, len] of writes) {
      const d = Buffer.alloc(len, k++);
      await v.write(off, d);
      d.copy(model, off);
      await v.flush();
    }
    assert.deepEqual(await v.read(0, model.length), model);
    assert.deepEqual(await v.read(999, 3002), model.subarray(999, 3001 + 1000));
    await v.close();
    const again = await store.openVolume('v');
    assert.deepEqual(await again.read(0, model.length), model);
  });

  it('concurrent overlapping writes keep their arrival order (also with read-modify-write)', async () => {
    await store.createVolume('v', { size: 1 << 20, blockSize: 4096 });
    let v = await store.openVolume('v');
    await v.write(0, Buffer.alloc(8192, 1));
    await v.close();
    // Persisted now: a partial write needs a backend read, a full write does not.
    v = await store.openVolume('v', { cacheBytes: 0 });
    const p1 = v.write(100, Buffer.alloc(10, 2)); // RMW of block 0 (async fetch)
    const p2 = v.write(0, Buffer.alloc(4096, 3)); // full block 0, arrives second
    const p3 = v.write(4100, Buffer.alloc(5, 4));
    await Promise.all([p1, p2, p3]);
    const got = await v.read(0, 8192);
    assert.ok(
      got.subarray(0, 4096).every((x) => x === 3),
      'the later full-block write must win',
    );
    assert.deepEqual(got.subarray(4100, 4105), Buffer.alloc(5, 4));
  });

  it('a second writer is refused while the volume is open; read-only opens and listing still work', async () => {
    await store.createVolume('v', { size: 1 << 20 });
    const v = await store.openVolume('v');
    await v.write(0, Buffer.from('data'));
    await v.fsync();
    await rejectsWith(store.openVolume('v'), 'VBFS_LOCKED');
    assert.equal(await store.isVolumeOpen('v'), true);
    await rejectsWith(store.deleteVolume('v'), 'VBFS_BUSY');
    const ro = await store.openVolume('v', { readOnly: true });
    assert.equal((await ro.read(0, 4)).toString(), 'data');
    await rejectsWith(ro.write(0, Buffer.from('x')), 'VBFS_READ_ONLY');
    assert.equal((await store.listVolumes()).length, 1);
    await v.close();
    assert.equal(await store.isVolumeOpen('v'), false);
    await rejectsWith(v.write(0, Buffer.from('x')), 'VBFS_CLOSED');
    const v2 = await store.openVolume('v');
    assert.equal((await v2.read(0, 4)).toString(), 'data');
  });

  it('durability can be overridden at open; fsync waits for the WAL in every mode but async', async () => {
    await store.createVolume('v', { size: 1 << 20, durability: 'relaxed' });
    for (const mode of ['strict', 'batched', 'relaxed'] as const) {
      const v = await store.openVolume('v', { durability: mode, batchMs: 10_000, batchBlocks: 1_000_000 });
      assert.equal(v.durability, mode);
      const syncsBefore = v.stats().walSyncs;
      await v.write(0, Buffer.alloc(4096, 7));
      if (mode === 'strict') assert.ok(v.stats().walSyncs > syncsBefore, 'strict: write returned before the WAL sync');
      else assert.equal(v.stats().walSyncs, syncsBefore, `${mode}: write must not wait for a sync`);
      await v.write(4096, Buffer.alloc(4096, 8));
      await v.fsync();
      // A power cut right now must keep both writes (only durable bytes survive it).
      const cut = sim.clone().afterCrash(new Rng(1), 'none');
      const after = await Store.open('/s', { fileIO: cut });
      const ro = await after.openVolume('v', { readOnly: true });
      assert.deepEqual(await ro.read(0, 8192), Buffer.concat([Buffer.alloc(4096, 7), Buffer.alloc(4096, 8)]), `${mode}: WAL not synced after fsync`);
      await after.close();
      await v.close();
    }
  });
});

describe('Store across processes', () => {
  it('a second process cannot open a volume another process has open', async function () {
    this.timeout(30_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-lock-'));
    const store = await Store.open(dir);
    await store.createVolume('v', { size: 1 << 20 });
    const v = await store.openVolume('v');
    const script = `
      const { Store } = require(${JSON.stringify(path.resolve(__dirname, '../src/index.js'))});
      Store.open(${JSON.stringify(dir)}).then(async (s) => {
        const names = (await s.listVolumes()).map((x) => x.name).join(',');
        try { await s.openVolume('v'); console.log('opened ' + names); }
        catch (e) { console.log(e.code + ' ' + names + ' ' + e.message); }
      });`;
    const out = await new Promise<string>((resolve) => {
      const c = spawn(process.execPath, ['-e', script]);
      let s = '';
      c.stdout.on('data', (d: Buffer) => (s += d.toString()));
      c.on('close', () => resolve(s.trim()));
    });
    assert.match(out, /^VBFS_LOCKED v .*process \d+/);
    await v.close();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
