import type { FileHandle, FileIO, FileStat, OpenMode } from './file-io';

/**
 * A FileIO that hands every call to `inner`. Fault-injecting, counting and
 * throttling layers extend it and override only what they change, usually `open`
 * (to wrap the handle) and perhaps a namespace operation.
 */
export class PassThroughFileIO implements FileIO {
  constructor(protected readonly inner: FileIO) {}

  open(path: string, mode: OpenMode): Promise<FileHandle> {
    return this.inner.open(path, mode);
  }
  readFile(path: string): Promise<Buffer> {
    return this.inner.readFile(path);
  }
  rename(from: string, to: string): Promise<void> {
    return this.inner.rename(from, to);
  }
  link(from: string, to: string): Promise<void> {
    return this.inner.link(from, to);
  }
  unlink(path: string): Promise<void> {
    return this.inner.unlink(path);
  }
  mkdir(path: string): Promise<void> {
    return this.inner.mkdir(path);
  }
  rmdir(path: string): Promise<void> {
    return this.inner.rmdir(path);
  }
  readdir(path: string): Promise<string[]> {
    return this.inner.readdir(path);
  }
  stat(path: string): Promise<FileStat | null> {
    return this.inner.stat(path);
  }
  fsyncDir(path: string): Promise<void> {
    return this.inner.fsyncDir(path);
  }
}
