import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';

/**
 * A store written by format version 1 is kept under test/fixtures/store-v1: two
 * volumes (raw and LZ4), each with a checkpoint, a map log, chunk objects and
 * fsynced WAL records that were never flushed (the writer was abandoned, as in a
 * crash). Every later build must open it and read the same bytes.
 * Regenerate only for a new format version: VBFS_WRITE_FIXTURES=1.
 */
const FIX = path.join(__dirname, '..', '..', 'test', 'fixtures', 'store-v1');
const VOLUMES = ['raw', 'lz4'] as const;
const SIZE = 1 << 20;

function content(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed * 2654435761;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    // Runs of repeated bytes, so LZ4 has something to compress.
    b[i] = (x >>> 24) & 0xf0;
  }
  return b;
}

async function generate(): Promise<void> {
  fs.rmSync(FIX, { recursive: true, force: true });
  const store = await Store.open(FIX);
  const expected: Record<string, string> = {};
  for (const name of VOLUMES) {
    await store.createVolume(name, { size: SIZE, compression: name === 'lz4' ? 'lz4' : 'none', durability: 'batched' });
    let v = await store.openVolume(name, { chunkBytes: 64 * 1024 });
    await v.write(0, content(1, 300_000));
    await v.write(500_000, content(2, 100_000));
    await v.close(); // flush + checkpoint
    v = await store.openVolume(name, { chunkBytes: 64 * 1024 });
    await v.write(200_001, content(3, 50_000)); // overlaps chunked data, unaligned
    await v.flush(); // map log after the checkpoint
    await v.write(700_000, content(4, 9000));
    await v.write(10, content(5, 100));
    await v.fsync(); // in the WAL only
    expected[name] = createHash('sha256').update(await v.read(0, SIZE)).digest('hex');
    // Abandon the volume without close(): the WAL keeps the last writes.
  }
  for (const name of VOLUMES) fs.rmSync(path.join(FIX, 'volumes', name, 'LOCK'), { force: true });
  fs.writeFileSync(path.join(FIX, 'expected.json'), JSON.stringify(expected, null, 2) + '\n');
}

describe('format v1 store fixture', () => {
  before(async function () {
    if (process.env.VBFS_WRITE_FIXTURES === '1') await generate();
  });

  it('holds WAL segments, map logs, checkpoints and chunks (the sample is meaningful)', () => {
    for (const name of VOLUMES) {
      const dir = path.join(FIX, 'volumes', name);
      assert.ok(fs.readdirSync(path.join(dir, 'wal')).some((f) => f.endsWith('.wal') && fs.statSync(path.join(dir, 'wal', f)).size > 64));
      assert.ok(fs.existsSync(path.join(dir, 'map', 'checkpoint')));
      assert.ok(fs.readdirSync(path.join(dir, 'map')).some((f) => f.endsWith('.log')));
    }
    assert.ok(fs.readdirSync(path.join(FIX, 'objects')).length === 2);
  });

  for (const name of VOLUMES) {
    it(`volume '${name}' opens and reads the bytes it was written with`, async () => {
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-fixture-'));
      try {
        fs.cpSync(FIX, tmp, { recursive: true });
        const expected = JSON.parse(fs.readFileSync(path.join(FIX, 'expected.json'), 'utf8')) as Record<string, string>;
        const store = await Store.open(tmp);
        const meta = (): number => (JSON.parse(fs.readFileSync(path.join(tmp, 'volumes', name, 'volume.json'), 'utf8')) as { formatVersion: number }).formatVersion;
        const ro = await store.openVolume(name, { readOnly: true });
        assert.equal(createHash('sha256').update(await ro.read(0, SIZE)).digest('hex'), expected[name]);
        await ro.close();
        assert.equal(meta(), 1, 'a read-only open leaves a format 1 volume as it is');
        const v = await store.openVolume(name);
        assert.equal(meta(), 2, 'opened for writing, the volume is upgraded to format 2 before any format 2 segment is written');
        const got = createHash('sha256').update(await v.read(0, SIZE)).digest('hex');
        assert.equal(got, expected[name]);
        // And it stays readable after a clean close (flush + checkpoint of the replayed WAL).
        await v.close();
        const again = await store.openVolume(name);
        assert.equal(createHash('sha256').update(await again.read(0, SIZE)).digest('hex'), expected[name]);
        await store.close();
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  }
});
