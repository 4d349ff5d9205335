import * as assert from 'node:assert/strict';
import { WalWriter } from '../src/wal/wal-writer';
import { replayWal } from '../src/wal/wal-reader';
import { silentLogger } from '../src/store/types';
import { isVbfsError } from '../src/errors';
import { SimFS } from './helpers/sim-fs';

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

describe('WAL', () => {
  let sim: SimFS;
  beforeEach(async () => {
    sim = new SimFS();
    await sim.mkdir('/wal');
  });

  it('one write() per batch, never one per record or per field', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 1);
    for (let i = 1; i <= 100; i++) w.append(i, i, 0, BS, data, 0, BS);
    assert.equal(sim.count(['write', 'writev'], '/wal/'), 0, 'appends are buffered in memory');
    await w.sync();
    // 100 records of 544 bytes fit one 64 KiB batch: the segment header + one batch write.
    assert.equal(w.writes, 1);
    assert.equal(sim.count(['write', 'writev'], '/wal/'), 2);
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
    assert.ok(!sim.unsynced().files.some((f) => f.startsWith('/wal/')));
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
    if (secondDone) assert.ok(!sim.unsynced().files.some((f) => f.startsWith('/wal/')));
    await second;
    assert.ok(!sim.unsynced().files.some((f) => f.startsWith('/wal/')));
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

  it('a torn tail is cut (and truncated) with a warning; damage followed by good records is refused', async () => {
    const w = writer(sim);
    const data = Buffer.alloc(BS, 6);
    for (let i = 1; i <= 5; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.sync();
    await w.close();
    const file = '/wal/0000000000000001.wal';
    const full = sim.readRaw(file) as Buffer;
    // Torn tail: last record cut short.
    sim.writeRaw(file, full.subarray(0, full.length - 100));
    const warnings: string[] = [];
    const logger = { ...silentLogger, warn: (m: string) => warnings.push(m) };
    const seqs: number[] = [];
    await replayWal(sim, '/wal', ID, BS, false, logger, (h) => seqs.push(h.seq));
    assert.deepEqual(seqs, [1, 2, 3, 4]);
    assert.equal(warnings.length, 1);
    assert.equal((sim.readRaw(file) as Buffer).length, 64 + 4 * (32 + BS), 'torn tail truncated away');
    // Mid-log corruption: flip one payload bit of record 2 of 4.
    sim.flipBit(file, 64 + (32 + BS) + 40);
    await assert.rejects(replay(sim), (err: unknown) => {
      assert.ok(isVbfsError(err, 'VBFS_CORRUPT'));
      assert.match(err.message, /0000000000000001\.wal offset 608/);
      assert.match(err.message, /valid record follows/);
      return true;
    });
  });
});
