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
