/**
 * The FUSE handlers driven directly (no kernel, no libfuse) against a real Store:
 * callback contract (negative errno, byte counts, exactly one answer), buffer
 * ownership, fixed size, .stats, and volumes created after "mount".
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { constants } from 'node:os';
import { constants as fsc } from 'node:fs';
import { Store } from '../src/store/store';
import { VolumeFs } from '../src/fuse/volume-fs';
import type { FuseOps } from '../src/fuse/types';
import { silentLogger } from '../src/store/types';
import { tmpDir } from './helpers/fuse-env';

const E = constants.errno;

/** Call a handler and collect its one answer; fail if it answers twice. */
function ask<T extends unknown[]>(fn: (cb: (...args: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    let answered = false;
    fn((...args: T) => {
      if (answered) return reject(new Error('callback called twice'));
      answered = true;
      resolve(args);
      // A late second call would still be caught by the next tick.
    });
  });
}

describe('volume-fs handlers (driven without a kernel)', function () {
  this.timeout(30_000);
  let dir = '';
  let store: Store;
  let vfs: VolumeFs;
  let ops: FuseOps;

  before(async () => {
    dir = await tmpDir('vfs');
    store = await Store.open(dir);
    await store.createVolume('a', { size: 4 * 1024 * 1024 });
    vfs = new VolumeFs({ store, storeDir: dir, logger: silentLogger });
    await vfs.openAll();
    ops = vfs.ops();
  });

  after(async () => {
    await vfs?.closeVolumes();
    await store?.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  async function open(path: string, flags: number): Promise<number> {
    const [err, fd] = await ask<[number, number?]>((cb) => ops.open(path, flags, cb));
    assert.equal(err, 0, `open ${path}`);
    return fd!;
  }

  it('answers write with the byte count and keeps its own copy of the data', async () => {
    const fd = await open('/a', fsc.O_RDWR);
    const data = randomBytes(10_000);
    const kernelBuf = Buffer.from(data);
    const [n] = await ask<[number]>((cb) => ops.write('/a', fd, kernelBuf, kernelBuf.length, 4093, cb));
    assert.equal(n, 10_000);
    kernelBuf.fill(0); // what fuse-native's detach does to us after cb
    const out = Buffer.alloc(10_000);
    const [r] = await ask<[number]>((cb) => ops.read('/a', fd, out, out.length, 4093, cb));
    assert.equal(r, 10_000);
    assert.deepEqual(out, data);
    const [f] = await ask<[number]>((cb) => ops.fsync('/a', 1, fd, cb));
    assert.equal(f, 0);
    const [fl] = await ask<[number]>((cb) => ops.flush('/a', fd, cb));
    assert.equal(fl, 0);
    await ask((cb) => ops.release('/a', fd, cb));
  });

  it('clamps at the end of the volume: short read, ENOSPC past the end, short write across it', async () => {
    const fd = await open('/a', fsc.O_RDWR);
    const size = 4 * 1024 * 1024;
    const [r] = await ask<[number]>((cb) => ops.read('/a', fd, Buffer.alloc(100), 100, size - 10, cb));
    assert.equal(r, 10);
    const [eof] = await ask<[number]>((cb) => ops.read('/a', fd, Buffer.alloc(100), 100, size, cb));
    assert.equal(eof, 0);
    const [past] = await ask<[number]>((cb) => ops.write('/a', fd, Buffer.alloc(10), 10, size, cb));
    assert.equal(past, -E.ENOSPC);
    const [across] = await ask<[number]>((cb) => ops.write('/a', fd, Buffer.alloc(100, 1), 100, size - 40, cb));
    assert.equal(across, 40);
    await ask((cb) => ops.release('/a', fd, cb));
  });

  it('refuses writes on a read-only handle and unknown handles with negative errno', async () => {
    const fd = await open('/a', fsc.O_RDONLY);
    const [w] = await ask<[number]>((cb) => ops.write('/a', fd, Buffer.alloc(1), 1, 0, cb));
    assert.equal(w, -E.EBADF);
    const [bad] = await ask<[number]>((cb) => ops.read('/a', 987654, Buffer.alloc(1), 1, 0, cb));
    assert.equal(bad, -E.EBADF);
    await ask((cb) => ops.release('/a', fd, cb));
    const [missing] = await ask<[number]>((cb) => ops.open('/nope', fsc.O_RDONLY, cb));
    assert.equal(missing, -E.ENOENT);
  });

  it('accepts truncate to the same size only', async () => {
    const [same] = await ask<[number]>((cb) => ops.truncate('/a', 4 * 1024 * 1024, cb));
    assert.equal(same, 0);
    const [other] = await ask<[number]>((cb) => ops.truncate('/a', 0, cb));
    assert.equal(other, -E.EOPNOTSUPP);
  });

  it('serves .stats read-only, with getattr size equal to the text read', async () => {
    const [werr] = await ask<[number]>((cb) => ops.open('/.stats', fsc.O_WRONLY, cb));
    assert.equal(werr, -E.EACCES);
    const [, st] = await ask<[number, { size: number }?]>((cb) => ops.getattr('/.stats', cb));
    const fd = await open('/.stats', fsc.O_RDONLY);
    const buf = Buffer.alloc(65536);
    const [n] = await ask<[number]>((cb) => ops.read('/.stats', fd, buf, buf.length, 0, cb));
    assert.equal(n, st!.size);
    assert.match(buf.subarray(0, n).toString(), /\[a\]\n/);
    await ask((cb) => ops.release('/.stats', fd, cb));
  });

  it('lists a volume created after the mount and opens it on lookup', async () => {
    await store.createVolume('later', { size: 1024 * 1024 });
    await new Promise((r) => setTimeout(r, 300)); // past the rescan throttle
    const [err, names] = await ask<[number, string[]?]>((cb) => ops.readdir('/', cb));
    assert.equal(err, 0);
    assert.ok(names!.includes('later'));
    const [gerr, st] = await ask<[number, { size: number }?]>((cb) => ops.getattr('/later', cb));
    assert.equal(gerr, 0);
    assert.equal(st!.size, 1024 * 1024);
    await assert.rejects(store.deleteVolume('later'), { code: 'VBFS_BUSY' });
  });

  it('can retry openAll after a failed attempt (locked volume), as a remount after kill -9 does', async () => {
    const second = new VolumeFs({ store, storeDir: dir, logger: silentLogger });
    await assert.rejects(second.openAll(), { code: 'VBFS_LOCKED' });
    await vfs.closeVolumes(); // the holder goes away
    await second.openAll();
    assert.deepEqual(second.openVolumes().map((v) => v.name).sort(), ['a', 'later']);
    await second.closeVolumes();
  });
});
