/**
 * A null FUSE filesystem: one file served from memory, nothing else. It is the
 * ceiling of the FUSE layer vbfs is built on (same binding, same mount options),
 * so `fio-bench` can say how much of the gap to the local disk is FUSE's and how
 * much is vbfs's.
 *
 *   node dist/bench/null-fuse.js <mountpoint> [--size 2G] [--name file]
 *
 * Prints "ready <mountpoint>" on stdout once mounted. On SIGTERM/SIGINT it
 * unmounts and exits, unless a loop device is still attached to the file (then
 * it refuses and keeps serving: a lazy unmount under a loop device corrupts the
 * filesystem on it).
 *
 * Data lives in a Map of 64 KiB pages: unwritten pages read as zeros and take no
 * memory, so a 2 GiB file costs only what was written. fsync is a no-op.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loopDevicesFor } from './sh';

// fuse-native ships no types; this is the part of its surface used here.
type Cb = (code: number, ...rest: unknown[]) => void;
interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
}
type FuseCtor = (new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>) => FuseInstance) & {
  ENOENT: number;
  EINVAL: number;
  EFBIG: number;
};
// eslint-disable-next-line @typescript-eslint/no-require-imports -- fuse-native ships no types (FuseCtor above)
const Fuse = require('fuse-native') as FuseCtor;

/** Mount options shared with vbfs's mount (they reach libfuse through fsname). */
export const NULL_FUSE_FSNAME = 'vbfs-null,big_writes,max_write=131072';

const PAGE = 64 * 1024;

export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m || m[1] === undefined) throw new Error(`bad size: ${s}`);
  const mult: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };
  return Math.round(Number(m[1]) * (mult[(m[2] ?? '').toUpperCase()] ?? 1));
}

class PagedFile {
  private readonly pages = new Map<number, Buffer>();
  constructor(public size: number) {}

  read(into: Buffer, len: number, pos: number): number {
    const end = Math.min(pos + len, this.size);
    let done = 0;
    for (let p = pos; p < end;) {
      const idx = Math.floor(p / PAGE);
      const off = p - idx * PAGE;
      const n = Math.min(PAGE - off, end - p);
      const page = this.pages.get(idx);
      if (page) page.copy(into, done, off, off + n);
      else into.fill(0, done, done + n);
      done += n;
      p += n;
    }
    return done;
  }

  write(from: Buffer, len: number, pos: number): void {
    let done = 0;
    for (let p = pos; p < pos + len;) {
      const idx = Math.floor(p / PAGE);
      const off = p - idx * PAGE;
      const n = Math.min(PAGE - off, pos + len - p);
      let page = this.pages.get(idx);
      if (!page) {
        page = Buffer.alloc(PAGE);
        this.pages.set(idx, page);
      }
      // Copy: fuse-native detaches `from` once the callback runs.
      from.copy(page, off, done, done + n);
      done += n;
      p += n;
    }
  }

  truncate(size: number): void {
    this.size = size;
    for (const idx of [...this.pages.keys()]) if (idx * PAGE >= size) this.pages.delete(idx);
  }
}

function main(): void {
  const args = process.argv.slice(2);
  const mnt = args.find((a, i) => !a.startsWith('--') && !(args[i - 1] ?? '').startsWith('--'));
  if (!mnt) {
    process.stderr.write('usage: null-fuse <mountpoint> [--size 2G] [--name file]\n');
    process.exit(2);
  }
  const opt = (name: string, dflt: string): string => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] !== undefined ? (args[i + 1] as string) : dflt;
  };
  const name = opt('name', 'file');
  const file = new PagedFile(parseSize(opt('size', '2G')));
  const filePath = `/${name}`;
  const now = new Date();
  const fileStat = (): Record<string, unknown> => ({
    mtime: now,
    atime: now,
    ctime: now,
    size: file.size,
    mode: 0o100644,
    uid: 0,
    gid: 0,
    nlink: 1,
  });
  const dirStat = { mtime: now, atime: now, ctime: now, size: 4096, mode: 0o040755, uid: 0, gid: 0, nlink: 2 };

  const ops = {
    readdir: (p: string, cb: Cb) => (p === '/' ? cb(0, [name]) : cb(Fuse.ENOENT)),
    getattr: (p: string, cb: Cb) => {
      if (p === '/') return cb(0, dirStat);
      if (p === filePath) return cb(0, fileStat());
      return cb(Fuse.ENOENT);
    },
    fgetattr: (p: string, _fd: number, cb: Cb) => (p === filePath ? cb(0, fileStat()) : cb(0, dirStat)),
    open: (p: string, _flags: number, cb: Cb) => (p === filePath ? cb(0, 42) : cb(Fuse.ENOENT)),
    release: (_p: string, _fd: number, cb: Cb) => cb(0),
    flush: (_p: string, _fd: number, cb: Cb) => cb(0),
    fsync: (_p: string, _datasync: number, _fd: number, cb: Cb) => cb(0),
    truncate: (p: string, size: number, cb: Cb) => {
      if (p !== filePath) return cb(Fuse.ENOENT);
      file.truncate(size);
      return cb(0);
    },
    ftruncate: (_p: string, _fd: number, size: number, cb: Cb) => {
      file.truncate(size);
      return cb(0);
    },
    read: (_p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
      if (pos >= file.size) return cb(0);
      return cb(file.read(buf, len, pos));
    },
    write: (_p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
      if (pos + len > file.size) return cb(Fuse.EFBIG);
      file.write(buf, len, pos);
      return cb(len);
    },
    statfs: (_p: string, cb: Cb) =>
      cb(0, {
        bsize: PAGE,
        frsize: PAGE,
        blocks: Math.ceil(file.size / PAGE),
        bfree: 0,
        bavail: 0,
        files: 1,
        ffree: 0,
        favail: 0,
        fsid: 0,
        flag: 0,
        namemax: 255,
      }),
  };

  fs.mkdirSync(mnt, { recursive: true });
  // maxRead matches vbfs's mount (src/fuse/mount.ts), so both see the same request sizes.
  const fuse = new Fuse(mnt, ops, { fsname: NULL_FUSE_FSNAME, maxRead: 131072, force: true, mkdir: true });
  fuse.mount((err) => {
    if (err) {
      process.stderr.write(`null-fuse: mount failed: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`ready ${mnt}\n`);
  });

  let stopping = false;
  const stop = (): void => {
    const attached = loopDevicesFor(path.join(mnt, name));
    if (attached.length > 0) {
      process.stderr.write(`null-fuse: not unmounting, loop device(s) ${attached.join(' ')} still attached\n`);
      return;
    }
    if (stopping) return;
    stopping = true;
    fuse.unmount((err) => {
      if (err) process.stderr.write(`null-fuse: unmount failed: ${err.message}\n`);
      process.exit(err ? 1 : 0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (require.main === module) main();
