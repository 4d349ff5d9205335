import { PassThroughFileIO } from '../../src/io/pass-through-file-io';
import type { FileHandle, FileIO, OpenMode } from '../../src/io/file-io';

/**
 * Wraps any FileIO into one slow disk: every write/writev queues for a shared
 * bandwidth (bytes/s) before it reaches the inner file, and the bytes the disk has
 * written so far are counted. Tests measure waits in disk bytes ("how much did
 * the disk write while this call was blocked"), which does not depend on how fast
 * or busy the machine is, instead of in wall-clock time.
 */
export class ThrottledFileIO extends PassThroughFileIO {
  /** Bytes of write/writev calls completed so far. */
  bytesWritten = 0;
  private diskFreeAt = 0;

  constructor(
    inner: FileIO,
    public bytesPerSec: number,
  ) {
    super(inner);
  }

  private async disk<T>(bytes: number, op: () => Promise<T>): Promise<T> {
    if (this.bytesPerSec > 0) {
      const now = performance.now();
      this.diskFreeAt = Math.max(now, this.diskFreeAt) + (bytes / this.bytesPerSec) * 1000;
      await new Promise((r) => setTimeout(r, this.diskFreeAt - now));
    }
    const out = await op();
    this.bytesWritten += bytes;
    return out;
  }

  override async open(path: string, mode: OpenMode): Promise<FileHandle> {
    const fh = await this.inner.open(path, mode);
    return {
      path: fh.path,
      write: (buf, pos) => this.disk(buf.length, () => fh.write(buf, pos)),
      writev: (bufs, pos) =>
        this.disk(
          bufs.reduce((s, b) => s + b.length, 0),
          () => fh.writev(bufs, pos),
        ),
      read: (buf, pos) => fh.read(buf, pos),
      datasync: () => fh.datasync(),
      sync: () => fh.sync(),
      truncate: (n) => fh.truncate(n),
      size: () => fh.size(),
      close: () => fh.close(),
    };
  }
}
