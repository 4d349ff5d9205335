import * as assert from 'node:assert/strict';
import { WalWriter } from '../src/wal/wal-writer';
import { replayWal } from '../src/wal/wal-reader';
import { silentLogger } from '../src/types';
import { isVbfsError } from '../src/errors';
import { SimFS } from './helpers/sim-fs';
import { Rng } from './helpers/rng';
import { SYNC_MARKER_BYTES } from '../src/format/block-record';

const ID = 'aabbccddeeff00112233445566778899';
const BS = 512;

function writer(sim: SimFS, o: Partial<ConstructorParameters<typeof WalWriter>[0]> = {}): WalWriter {
  return new WalWriter({
    dir: '/wal',
    fileIO: sim,
    volumeId: ID,
    blockSize: BS,
    segmentBytes: 1 << 20,
    bufferBytes: 64 * 1024,
    nextSegment: 1,
    existingSegments: [],
    logger: silentLogger,
    ...o,
  });
}

async function replay(sim: SimFS, readOnly = false): Promise<{ seqs: number[]; blocks: number[] }> {
  const seqs: number[] = [];
  const blocks: number[] = [];
  await replayWal(sim, '/wal', ID, BS, readOnly, silentLogger, (h) => {
    seqs.push(h.seq);
    blocks.push(h.block);
  });
  return { seqs, blocks };
}

/** The records a power cut at this moment would keep (only durable bytes survive). */
async function durableReplay(sim: SimFS): Promise<number[]> {
  const after = sim.clone().afterCrash(new Rng(1), 'none');
  const seqs: number[] = [];
  await replayWal(after, '/wal', ID, BS, true, silentLogger, (h) => seqs.push(h.seq));
  return seqs;
}

describe('WAL', () => {
  let sim: SimFS;
  beforeEach(async () => {
    sim = new SimFS();
    await sim.mkdir('/wal');
    await sim.fsyncDir('/');
  });

  it('one write() per batch, never one per record or per field', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 1);
    for (let i = 1; i <= 100; i++) w.append(i, i, 0, BS, data, 0, BS);
    assert.equal(sim.count(['write', 'writev'], '/wal/'), 0, 'appends are buffered in memory');
    await w.sync();
    // 100 records of 544 bytes fit one 64 KiB batch: the segment header + one batch
    // write, then the 40-byte sync marker that the fdatasync earned (no sync of its own).
    assert.equal(w.writes, 2);
    assert.equal(w.markers, 1);
    assert.equal(sim.count(['write', 'writev'], '/wal/'), 3);
    assert.equal(sim.count('datasync', '/wal/'), 1);
  });

  it('group commit: 50 concurrent sync() calls share two fdatasyncs (the first, and one for all who queued behind it)', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 2);
    const syncs: Promise<void>[] = [];
    for (let i = 1; i <= 50; i++) {
      w.append(i, i, 0, BS, data, 0, BS);
      syncs.push(w.sync());
    }
    await Promise.all(syncs);
    assert.equal(sim.count('datasync', '/wal/'), 2);
    assert.equal((await durableReplay(sim)).length, 50, 'a power cut now keeps every record');
  });

  it('a sync() that arrives during an fdatasync waits for the next one (never resolves early)', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 3);
    w.append(1, 1, 0, BS, data, 0, BS);
    const first = w.sync();
    w.append(2, 2, 0, BS, data, 0, BS);
    let secondDone = false;
    const second = w.sync().then(() => (secondDone = true));
    await first;
    // After the first sync resolves, record 2 may still be unsynced; the second must not have resolved unless it is durable.
    if (secondDone) assert.equal((await durableReplay(sim)).length, 2);
    await second;
    assert.equal((await durableReplay(sim)).length, 2);
    assert.equal(sim.count('datasync', '/wal/'), 2);
  });

  it('segments roll over at the size limit and replay in order; reclaim deletes sealed ones', async () => {
    const w = writer(sim, { segmentBytes: 64 + 4 * (32 + BS) });
    const data = Buffer.alloc(BS, 4);
    for (let i = 1; i <= 10; i++) w.append(i, i % 3, 0, BS, data, 0, BS);
    await w.sync();
    assert.equal((await sim.readdir('/wal')).length, 3);
    assert.deepEqual((await replay(sim)).seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const sealed = await w.rotate();
    await w.reclaim(sealed);
    assert.deepEqual(await sim.readdir('/wal'), []);
    w.append(11, 1, 0, BS, data, 0, BS);
    await w.sync();
    assert.deepEqual((await replay(sim)).seqs, [11]);
  });

  it('reclaim unlinks segments oldest first, each made durable before the next (a crash leaves the newest ones)', async () => {
    const ops: string[] = [];
    const unlink = sim.unlink.bind(sim);
    const fsyncDir = sim.fsyncDir.bind(sim);
    sim.unlink = (p: string) => (ops.push(`unlink ${p.slice(p.lastIndexOf('/') + 1)}`), unlink(p));
    sim.fsyncDir = (p: string) => (ops.push('fsyncDir'), fsyncDir(p));
    const w = writer(sim, { segmentBytes: 64 + 4 * (32 + BS) });
    const data = Buffer.alloc(BS, 4);
    for (let i = 1; i <= 10; i++) w.append(i, i % 3, 0, BS, data, 0, BS);
    await w.sync();
    const names = (await sim.readdir('/wal')).sort();
    ops.length = 0;
    await w.reclaim(await w.rotate());
    assert.deepEqual(
      ops.filter((o) => o.startsWith('unlink') || o === 'fsyncDir'),
      names.flatMap((n) => [`unlink ${n}`, 'fsyncDir']),
    );
  });

  it('a failed fdatasync poisons the writer: this and every later sync reject', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 5);
    w.append(1, 1, 0, BS, data, 0, BS);
    await w.sync();
    sim.crashWhen((op) => op.kind === 'datasync');
    w.append(2, 2, 0, BS, data, 0, BS);
    await assert.rejects(w.sync());
    assert.throws(() => w.append(3, 3, 0, BS, data, 0, BS));
    await assert.rejects(w.sync());
  });

  it('a torn tail is cut (and truncated) with a warning; damage before the proven sync point is refused', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 6);
    for (let i = 1; i <= 5; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.sync();
    await w.close();
    const file = '/wal/0000000000000001.wal';
    const full = sim.readRaw(file) as Buffer;
    assert.equal(full.length, 64 + 5 * (32 + BS) + SYNC_MARKER_BYTES, 'header, 5 records, the sync marker');
    // Torn tail: last record cut short (and the marker after it lost).
    sim.writeRaw(file, full.subarray(0, full.length - SYNC_MARKER_BYTES - 100));
    const warnings: string[] = [];
    const logger = { ...silentLogger, warn: (m: string) => warnings.push(m) };
    const seqs: number[] = [];
    await replayWal(sim, '/wal', ID, BS, false, logger, (h) => seqs.push(h.seq));
    assert.deepEqual(seqs, [1, 2, 3, 4]);
    assert.equal(warnings.length, 1);
    assert.equal((sim.readRaw(file) as Buffer).length, 64 + 4 * (32 + BS), 'torn tail truncated away');
    // With the marker intact, the same damage is inside the synced range: corruption.
    sim.writeRaw(file, full);
    sim.flipBit(file, 64 + 4 * (32 + BS) + 40);
    await assert.rejects(replay(sim), (err: unknown) => {
      assert.ok(isVbfsError(err, 'VBFS_CORRUPT'));
      assert.match(err.message, /0000000000000001\.wal offset 2240/);
      assert.match(err.message, /fdatasync covered/);
      return true;
    });
  });

  it('a hole in the unsynced tail is cut even when valid records follow it; none of them was acknowledged', async () => {
    const w = writer(sim, { bufferBytes: 4 * (32 + BS) });
    const data = Buffer.alloc(BS, 7);
    for (let i = 1; i <= 4; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.sync(); // seqs 1-4 acknowledged; a marker proves them
    for (let i = 5; i <= 16; i++) w.append(i, i, 0, BS, data, 0, BS); // three more batches, never synced
    await w.rotate();
    const file = '/wal/0000000000000001.wal';
    const full = Buffer.from(sim.readRaw(file) as Buffer);
    const synced = 64 + 4 * (32 + BS) + SYNC_MARKER_BYTES;
    // The disk kept the last unsynced batch but not the one before it (zeros), nor part of the first.
    const holeAt = synced + 2 * (32 + BS) + 7;
    full.fill(0, holeAt, synced + 8 * (32 + BS));
    sim.writeRaw(file, full);
    const warnings: Array<Record<string, unknown>> = [];
    const logger = { ...silentLogger, warn: (_m: string, meta?: Record<string, unknown>) => warnings.push(meta ?? {}) };
    const seqs: number[] = [];
    const r = await replayWal(sim, '/wal', ID, BS, false, logger, (h) => seqs.push(h.seq));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.offset, synced + 2 * (32 + BS));
    assert.equal(warnings[0]?.droppedRecords, 4, 'the 4 valid records after the hole are reported as dropped');
    assert.equal(r.cuts.length, 1);
    assert.equal((sim.readRaw(file) as Buffer).length, synced + 2 * (32 + BS));
  });

  it('a hole before the proven sync point is corruption, even in the newest segment', async () => {
    const w = writer(sim, { bufferBytes: 4 * (32 + BS) });
    const data = Buffer.alloc(BS, 8);
    for (let i = 1; i <= 4; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.sync();
    for (let i = 5; i <= 8; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.sync(); // this marker proves seqs 1-8
    await w.close();
    const file = '/wal/0000000000000001.wal';
    const full = Buffer.from(sim.readRaw(file) as Buffer);
    const at = 64 + 4 * (32 + BS) + SYNC_MARKER_BYTES + 32 + BS; // record 6
    full.fill(0, at, at + 100);
    sim.writeRaw(file, full);
    await assert.rejects(replay(sim, true), (err: unknown) => isVbfsError(err, 'VBFS_CORRUPT') && (err.details.offset as number) === at);
  });

  it('a newest segment whose header page was lost, with no proven sync, is removed whole', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 9);
    for (let i = 1; i <= 3; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.rotate(); // written, never synced
    const file = '/wal/0000000000000001.wal';
    const full = Buffer.from(sim.readRaw(file) as Buffer);
    full.fill(0, 0, 64 + 10);
    sim.writeRaw(file, full);
    assert.deepEqual((await replay(sim)).seqs, []);
    assert.deepEqual(await sim.readdir('/wal'), []);
  });

  it('a version 1 segment (no markers) keeps the old rule: damage followed by a valid record is refused', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 10);
    for (let i = 1; i <= 5; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.rotate();
    const file = '/wal/0000000000000001.wal';
    const full = Buffer.from(sim.readRaw(file) as Buffer);
    // Rewrite the header as version 1 (and its CRC), then damage record 2.
    full.writeUInt16LE(1, 8);
    const { crc32c } = await import('../src/format/crc32c');
    full.writeUInt32LE(crc32c(full, 0, 0, 60), 60);
    const at = 64 + (32 + BS) + 40;
    full[at] = (full[at] as number) ^ 1;
    sim.writeRaw(file, full);
    await assert.rejects(replay(sim, true), (err: unknown) => isVbfsError(err, 'VBFS_CORRUPT') && /valid record follows/.test(err.message));
  });
});
