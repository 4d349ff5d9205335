import { PassThroughFileIO } from '../../src/io/pass-through-file-io';
import type { FileHandle, FileIO, OpenMode } from '../../src/io/file-io';
import { ioError } from '../../src/errors';

function enospc(what: string, path: string): never {
  throw ioError(`${what} ${path}`, Object.assign(new Error(`ENOSPC: no space left on device, ${what} '${path}'`), { code: 'ENOSPC' }), { path });
}

/**
 * Wraps any FileIO into a disk that can fill up. While `full`, a write/writev
 * writes the first half of its data (what fit) and then fails with ENOSPC, like
 * a real write() that ran out of blocks half way: the bytes at that offset are
 * then neither the old nor the new ones. Creating a file fails with ENOSPC too.
 * `failSyncs` makes datasync/sync fail instead (with `syncErrno`): a sync error is
 * the one failure that must never be retried.
 */
export class FullDiskFileIO extends PassThroughFileIO {
  full = false;
  failSyncs = false;
  syncErrno = 'ENOSPC';
  /** Writes and file creations refused with ENOSPC so far. */
  refused = 0;

  constructor(inner: FileIO) {
    super(inner);
  }

  private async write(fh: FileHandle, bufs: readonly Uint8Array[], pos: number): Promise<void> {
    if (!this.full) return bufs.length === 1 ? fh.write(bufs[0] as Uint8Array, pos) : fh.writev(bufs, pos);
    const all = Buffer.concat(bufs);
    const part = all.subarray(0, Math.floor(all.length / 2));
    if (part.length > 0) await fh.write(part, pos);
    this.refused++;
    enospc('write', fh.path);
  }

  private async sync(fh: FileHandle, data: boolean): Promise<void> {
    if (this.failSyncs) {
      throw ioError(`fsync ${fh.path}`, Object.assign(new Error(`${this.syncErrno}: fsync '${fh.path}'`), { code: this.syncErrno }), { path: fh.path });
    }
    return data ? fh.datasync() : fh.sync();
  }

  override async open(path: string, mode: OpenMode): Promise<FileHandle> {
    if (this.full && (mode === 'wx' || mode === 'w+')) {
      this.refused++;
      enospc('open', path);
    }
    const fh = await this.inner.open(path, mode);
    return {
      path: fh.path,
      write: (buf, pos) => this.write(fh, [buf], pos),
      writev: (bufs, pos) => this.write(fh, bufs, pos),
      read: (buf, pos) => fh.read(buf, pos),
      datasync: () => this.sync(fh, true),
      sync: () => this.sync(fh, false),
      truncate: (n) => fh.truncate(n),
      size: () => fh.size(),
      close: () => fh.close(),
    };
  }
}
