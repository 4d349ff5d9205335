/**
 * Using vbfs as a library, without FUSE: create a store and a volume, write at
 * unaligned offsets, fsync (the durability point), read back, close and reopen.
 *
 *   npm run build && node dist/examples/library.js [store-dir]
 *
 * In your own project: `import { Store } from 'vbfs'`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store, isVbfsError } from '../src/index';

async function main(): Promise<void> {
  const dir = process.argv[2] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-example-'));
  const store = await Store.open(dir);

  const name = 'example';
  if (!(await store.listVolumes()).some((v) => v.name === name)) {
    await store.createVolume(name, { size: 1024 ** 3, durability: 'batched' }); // 1 GiB, sparse
  }
  const vol = await store.openVolume(name);

  const greeting = Buffer.from('hello from vbfs\n');
  await vol.write(12345, greeting); // any offset, any length
  await vol.write(512 * 1024 * 1024, Buffer.alloc(1024 * 1024, 0xab)); // 1 MiB in the middle
  await vol.fsync(); // from here on, both writes survive kill -9 and power loss

  const back = await vol.read(12345, greeting.length);
  console.log(`read back: ${JSON.stringify(back.toString())}`);
  console.log(`never written range reads as zeros: ${(await vol.read(0, 16)).every((b) => b === 0)}`);

  try {
    await vol.read(1024 ** 3 - 10, 100);
  } catch (err) {
    if (isVbfsError(err, 'VBFS_OUT_OF_RANGE')) console.log(`past the end is refused: ${err.message}`);
    else throw err;
  }

  const s = vol.stats();
  console.log(`writes=${s.writes} walWrites=${s.walWrites} walSyncs=${s.walSyncs} pendingBytes=${s.pendingBytes}`);
  await vol.close(); // flushes to chunk objects, checkpoints, releases the lock

  const again = await store.openVolume(name, { readOnly: true });
  console.log(`after reopen: ${JSON.stringify((await again.read(12345, greeting.length)).toString())}`);
  await store.close();
  console.log(`store: ${dir}`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
