/**
 * The fuse-native patch (patches/fuse-native+2.2.6.patch, applied and built by the
 * postinstall script scripts/fuse-native-fallocate.js): fallocate(2) on a file of a
 * real FUSE mount reaches the JS handler with its mode, a 64-bit offset and length,
 * and the file handle, and the handler's answer reaches the caller. TRIM from a
 * loop device arrives this way (PUNCH_HOLE|KEEP_SIZE). In CI the rebuild must have
 * happened; elsewhere a machine without a compiler keeps the prebuilt addon, and
 * the suite says so instead of passing.
 */
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { requireFuse, tmpDir } from './helpers/fuse-env';

type Cb = (err: number, value?: unknown) => void;
interface PatchedFuse {
  new (
    mnt: string,
    ops: Record<string, unknown>,
    opts: Record<string, unknown>,
  ): {
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
  };
  supportsFallocate?: boolean;
  EOPNOTSUPP: number;
  ENOENT: number;
}

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

function fallocate(args: string[]): Promise<string | null> {
  return new Promise((resolve) => execFile('fallocate', args, (err, _o, stderr) => resolve(err ? stderr.trim() || err.message : null)));
}

describe('FUSE fuse-native patch: fallocate reaches the filesystem', function () {
  this.timeout(60_000);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const Fuse = require('fuse-native') as PatchedFuse;
  let mnt = '';
  let fuse: InstanceType<PatchedFuse> | null = null;
  const calls: Array<[string, number, number, number, number]> = [];

  before(async function () {
    requireFuse(this);
    if (Fuse.supportsFallocate !== true) {
      if (process.env['CI'] === 'true') assert.fail('fuse-native was not rebuilt with fallocate (see the postinstall output of npm ci)');
      this.skip();
    }
    mnt = path.join(await tmpDir('falloc'), 'mnt');
    await fsp.mkdir(mnt);
    const now = new Date();
    const stat = (mode: number, size: number): Record<string, unknown> => ({ mtime: now, atime: now, ctime: now, nlink: 1, size, mode, uid: 0, gid: 0 });
    const ops = {
      readdir: (_p: string, cb: Cb) => cb(0, ['f']),
      getattr: (p: string, cb: Cb) => (p === '/' ? cb(0, stat(0o40755, 4096)) : p === '/f' ? cb(0, stat(0o100600, 2 ** 40)) : cb(Fuse.ENOENT)),
      open: (_p: string, _flags: number, cb: Cb) => cb(0, 7),
      release: (_p: string, _fd: number, cb: Cb) => cb(0),
      fallocate: (p: string, mode: number, offset: number, length: number, fd: number, cb: Cb) => {
        calls.push([p, mode, offset, length, fd]);
        cb(mode & FALLOC_FL_PUNCH_HOLE || mode & FALLOC_FL_ZERO_RANGE ? 0 : Fuse.EOPNOTSUPP);
      },
    };
    const f = new Fuse(mnt, ops, {});
    await new Promise<void>((resolve, reject) => f.mount((err) => (err ? reject(err) : resolve())));
    fuse = f;
  });

  after(async () => {
    const f = fuse;
    if (f) await new Promise<void>((resolve) => f.unmount(() => resolve()));
  });

  it('passes mode, 64-bit offset and length, and the handle; returns the handler answer', async () => {
    const file = path.join(mnt, 'f');
    assert.equal(await fallocate(['--punch-hole', '--offset', '8192', '--length', '4096', file]), null);
    assert.equal(await fallocate(['--zero-range', '--offset', String(5 * 2 ** 32 + 4096), '--length', String(3 * 2 ** 20), file]), null);
    const refused = await fallocate(['--offset', '0', '--length', '10', file]);
    assert.match(refused ?? '', /not supported/i);
    assert.deepEqual(calls, [
      ['/f', FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 4096, 7],
      ['/f', FALLOC_FL_ZERO_RANGE, 5 * 2 ** 32 + 4096, 3 * 2 ** 20, 7],
      ['/f', 0, 0, 10, 7],
    ]);
  });
});
