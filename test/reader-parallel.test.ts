import * as assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { MemoryBackend } from '../src/backend/memory-backend';
import { Store } from '../src/store/store';
import { pattern } from './backend-suite';
import { tmpDir } from './helpers/fuse-env';

/** A remote-like backend: every read takes `delayMs`; counts reads in flight (what S3 latency rewards). */
class SlowBackend extends MemoryBackend {
  readonly remote = true;
  inFlight = 0;
  peak = 0;
  gets = 0;
  constructor(private readonly delayMs: number) {
    super();
  }
  override async get(key: string, offset?: number, length?: number): Promise<Buffer> {
    this.gets++;
    this.inFlight++;
    this.peak = Math.max(this.peak, this.inFlight);
    try {
      await new Promise((r) => setTimeout(r, this.delayMs));
      return await super.get(key, offset, length);
    } finally {
      this.inFlight--;
    }
  }
}

describe('Reader: parallel ranged reads and readahead against a remote backend', () => {
  const MiB = 1 << 20;
  let dir: string;
  let be: SlowBackend;
  let store: Store;
  const data = pattern(24 * MiB, 21);

  beforeEach(async () => {
    dir = await tmpDir('rpar');
    be = new SlowBackend(20);
    store = await Store.open(dir, { backend: be, diskCacheBytes: 0 });
    await store.createVolume('v', { size: 32 * MiB });
    const vol = await store.openVolume('v');
    await vol.write(0, data);
    await vol.close(); // flushed: every block is in the backend only
    be.gets = 0;
    be.peak = 0;
  });
  afterEach(async () => {
    await store.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('a large read goes out as several ranged reads in parallel', async () => {
    const vol = await store.openVolume('v', { readaheadBytes: 0 });
    assert.ok((await vol.read(0, 4 * MiB)).equals(data.subarray(0, 4 * MiB)));
    assert.ok(be.gets >= 4, `${be.gets} reads`);
    assert.ok(be.peak >= 4, `${be.peak} reads in flight at once`);
    await vol.close();
  });

  it('a sequential stream of 1 MiB reads keeps several readahead reads in flight (8 MiB by default for a remote backend)', async () => {
    const vol = await store.openVolume('v');
    for (let off = 0; off < data.length; off += MiB) {
      assert.ok((await vol.read(off, MiB)).equals(data.subarray(off, off + MiB)), `at ${off}`);
    }
    assert.ok(be.peak >= 6, `${be.peak} reads in flight at once`);
    assert.ok(be.gets <= 24 + 24, `${be.gets} reads: no block fetched twice over`);
    await vol.close();
  });
});
