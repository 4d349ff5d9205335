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
    expected[name] = createHash('sha256')
      .update(await v.read(0, SIZE))
      .digest('hex');
    // Abandon the volume without close(): the WAL keeps the last writes.
  }
  for (const name of VOLUMES) fs.rmSync(path.join(FIX, 'volumes', name, 'LOCK'), { force: true });
  fs.writeFileSync(path.join(FIX, 'expected.json'), JSON.stringify(expected, null, 2) + '\n');
}

/** The version field of a checkpoint's 'K' header (frame header 8 bytes, then "KVBFSCKP", then u16). */
function checkpointVersion(file: string): number {
  return fs.readFileSync(file).readUInt16LE(8 + 8);
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
        const meta = (): number =>
          (JSON.parse(fs.readFileSync(path.join(tmp, 'volumes', name, 'volume.json'), 'utf8')) as { formatVersion: number }).formatVersion;
        const ro = await store.openVolume(name, { readOnly: true });
        assert.equal(
          createHash('sha256')
            .update(await ro.read(0, SIZE))
            .digest('hex'),
          expected[name],
        );
        await ro.close();
        assert.equal(meta(), 1, 'a read-only open leaves a format 1 volume as it is');
        const v = await store.openVolume(name);
        assert.equal(meta(), 2, 'opened for writing, the volume is upgraded to format 2 before any format 2 segment is written');
        const got = createHash('sha256')
          .update(await v.read(0, SIZE))
          .digest('hex');
        assert.equal(got, expected[name]);
        // And it stays readable after a clean close (flush + checkpoint of the replayed WAL),
        // which writes the checkpoint in format 2 (extents).
        await v.close();
        assert.equal(checkpointVersion(path.join(tmp, 'volumes', name, 'map', 'checkpoint')), 2, 'the next checkpoint is rewritten as version 2');
        const again = await store.openVolume(name);
        assert.equal(
          createHash('sha256')
            .update(await again.read(0, SIZE))
            .digest('hex'),
          expected[name],
        );
        await store.close();
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  }
});

/**
 * A store written with checkpoint format 2 and map log format 3 (extents) is kept
 * under test/fixtures/store-v2: two sparse 256 TiB volumes (2^39 blocks of 512
 * bytes, raw and LZ4) with a sequential run (one extent per chunk), a run split by
 * an overwrite, and blocks near 2^24, 2^31, across the 2^32 edge and at the ends of
 * a 16 TiB and of this volume; a checkpoint, a map log after it, and WAL records never
 * flushed. Every later build must open it and read the same bytes.
 * Regenerate only for a new format version: VBFS_WRITE_FIXTURES=1.
 */
const FIX2 = path.join(__dirname, '..', '..', 'test', 'fixtures', 'store-v2');
const BS2 = 512;
const SIZE2 = 256 * 2 ** 40;
/** [first block, blocks] of every region written. */
const REGIONS2: [number, number][] = [
  [0, 300],
  [2 ** 24 - 2, 4],
  [2 ** 31 - 1, 2],
  [2 ** 32 - 3, 6],
  [2 ** 35 - 2, 2],
  [2 ** 39 - 2, 2],
];

async function digest2(v: { read(offset: number, length: number): Promise<Buffer> }): Promise<string> {
  const h = createHash('sha256');
  // Each region with a block of margin on both sides (reads as zeros).
  for (const [b, n] of REGIONS2) h.update(await v.read(Math.max(0, b - 1) * BS2, Math.min(SIZE2 / BS2 - Math.max(0, b - 1), n + 2) * BS2));
  return h.digest('hex');
}

async function generate2(): Promise<void> {
  fs.rmSync(FIX2, { recursive: true, force: true });
  const store = await Store.open(FIX2);
  const expected: Record<string, string> = {};
  for (const name of VOLUMES) {
    await store.createVolume(name, { size: SIZE2, blockSize: BS2, compression: name === 'lz4' ? 'lz4' : 'none', durability: 'batched' });
    let v = await store.openVolume(name, { chunkBytes: 64 * 1024 });
    let seed = 1;
    for (const [b, n] of REGIONS2) await v.write(b * BS2, content(seed++, n * BS2));
    await v.close(); // flush + checkpoint (version 2)
    v = await store.openVolume(name, { chunkBytes: 64 * 1024 });
    await v.write(100 * BS2 + 7, content(20, 20 * BS2)); // splits the run, unaligned
    await v.write((2 ** 32 - 1) * BS2, content(21, 2 * BS2)); // across the 2^32 edge
    await v.flush(); // map log (version 3) after the checkpoint
    await v.write(250 * BS2, content(22, 3 * BS2));
    await v.write((2 ** 39 - 1) * BS2, content(23, BS2));
    await v.fsync(); // in the WAL only
    expected[name] = await digest2(v);
    // Abandon the volume without close(): the WAL keeps the last writes.
  }
  for (const name of VOLUMES) fs.rmSync(path.join(FIX2, 'volumes', name, 'LOCK'), { force: true });
  fs.writeFileSync(path.join(FIX2, 'expected.json'), JSON.stringify(expected, null, 2) + '\n');
}

describe('format v2 store fixture (extents)', () => {
  before(async function () {
    if (process.env.VBFS_WRITE_FIXTURES === '1') await generate2();
  });

  it('holds a version 2 checkpoint, version 3 map logs, chunks and WAL records', () => {
    for (const name of VOLUMES) {
      const dir = path.join(FIX2, 'volumes', name);
      assert.equal(checkpointVersion(path.join(dir, 'map', 'checkpoint')), 2);
      const logs = fs.readdirSync(path.join(dir, 'map')).filter((f) => f.endsWith('.log'));
      assert.ok(logs.some((f) => fs.readFileSync(path.join(dir, 'map', f)).readUInt16LE(8 + 8) === 3));
      assert.ok(fs.readdirSync(path.join(dir, 'wal')).some((f) => f.endsWith('.wal') && fs.statSync(path.join(dir, 'wal', f)).size > 64));
    }
  });

  for (const name of VOLUMES) {
    it(`volume '${name}' opens and reads the bytes it was written with`, async () => {
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-fixture2-'));
      try {
        fs.cpSync(FIX2, tmp, { recursive: true });
        const expected = JSON.parse(fs.readFileSync(path.join(FIX2, 'expected.json'), 'utf8')) as Record<string, string>;
        const store = await Store.open(tmp);
        const ro = await store.openVolume(name, { readOnly: true });
        assert.equal(await digest2(ro), expected[name]);
        await ro.close();
        const v = await store.openVolume(name);
        assert.equal(await digest2(v), expected[name]);
        await v.close();
        const again = await store.openVolume(name);
        assert.equal(await digest2(again), expected[name]);
        await again.close();
        await store.close();
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  }
});
