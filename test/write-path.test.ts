import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import type { VolumeTunables } from '../src/store/types';
import type { Durability } from '../src/types';
import { NodeFileIO } from '../src/io/node-file-io';
import { SimFS } from './helpers/sim-fs';
import { CountingFileIO } from './helpers/counting-file-io';
import { Rng } from './helpers/rng';

/**
 * The write path does one WAL write per batch of records, never one per block or
 * per field (Viperblock's 5 write() calls per 4 KiB block). Counted through the
 * injected file layer, not through the engine's own stats, which are cross-checked.
 */
const BS = 4096;
const REC = 32 + BS;
/** The WAL's batch buffer is 1 MiB (writer.ts WAL_BUFFER_BYTES); a bound, not an exact count. */
const BATCH = 1 << 20;
const NO_FLUSH: Partial<VolumeTunables> = {
  flushBytes: 1 << 30,
  writeBufferBytes: 64 << 20,
  flushIntervalMs: 1_000_000,
  batchMs: 1_000_000,
  batchBlocks: 1 << 20,
};

interface Counter {
  count(kinds?: string | readonly string[], prefix?: string): number;
  resetCounts(): void;
}

async function setup(
  durability: Durability,
  onDisk = false,
  extra: Partial<VolumeTunables> = {},
): Promise<{ vol: Volume; store: Store; io: Counter; wal: string; cleanup: () => Promise<void> }> {
  const dir = onDisk ? fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-wp-')) : '/store';
  const io = onDisk ? new CountingFileIO(new NodeFileIO()) : new SimFS();
  const store = await Store.open(dir, { fileIO: io });
  await store.createVolume('w', { size: 64 << 20, blockSize: BS, durability });
  const vol = await store.openVolume('w', { ...NO_FLUSH, ...extra });
  io.resetCounts();
  return {
    vol,
    store,
    io,
    // Segment files only (their names start with the 16-hex-digit number): not the spare
    // segments zero-filled in the background, once per volume, off the write path.
    wal: `${dir}/volumes/w/wal/0`,
    cleanup: async () => {
      await store.close();
      if (onDisk) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** write(2)/pwritev calls that went to WAL segments, and how many segments were created. */
function walCalls(io: Counter, wal: string): { writes: number; syncs: number; segments: number } {
  return { writes: io.count(['write', 'writev'], wal), syncs: io.count(['datasync', 'sync'], wal), segments: io.count('open', wal) };
}

/** Upper bound on WAL write calls for `blocks` records: one per full batch buffer, plus a header per segment, plus slack. */
function bound(blocks: number, segments: number): number {
  return Math.ceil((blocks * REC) / BATCH) + segments + 2;
}

describe('write path: one WAL write per batch', () => {
  it('one large write of 512 blocks (relaxed) then fsync: a handful of WAL writes', async () => {
    const { vol, io, wal, cleanup } = await setup('relaxed');
    const blocks = 512;
    await vol.write(0, new Rng(1).bytes(blocks * BS));
    await vol.fsync();
    const c = walCalls(io, wal);
    assert.ok(c.writes >= 1, 'the WAL wrote nothing');
    assert.ok(c.writes <= bound(blocks, c.segments), `${c.writes} WAL write calls for ${blocks} blocks (bound ${bound(blocks, c.segments)})`);
    assert.ok(c.syncs <= 2 + c.segments, `${c.syncs} WAL syncs for one fsync`);
    await cleanup();
  });

  it('512 separate 4 KiB writes (relaxed) then fsync: batched, not one write per block', async () => {
    const { vol, io, wal, cleanup } = await setup('relaxed');
    const rng = new Rng(2);
    const blocks = 512;
    for (let i = 0; i < blocks; i++) await vol.write(i * BS, rng.bytes(BS));
    await vol.fsync();
    const c = walCalls(io, wal);
    assert.ok(c.writes <= bound(blocks, c.segments), `${c.writes} WAL write calls for ${blocks} single-block writes (bound ${bound(blocks, c.segments)})`);
    assert.ok(c.writes < blocks / 8);
    assert.ok(c.syncs <= 2 + c.segments, `${c.syncs} WAL syncs for one fsync`);
    await cleanup();
  });

  it('512 unaligned 1 KiB writes (read-modify-write, relaxed) then fsync: still batched', async () => {
    const { vol, io, wal, cleanup } = await setup('relaxed');
    const rng = new Rng(3);
    for (let i = 0; i < 512; i++) await vol.write(i * 1536 + 100, rng.bytes(1024));
    await vol.fsync();
    const c = walCalls(io, wal);
    assert.ok(c.writes <= bound(512, c.segments), `${c.writes} WAL write calls for 512 small unaligned writes`);
    await cleanup();
  });

  it('batched mode: WAL writes and syncs grow with batches, not with blocks', async () => {
    const { vol, io, wal, cleanup } = await setup('batched', false, { batchBlocks: 32, batchMs: 5 });
    const rng = new Rng(4);
    for (let i = 0; i < 512; i++) await vol.write(i * BS, rng.bytes(BS));
    await vol.fsync();
    const c = walCalls(io, wal);
    assert.ok(c.writes < 512 / 8, `${c.writes} WAL write calls for 512 single-block writes in batched mode`);
    assert.ok(c.syncs < 512 / 8, `${c.syncs} WAL syncs for 512 single-block writes in batched mode`);
    await cleanup();
  });

  it('strict mode: one multi-block write is one sync (and few writes), not one per block', async () => {
    const { vol, io, wal, cleanup } = await setup('strict');
    await vol.write(0, new Rng(5).bytes(128 * BS));
    const c = walCalls(io, wal);
    assert.ok(c.writes <= bound(128, c.segments), `${c.writes} WAL write calls for one 128-block strict write`);
    assert.ok(c.syncs >= 1, 'strict write returned without a WAL sync');
    assert.ok(c.syncs <= 1 + c.segments, `${c.syncs} WAL syncs for one strict write`);
    await cleanup();
  });

  it('group commit: 100 concurrent fsync() calls share a few fdatasyncs', async () => {
    const { vol, io, wal, cleanup } = await setup('relaxed');
    const rng = new Rng(6);
    const ps: Promise<void>[] = [];
    for (let i = 0; i < 100; i++) {
      ps.push(vol.write(i * BS, rng.bytes(BS)));
      ps.push(vol.fsync());
    }
    await Promise.all(ps);
    const c = walCalls(io, wal);
    assert.ok(c.syncs >= 1);
    assert.ok(c.syncs <= 10 + c.segments, `${c.syncs} fdatasyncs for 100 concurrent fsync() calls`);
    await cleanup();
  });

  it('stats().walWrites and walSyncs agree with the calls the file layer saw', async () => {
    const { vol, io, wal, cleanup } = await setup('relaxed');
    const before = vol.stats();
    const rng = new Rng(7);
    for (let i = 0; i < 300; i++) await vol.write(rng.int(4096) * BS, rng.bytes(BS * rng.range(1, 3)));
    await vol.fsync();
    const after = vol.stats();
    const c = walCalls(io, wal);
    const statWrites = after.walWrites - before.walWrites;
    const statSyncs = after.walSyncs - before.walSyncs;
    // Segment headers may or may not be counted by the engine: allow one per segment.
    assert.ok(
      statWrites <= c.writes && statWrites >= c.writes - c.segments,
      `stats say ${statWrites} WAL writes, the file layer saw ${c.writes} (${c.segments} segments)`,
    );
    assert.equal(statSyncs, c.syncs, `stats say ${statSyncs} WAL syncs, the file layer saw ${c.syncs}`);
    await cleanup();
  });

  it('on the real file system too (NodeFileIO, counted): 1024 4 KiB writes then fsync', async () => {
    const { vol, io, wal, cleanup } = await setup('relaxed', true);
    const rng = new Rng(8);
    for (let i = 0; i < 1024; i++) await vol.write(i * BS, rng.bytes(BS));
    await vol.fsync();
    const c = walCalls(io, wal);
    assert.ok(c.writes >= 1 && c.writes <= bound(1024, c.segments), `${c.writes} WAL write calls for 1024 blocks on disk`);
    await cleanup();
  });
});
