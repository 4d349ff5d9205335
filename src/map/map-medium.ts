import { syncFailed } from '../errors';
import type { FileHandle, FileIO } from '../io/file-io';

/**
 * Where the map store's bytes live. MapStore (map-store.ts) decides what the frames
 * mean; a medium only stores them: the local directory (FileMapMedium: the files
 * `map/<16 hex>.log` and `map/checkpoint`, byte for byte as before the medium
 * existed), or a bucket (BucketMapMedium in bucket-map-medium.ts: one immutable
 * object per commit, a checkpoint as a run of part objects). Both hold exactly the
 * same frames, so one loader and one fsck read both.
 */
export interface MapMedium {
  /**
   * Can the newest segment end in a torn tail? A file can (a commit write that never
   * completed its fdatasync); an object cannot (a PUT is all or nothing), so in a
   * bucket any damage is corruption.
   */
  readonly tornTails: boolean;
  /** One segment per commit (a bucket: objects are never appended to) or many (a file). */
  readonly segmentPerCommit: boolean;
  /**
   * Checkpoint once this many segments wait to be replayed, whatever their bytes (a
   * bucket: every delta is one GET on open). Undefined: bytes alone decide.
   */
  readonly maxSegments?: number;
  /** Where segment `n` (or the checkpoint) lives, for messages and fsck reports. */
  describe(what: number | 'checkpoint'): string;
  /** The current checkpoint, for reading frame by frame; null if there is none. */
  openCheckpoint(): Promise<MapSource | null>;
  /** Numbers of the log segments present, ascending. */
  listSegments(): Promise<number[]>;
  readSegment(n: number): Promise<Buffer>;
  deleteSegment(n: number): Promise<void>;
  /** Make the deletes before it durable (a file: fsync the directory). */
  syncDeletes(): Promise<void>;
  /** Cut segment `n` to `length` bytes, durably (only where tornTails). */
  truncateSegment(n: number, length: number): Promise<void>;
  /** Start segment `n`, whose first bytes are `header` (durable before any commit is). */
  createSegment(n: number, header: Buffer): Promise<MapSegmentWriter>;
  /** Start a checkpoint whose log continues at segment `firstSegment`. */
  createCheckpoint(firstSegment: number): Promise<CheckpointSink>;
  /**
   * Writable open: remove what a crashed checkpoint write left behind (a bucket:
   * part objects of a checkpoint that was never completed, older checkpoints).
   */
  cleanup?(): Promise<void>;
}

/** Random reads of a checkpoint (a FileHandle is one). */
export interface MapSource {
  read(buf: Uint8Array, position: number): Promise<number>;
  size(): Promise<number>;
  close(): Promise<void>;
}

export interface MapSegmentWriter {
  /** Append `bytes` at `position` (the segment's length so far); durable when it resolves. */
  append(bytes: Buffer, position: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * A checkpoint being written: `write` streams consecutive groups of frames; `sync`
 * makes them durable but not yet current; `publish` makes the checkpoint the current
 * one, atomically (the old one is gone or ignored from then on).
 */
export interface CheckpointSink {
  write(group: readonly Buffer[]): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
  publish(): Promise<void>;
  /**
   * After publish() failed: whether the checkpoint is current anyway (a bucket: its
   * last part landed but the answer was lost after every retry), found by looking.
   * Rejects when that cannot be told either. Absent: a failed publish never counts.
   */
  published?(): Promise<boolean>;
}

const CHECKPOINT = 'checkpoint';
/** A map log segment file of the local medium. */
export const mapSegmentName = (n: number): string => n.toString(16).padStart(16, '0') + '.log';

/**
 * The local directory: segments are files appended to with one write + fdatasync per
 * commit; the checkpoint is created atomically (checkpoint.tmp, fdatasync, rename,
 * fsync of the directory).
 */
export class FileMapMedium implements MapMedium {
  readonly tornTails = true;
  readonly segmentPerCommit = false;

  constructor(
    private readonly fileIO: FileIO,
    private readonly dir: string,
  ) {}

  describe(what: number | 'checkpoint'): string {
    return what === 'checkpoint' ? `${this.dir}/${CHECKPOINT}` : `${this.dir}/${mapSegmentName(what)}`;
  }

  async openCheckpoint(): Promise<MapSource | null> {
    const path = this.describe('checkpoint');
    if (!(await this.fileIO.stat(path))) return null;
    return this.fileIO.open(path, 'r');
  }

  async listSegments(): Promise<number[]> {
    const names = (await this.fileIO.readdir(this.dir)).filter((n) => /^[0-9a-f]{16}\.log$/.test(n));
    return names.map((n) => parseInt(n.slice(0, 16), 16)).sort((a, b) => a - b);
  }

  readSegment(n: number): Promise<Buffer> {
    return this.fileIO.readFile(this.describe(n));
  }

  deleteSegment(n: number): Promise<void> {
    return this.fileIO.unlink(this.describe(n));
  }

  syncDeletes(): Promise<void> {
    return this.fileIO.fsyncDir(this.dir);
  }

  async truncateSegment(n: number, length: number): Promise<void> {
    const fd = await this.fileIO.open(this.describe(n), 'r+');
    await fd.truncate(length);
    await fd.datasync();
    await fd.close();
  }

  async createSegment(n: number, header: Buffer): Promise<MapSegmentWriter> {
    const fd = await this.fileIO.open(this.describe(n), 'w+');
    try {
      await fd.write(header, 0);
      await fd.datasync();
      await this.fileIO.fsyncDir(this.dir);
    } catch (err) {
      // Out of space: the next append opens it again (w+ starts it over).
      await fd.close().catch(() => undefined);
      throw err;
    }
    return {
      append: async (bytes, position) => {
        // A failed write (out of space) leaves the caller's position alone: the next
        // commit rewrites the same range. A failed fdatasync is not retryable (the
        // kernel may have dropped the pages): syncFailed() makes the volume fail.
        await fd.write(bytes, position);
        await fd.datasync().catch((err: unknown) => {
          throw syncFailed('map log fdatasync failed', err);
        });
      },
      close: () => fd.close(),
    };
  }

  async createCheckpoint(): Promise<CheckpointSink> {
    const tmp = `${this.dir}/${CHECKPOINT}.tmp`;
    const fd: FileHandle = await this.fileIO.open(tmp, 'w+');
    let pos = 0;
    return {
      write: async (group) => {
        await fd.writev(group, pos);
        for (const g of group) pos += g.length;
      },
      sync: () => fd.datasync(),
      close: () => fd.close(),
      publish: async () => {
        await this.fileIO.rename(tmp, this.describe('checkpoint'));
        await this.fileIO.fsyncDir(this.dir);
      },
    };
  }
}
