/**
 * The file layer every on-disk structure goes through. It is passed in (never
 * reached for), so tests can hand in a fault-injecting implementation that counts
 * calls, fails at a chosen operation, or simulates power loss by dropping what was
 * not fsynced (test/helpers/sim-fs.ts).
 *
 * Semantics the engine relies on (and the simulator must honour):
 *  - `write` data is durable only after `datasync()`/`sync()` of that handle returns.
 *  - A newly created file, a rename and an unlink are durable only after
 *    `fsyncDir()` of the parent directory returns.
 *  - `write` either writes the whole buffer or rejects; no short writes reach callers.
 */
export type OpenMode =
  | 'r' // read only, must exist
  | 'r+' // read/write, must exist
  | 'wx' // read/write, create, fail if it exists
  | 'w+'; // read/write, create or truncate

export interface FileHandle {
  readonly path: string;
  /** Write all of `buf` at `position`. One call = one write(2) (or pwritev) to the OS. */
  write(buf: Uint8Array, position: number): Promise<void>;
  /**
   * Optional: write all of `buf` at `position` on the calling thread (one
   * pwrite(2), no thread-pool hop). Only for small writes whose wait for a pool
   * thread and back costs more than the copy into the page cache (the WAL's
   * record and sync marker before and after an fsync's fdatasync). A layer
   * without it gets `write` instead.
   */
  writeSync?(buf: Uint8Array, position: number): void;
  /** Gather-write all buffers contiguously at `position` with one pwritev. */
  writev(bufs: readonly Uint8Array[], position: number): Promise<void>;
  /** Read into `buf` from `position`; resolves with the number of bytes read (short at EOF). */
  read(buf: Uint8Array, position: number): Promise<number>;
  datasync(): Promise<void>;
  sync(): Promise<void>;
  truncate(length: number): Promise<void>;
  size(): Promise<number>;
  close(): Promise<void>;
}

export interface FileStat {
  size: number;
  isDirectory: boolean;
  /** Last modification time, where the file layer knows it (tells leftovers of an earlier boot). */
  mtimeMs?: number;
  /** Permission bits (st_mode & 0o7777), where the file layer knows them (private-mode.ts). */
  mode?: number;
}

export interface FileIO {
  open(path: string, mode: OpenMode): Promise<FileHandle>;
  readFile(path: string): Promise<Buffer>;
  rename(from: string, to: string): Promise<void>;
  /**
   * Hard link: `to` becomes a second name of `from`. Fails (VbfsError with
   * details.errno 'EEXIST') if `to` exists: an atomic create-if-absent of a file
   * whose content is already complete.
   */
  link(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  mkdir(path: string): Promise<void>; // recursive, ok if it exists
  rmdir(path: string): Promise<void>; // recursive remove of a directory tree
  readdir(path: string): Promise<string[]>; // names only, sorted
  stat(path: string): Promise<FileStat | null>; // null when missing
  fsyncDir(path: string): Promise<void>;
}
