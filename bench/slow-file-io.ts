/**
 * A FileIO for the engine benchmark: the real NodeFileIO, plus
 *  - a fixed delay added to every datasync()/sync() of a file (2 ms ~ an SD card,
 *    10 ms ~ WSL's 9P passthrough), the cost the reference's "ms per block" table
 *    is about. fsyncDir is left alone: it is not on the per-block path.
 *  - counters of write calls and syncs, split into WAL files (any path with a
 *    `/wal/` component) and everything else, so the bench can show "one WAL write
 *    call per batch" from the outside instead of trusting the engine's own stats.
 *  - optionally a write bandwidth (bytes/s) shared by every file, like one slow
 *    disk (an SD card, a throttled loop device): writes queue for the disk and each
 *    takes its size / bandwidth before it reaches the real file.
 */
import { PassThroughFileIO } from '../src/io/pass-through-file-io';
import type { FileHandle, FileIO, OpenMode } from '../src/io/file-io';
import { NodeFileIO } from '../src/io/node-file-io';

export interface IoCounts {
  walWrites: number; // write() + writev() calls on WAL files
  walWriteBytes: number;
  walSyncs: number; // datasync() + sync() on WAL files
  otherWrites: number;
  otherSyncs: number;
  dirSyncs: number;
}

export function zeroCounts(): IoCounts {
  return { walWrites: 0, walWriteBytes: 0, walSyncs: 0, otherWrites: 0, otherSyncs: 0, dirSyncs: 0 };
}

export function diffCounts(a: IoCounts, b: IoCounts): IoCounts {
  const out = zeroCounts();
  for (const k of Object.keys(out) as (keyof IoCounts)[]) out[k] = b[k] - a[k];
  return out;
}

/** WAL segment files only: not the spare segments zero-filled in the background (once per volume, off the write path). */
const isWal = (p: string): boolean => /(^|\/)wal\/[0-9a-f]{16}\.wal$/.test(p);

function delay(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}

class SlowHandle implements FileHandle {
  private readonly wal: boolean;
  constructor(
    private readonly inner: FileHandle,
    private readonly io: SlowFileIO,
  ) {
    this.wal = isWal(inner.path);
  }
  get path(): string {
    return this.inner.path;
  }
  async write(buf: Uint8Array, position: number): Promise<void> {
    this.countWrite(buf.length);
    await this.io.throttle(buf.length);
    return this.inner.write(buf, position);
  }
  async writev(bufs: readonly Uint8Array[], position: number): Promise<void> {
    const n = bufs.reduce((s, b) => s + b.length, 0);
    this.countWrite(n);
    await this.io.throttle(n);
    return this.inner.writev(bufs, position);
  }
  read(buf: Uint8Array, position: number): Promise<number> {
    return this.inner.read(buf, position);
  }
  async datasync(): Promise<void> {
    this.countSync();
    await this.inner.datasync();
    await delay(this.io.syncDelayMs);
  }
  async sync(): Promise<void> {
    this.countSync();
    await this.inner.sync();
    await delay(this.io.syncDelayMs);
  }
  truncate(length: number): Promise<void> {
    return this.inner.truncate(length);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  private countWrite(bytes: number): void {
    const c = this.io.counts;
    if (this.wal) {
      c.walWrites++;
      c.walWriteBytes += bytes;
    } else c.otherWrites++;
  }
  private countSync(): void {
    if (this.wal) this.io.counts.walSyncs++;
    else this.io.counts.otherSyncs++;
  }
}

export class SlowFileIO extends PassThroughFileIO {
  readonly counts = zeroCounts();
  /** Write bandwidth in bytes/s shared by all files; 0 = unthrottled. */
  writeBytesPerSec = 0;
  private diskFreeAt = 0;
  constructor(
    public syncDelayMs = 0,
    inner: FileIO = new NodeFileIO(),
  ) {
    super(inner);
  }

  /** Wait for the disk: writes are served one after another at writeBytesPerSec. */
  throttle(bytes: number): Promise<void> {
    if (this.writeBytesPerSec <= 0) return Promise.resolve();
    const now = performance.now();
    this.diskFreeAt = Math.max(now, this.diskFreeAt) + (bytes / this.writeBytesPerSec) * 1000;
    return delay(this.diskFreeAt - now);
  }

  snapshot(): IoCounts {
    return { ...this.counts };
  }
  override async open(path: string, mode: OpenMode): Promise<FileHandle> {
    return new SlowHandle(await this.inner.open(path, mode), this);
  }
  override fsyncDir(path: string): Promise<void> {
    this.counts.dirSyncs++;
    return this.inner.fsyncDir(path);
  }
}
