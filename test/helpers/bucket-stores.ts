import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { Store } from '../../src/store/store';
import type { StoreOptions } from '../../src/store/types';

/**
 * Stores whose volumes live in a backend (StoreOptions.metadata 'backend'), each in a
 * temporary directory of its own; call inside a `describe`. Every store opened and
 * every directory made in a test is closed and removed after it (afterEach), so a
 * test that fails halfway leaves no open lease or lock behind for the next one.
 */
export function bucketStores(dirPrefix: string): {
  tmpDir: () => string;
  open: (backend: Backend, dir?: string, opts?: Partial<StoreOptions>) => Promise<Store>;
  /** Close this store (any kind) after the test too. */
  track: (s: Store) => Store;
} {
  const dirs: string[] = [];
  const stores: Store[] = [];
  const tmpDir = (): string => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), dirPrefix));
    dirs.push(d);
    return d;
  };
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close().catch(() => undefined);
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });
  return {
    tmpDir,
    open: async (backend, dir = tmpDir(), opts = {}) => {
      const s = await Store.open(dir, { ...opts, backend, metadata: 'backend' });
      stores.push(s);
      return s;
    },
    track: (s) => {
      stores.push(s);
      return s;
    },
  };
}
