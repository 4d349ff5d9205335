import { type Backend, checkRange, validKey } from './backend';
import { VbfsError } from '../errors';

/**
 * Objects in a Map, for tests and for the engine's own unit tests. Data is copied on
 * the way in and on the way out: a caller that reuses its buffer after put() (the
 * flusher does, from its arena) must not change what is stored, and a caller that
 * scribbles on what get() returned must not change the stored object either.
 */
export class MemoryBackend implements Backend {
  readonly kind = 'memory';
  private readonly objects = new Map<string, Buffer>();
  private closed = false;

  async put(key: string, data: Uint8Array): Promise<void> {
    this.check(key);
    this.objects.set(key, Buffer.from(data));
  }

  async get(key: string, offset = 0, length?: number): Promise<Buffer> {
    this.check(key);
    checkRange(offset, length);
    const obj = this.objects.get(key);
    if (obj === undefined) throw new VbfsError('VBFS_NOT_FOUND', `backend object '${key}' not found`, { key });
    const start = Math.min(offset, obj.length);
    const end = length === undefined ? obj.length : Math.min(obj.length, offset + length);
    return Buffer.from(obj.subarray(start, end));
  }

  async delete(key: string): Promise<void> {
    this.check(key);
    this.objects.delete(key);
  }

  async list(prefix: string): Promise<string[]> {
    this.checkOpen();
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private checkOpen(): void {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'backend is closed');
  }

  private check(key: string): void {
    this.checkOpen();
    validKey(key);
  }
}
