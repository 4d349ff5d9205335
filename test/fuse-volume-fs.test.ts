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
import type { MountableStore, MountableVolume } from '../src/store/ports';
import type { VolumeStats } from '../src/store/types';
import { silentLogger, type Logger, type VolumeInfo } from '../src/types';
import { tmpDir } from './helpers/fuse-env';
import { VbfsError } from '../src/errors';

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
    assert.deepEqual(
      second
        .openVolumes()
        .map((v) => v.name)
        .sort(),
      ['a', 'later'],
    );
    await second.closeVolumes();
  });
});

/**
 * A volume whose writes settle only when the test says so, to put a request in
 * flight across closeVolumes() (an unmount under load).
 */
class HeldVolume implements MountableVolume {
  readonly name = 'held';
  readonly size = 1024 * 1024;
  readonly blockSize = 4096;
  readonly durability = 'strict' as const;
  closed = false;
  readonly held: Array<() => void> = [];
  throwOnSize = false;
  read(): Promise<Buffer> {
    return Promise.resolve(Buffer.alloc(0));
  }
  readInto(): Promise<void> {
    return Promise.resolve();
  }
  write(): Promise<void> {
    if (this.closed) return Promise.reject(new VbfsError('VBFS_CLOSED', 'closed'));
    return new Promise((resolve) => this.held.push(resolve));
  }
  readonly trims: Array<[number, number]> = [];
  trim(offset: number, length: number): Promise<void> {
    this.trims.push([offset, length]);
    return Promise.resolve();
  }
  fsync(): Promise<void> {
    return Promise.resolve();
  }
  stats(): VolumeStats {
    return {} as VolumeStats;
  }
  close(): Promise<void> {
    // Like Volume.close(): writes already accepted complete before it resolves.
    this.closed = true;
    for (const r of this.held.splice(0)) r();
    return Promise.resolve();
  }
}

function heldStore(vol: HeldVolume): MountableStore {
  return {
    listVolumes: () => Promise.resolve([{ name: vol.name } as VolumeInfo]),
    openVolume: () => Promise.resolve(vol),
    close: () => Promise.resolve(),
  };
}

class Lines implements Logger {
  readonly lines: string[] = [];
  error(m: string): void {
    this.lines.push(`error: ${m}`);
  }
  warn(m: string): void {
    this.lines.push(`warn: ${m}`);
  }
  info(): void {}
  debug(): void {}
}

describe('volume-fs: every request is answered exactly once', function () {
  this.timeout(10_000);

  /** Collects every answer of one request; settles on the first, keeps counting after. */
  function collect(): { cb: (...a: unknown[]) => void; answers: unknown[][]; first: Promise<unknown[]> } {
    const answers: unknown[][] = [];
    let resolve!: (a: unknown[]) => void;
    const first = new Promise<unknown[]>((r) => (resolve = r));
    return {
      answers,
      first,
      cb: (...a: unknown[]) => {
        answers.push(a);
        resolve(a);
      },
    };
  }
  const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

  it('a write in flight when closeVolumes() empties the volume map is answered with its byte count', async () => {
    const vol = new HeldVolume();
    const log = new Lines();
    const vfs = new VolumeFs({ store: heldStore(vol), storeDir: '/nonexistent', logger: log });
    await vfs.openAll();
    const ops = vfs.ops();
    const o = collect();
    ops.open('/held', fsc.O_RDWR, o.cb);
    const fd = (await o.first)[1] as number;

    const w = collect();
    ops.write('/held', fd, Buffer.alloc(4096, 1), 4096, 0, w.cb);
    await tick();
    assert.equal(vol.held.length, 1, 'the write is in flight');
    await vfs.closeVolumes(); // clears the map, then close() lets the held write complete
    await Promise.race([
      w.first,
      tick()
        .then(tick)
        .then(() => assert.fail(`the in-flight write was never answered; log: ${log.lines.join(' | ')}`)),
    ]);
    await tick();
    assert.deepEqual(w.answers, [[4096]]);

    // After close: an error, once.
    const late = collect();
    ops.write('/held', fd, Buffer.alloc(4096, 1), 4096, 0, late.cb);
    await late.first;
    await tick();
    assert.deepEqual(late.answers, [[-E.EIO]]);
    assert.deepEqual(
      log.lines.filter((l) => /threw|twice/.test(l)),
      [],
    );
  });

  it('a handler that throws synchronously answers EIO once; a callback that throws is not called again', async () => {
    const vol = new HeldVolume();
    const log = new Lines();
    const vfs = new VolumeFs({ store: heldStore(vol), storeDir: '/nonexistent', logger: log });
    await vfs.openAll();
    const ops = vfs.ops();
    const o = collect();
    ops.open('/held', fsc.O_RDWR, o.cb);
    const fd = (await o.first)[1] as number;

    Object.defineProperty(vol, 'size', {
      get: () => {
        throw new Error('boom');
      },
    });
    const r = collect();
    ops.read('/held', fd, Buffer.alloc(4096), 4096, 0, r.cb);
    await r.first;
    await tick();
    assert.deepEqual(r.answers, [[-E.EIO]]);
    assert.ok(
      log.lines.some((l) => /read \/held threw: boom/.test(l)),
      log.lines.join(' | '),
    );

    // fuse-native's own callback throwing (it validates what we pass) must not
    // lead to a second answer.
    let calls = 0;
    ops.flush('/held', fd, () => {
      calls++;
      throw new Error('fuse-native says no');
    });
    await tick();
    assert.equal(calls, 1);
    await vfs.closeVolumes();
  });
});
