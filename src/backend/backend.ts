import { VbfsError } from '../errors';

/**
 * Where chunk objects live. Keys are '/'-separated relative names
 * (`<volumeId>/chunks/<id>`). Every implementation passes test/backend-suite.ts.
 *
 * Contract:
 *  - `put` is atomic and durable when it resolves: a reader sees the whole object
 *    or none of it, also after a crash.
 *  - `get` with offset/length is a ranged read (one request); reading past the end
 *    of the object returns the bytes that exist.
 *  - `delete` of a missing key succeeds.
 *  - `list(prefix)` returns all keys starting with prefix, sorted.
 */
export interface Backend {
  readonly kind: string;
  put(key: string, data: Uint8Array): Promise<void>;
  get(key: string, offset?: number, length?: number): Promise<Buffer>;
  delete(key: string): Promise<void>;
  list(prefix: string): Promise<string[]>;
  /**
   * Optional: after every key under `prefix` was deleted (a deleted volume's id),
   * drop what the backend still keeps for it (FileBackend: the empty directories).
   */
  removeEmpty?(prefix: string): Promise<void>;
  close(): Promise<void>;
  /** Where the object for `key` lives (a file path, a URL), for messages that name it. */
  describe?(key: string): string;
  /**
   * Optional: a network store (S3), where each request pays a round trip, so the
   * reader keeps several requests in flight and reads further ahead.
   */
  readonly remote?: boolean;
  /** Optional: counters for a volume's `.stats` (shared by every volume of the store). */
  counters?(): BackendCounters;
  /**
   * Optional: drop any local copy of `key` (a disk cache). The reader calls it when
   * a record read through the backend fails its checksum, then reads once more.
   */
  invalidate?(key: string): Promise<void>;
  /**
   * Optional: `get(key, offset, dst.length)` into the caller's buffer; resolves with
   * the bytes read (short at the end of the object). The reader passes buffers it
   * reuses: a fresh buffer per read costs page faults and garbage collection.
   */
  getInto?(key: string, offset: number, dst: Buffer): Promise<number>;
}

/** What a backend counts (all optional: a local directory has no retries or cache). */
export interface BackendCounters {
  /** Requests sent (S3: HTTP attempts, retries included). */
  requests?: number;
  /** Requests that were retries of a failed attempt (5xx, SlowDown, timeout, reset). */
  retries?: number;
  /** Operations that failed for good (after their retries, or not retryable; a missing object not counted). */
  errors?: number;
  /** Disk chunk cache: ranged reads answered from the local disk / that went to the bucket, bytes held. */
  diskCacheHits?: number;
  diskCacheMisses?: number;
  diskCacheBytes?: number;
}

/**
 * The argument checks every backend makes before any I/O (the public methods call
 * them; backend-suite.ts tests them on each implementation): a key is a relative
 * '/'-path with no empty, '.' or '..' part, so no key reaches outside the backend's
 * root, and a ranged read has a whole, non-negative offset and length.
 */
export function validKey(key: string): void {
  if (key.length === 0 || key.startsWith('/') || key.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid backend key '${key}'`, { key });
  }
}

export function checkRange(offset: number, length: number | undefined): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid backend read offset ${offset}`);
  }
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid backend read length ${length}`);
  }
}
