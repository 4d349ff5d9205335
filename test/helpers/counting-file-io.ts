import type { FileHandle, FileIO, OpenMode } from '../../src/io/file-io';

/**
 * Wraps any FileIO (the real NodeFileIO in particular) and counts calls per kind
 * and path, the same way SimFS.count() does, so write-path tests can also run on a
 * real disk.
 */
export class CountingFileIO implements FileIO {
  private readonly counts = new Map<string, Map<string, number>>();

  constructor(private readonly inner: FileIO) {}

  count(kinds?: string | readonly string[], pathPrefix = ''): number {
    const ks = kinds === undefined ? [...this.counts.keys()] : typeof kinds === 'string' ? [kinds] : kinds;
    let total = 0;
    for (const k of ks) for (const [p, n] of this.counts.get(k) ?? []) if (p.startsWith(pathPrefix)) total += n;
    return total;
  }

  resetCounts(): void {
    this.counts.clear();
  }

  note(kind: string, path: string): void {
    let m = this.counts.get(kind);
    if (m === undefined) this.counts.set(kind, (m = new Map<string, number>()));
    m.set(path, (m.get(path) ?? 0) + 1);
  }

  async open(path: string, mode: OpenMode): Promise<FileHandle> {
    this.note('open', path);
    const fh = await this.inner.open(path, mode);
    const note = (k: string): void => this.note(k, path);
    const handle: FileHandle = {
      path: fh.path,
      write: (buf, pos) => (note('write'), fh.write(buf, pos)),
      writev: (bufs, pos) => (note('writev'), fh.writev(bufs, pos)),
      read: (buf, pos) => (note('read'), fh.read(buf, pos)),
      datasync: () => (note('datasync'), fh.datasync()),
      sync: () => (note('sync'), fh.sync()),
      truncate: (n) => (note('truncate'), fh.truncate(n)),
      size: () => (note('size'), fh.size()),
      close: () => (note('close'), fh.close()),
    };
    // Only where the inner layer has it: callers fall back to write() otherwise.
    if (fh.writeSync) {
      const writeSync = fh.writeSync.bind(fh);
      handle.writeSync = (buf, pos) => (note('writeSync'), writeSync(buf, pos));
    }
    return handle;
  }

  readFile(path: string): Promise<Buffer> {
    this.note('readFile', path);
    return this.inner.readFile(path);
  }
  rename(from: string, to: string): Promise<void> {
    this.note('rename', from);
    return this.inner.rename(from, to);
  }
  link(from: string, to: string): Promise<void> {
    this.note('link', to);
    return this.inner.link(from, to);
  }
  unlink(path: string): Promise<void> {
    this.note('unlink', path);
    return this.inner.unlink(path);
  }
  mkdir(path: string): Promise<void> {
    this.note('mkdir', path);
    return this.inner.mkdir(path);
  }
  rmdir(path: string): Promise<void> {
    this.note('rmdir', path);
    return this.inner.rmdir(path);
  }
  readdir(path: string): Promise<string[]> {
    this.note('readdir', path);
    return this.inner.readdir(path);
  }
  stat(path: string): ReturnType<FileIO['stat']> {
    this.note('stat', path);
    return this.inner.stat(path);
  }
  fsyncDir(path: string): Promise<void> {
    this.note('fsyncDir', path);
    return this.inner.fsyncDir(path);
  }
}
