import * as assert from 'node:assert/strict';
import { WalWriter } from '../src/wal/wal-writer';
import { replayWal } from '../src/wal/wal-reader';
import { silentLogger } from '../src/types';
import { isVbfsError } from '../src/errors';
import { SimFS } from './helpers/sim-fs';
import { Rng } from './helpers/rng';
import { SYNC_MARKER_BYTES } from '../src/format/block-record';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NodeFileIO } from '../src/io/node-file-io';
import { PassThroughFileIO } from '../src/io/pass-through-file-io';
import { CountingFileIO } from './helpers/counting-file-io';
import type { FileHandle, FileIO, OpenMode } from '../src/io/file-io';

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

describe('WAL preallocated and recycled segments', () => {
  const SEG = 4096;
  const REC = 32 + BS;
  /** Phase 2 seqs start here and write blocks from 100 up: a phase 1 record is recognisable. */
  const PHASE2 = 1000;

  function pwriter(sim: SimFS, o: Partial<ConstructorParameters<typeof WalWriter>[0]> = {}): WalWriter {
    return writer(sim, { preallocate: true, segmentBytes: SEG, bufferBytes: 2 * REC, ...o });
  }

  async function newSim(): Promise<SimFS> {
    const s = new SimFS();
    await s.mkdir('/wal');
    await s.fsyncDir('/');
    return s;
  }

  it('a preallocated segment is full size before its first record; replay stops at its zero tail quietly and truncates it', async () => {
    const sim = await newSim();
    const w = pwriter(sim);
    const data = Buffer.alloc(BS, 1);
    for (let i = 1; i <= 3; i++) w.append(i, i, 0, BS, data, 0, BS);
    await w.sync();
    const file = '/wal/0000000000000001.wal';
    assert.equal((sim.readRaw(file) as Buffer).length, SEG, 'the records overwrite a full-size file: the sync changed no file size');
    assert.equal(sim.count('truncate', '/wal/'), 0);
    assert.deepEqual(await durableReplay(sim), [1, 2, 3]);
    await w.close();
    const warnings: string[] = [];
    const logger = { ...silentLogger, warn: (m: string) => warnings.push(m) };
    const seqs: number[] = [];
    const r = await replayWal(sim, '/wal', ID, BS, false, logger, (h) => seqs.push(h.seq));
    assert.deepEqual(seqs, [1, 2, 3]);
    assert.deepEqual(warnings, [], 'the zero tail is the end of the log, not a torn tail');
    assert.equal(r.cuts.length, 0);
    assert.equal((sim.readRaw(file) as Buffer).length, 64 + 3 * REC + SYNC_MARKER_BYTES, 'truncated after the last marker');
  });

  it('a recycled segment: the records of its earlier use after the tail are never replayed, and a torn batch over them is cut', async () => {
    const sim = await newSim();
    const w = pwriter(sim, { bufferBytes: REC });
    const old = Buffer.alloc(BS, 0xaa);
    for (let i = 1; i <= 5; i++) {
      w.append(i, i, 0, BS, old, 0, BS);
      await w.sync(); // earlier use: header, then (record, marker) pairs
    }
    const sealed = await w.rotate();
    await w.reclaim(sealed);
    const spares = (await sim.readdir('/wal')).filter((n) => n.startsWith('spare-'));
    // Segment 1 itself (no second spare is zero-filled while one is ready).
    assert.equal(spares.length, 1, 'the reclaimed full-size segment is kept as a spare');
    const earlier = Buffer.from(sim.readRaw(`/wal/${spares[0] as string}`) as Buffer);
    const data = Buffer.alloc(BS, 0x55);
    w.append(PHASE2, 100, 0, BS, data, 0, BS);
    await w.sync(); // acknowledged
    w.append(PHASE2 + 1, 101, 0, BS, data, 0, BS);
    w.append(PHASE2 + 2, 102, 0, BS, data, 0, BS);
    await w.rotate(); // written, never synced
    const names = (await sim.readdir('/wal')).filter((n) => n.endsWith('.wal'));
    assert.deepEqual(names, ['0000000000000002.wal'], 'the spare became segment 2');
    const file = `/wal/${names[0] as string}`;
    const full = Buffer.from(sim.readRaw(file) as Buffer);
    assert.equal(full.length, SEG, 'a recycled file keeps its size');
    const replayOf = async (buf: Buffer): Promise<{ seqs: number[]; warnings: Array<Record<string, unknown>> }> => {
      const s2 = await newSim();
      s2.writeRaw(file, buf);
      const seqs: number[] = [];
      const warnings: Array<Record<string, unknown>> = [];
      const logger = { ...silentLogger, warn: (_m: string, meta?: Record<string, unknown>) => warnings.push(meta ?? {}) };
      await replayWal(s2, '/wal', ID, BS, true, logger, (h) => seqs.push(h.seq));
      return { seqs, warnings };
    };
    // Whole: this use's three records, then the earlier use's records 3.. (valid CRCs) are ignored.
    assert.deepEqual(await replayOf(full), { seqs: [PHASE2, PHASE2 + 1, PHASE2 + 2], warnings: [] });
    // Power cut: nothing after the header reached the disk, the earlier use's records
    // 1-5 sit right after it. None is replayed.
    const noneLanded = Buffer.concat([full.subarray(0, 64), earlier.subarray(64)]);
    assert.deepEqual(await replayOf(noneLanded), { seqs: [], warnings: [] });
    // Only the synced record and its marker landed: the unsynced batch's place holds the
    // earlier use's record 2, whole and valid, exactly where record PHASE2+1 began.
    const synced = 64 + REC + SYNC_MARKER_BYTES;
    const onlySynced = Buffer.concat([full.subarray(0, synced), earlier.subarray(synced)]);
    assert.deepEqual(await replayOf(onlySynced), { seqs: [PHASE2], warnings: [] });
    // Torn: record PHASE2+1's page kept the earlier bytes, PHASE2+2 landed: a torn tail,
    // cut with a warning that counts the dropped record, never corruption.
    const torn = Buffer.from(full);
    earlier.copy(torn, synced, synced, synced + REC);
    const t = await replayOf(torn);
    assert.deepEqual(t.seqs, [PHASE2]);
    assert.equal(t.warnings.length, 1);
    assert.equal(t.warnings[0]?.offset, synced);
    assert.equal(t.warnings[0]?.droppedRecords, 1);
  });

  it('power cuts at every op of a run that recycles segments and reopens: no acknowledged record lost, no stale one replayed', async () => {
    interface Run {
      acked: number[];
      /** Seqs up to this one were reclaimed (in chunks, as far as the WAL knows): they need not survive. */
      floor: number;
      /** seq -> the segment it was appended to. */
      segOf: Map<number, number>;
      appended: number;
    }
    const curSeg = (w: WalWriter): number => (w as unknown as { curSeg: number }).curSeg; // test-only peek: which segment a record went to
    const work = async (sim: SimFS, run: Run): Promise<void> => {
      const data = Buffer.alloc(BS, 3);
      const writeSome = async (w: WalWriter, n: number): Promise<void> => {
        for (let i = 0; i < n; i++) {
          const seq = ++run.appended;
          w.append(seq, seq % 7, 0, BS, data, 0, BS);
          run.segOf.set(seq, curSeg(w));
          if (i % 3 === 2) {
            await w.sync();
            for (let s = run.acked.length + 1; s <= seq; s++) run.acked.push(s);
          }
        }
      };
      let w = pwriter(sim);
      for (let round = 0; round < 3; round++) {
        await writeSome(w, 14);
        const upTo = run.appended;
        const sealed = await w.rotate();
        // From the first unlink on, a crash may leave any oldest part of them gone.
        run.floor = upTo;
        await w.reclaim(sealed);
      }
      await writeSome(w, 5);
      await w.sync(); // as the volume does before it closes the WAL
      for (let s = run.acked.length + 1; s <= run.appended; s++) run.acked.push(s);
      await w.close();
      // Reopen: replay (it truncates the preallocated newest segment), then continue after it.
      const r = await replayWal(sim, '/wal', ID, BS, false, silentLogger, () => undefined);
      w = pwriter(sim, { nextSegment: r.lastSegment + 1, existingSegments: r.segments });
      await writeSome(w, 10);
      const upTo = run.appended;
      const sealed = await w.rotate();
      run.floor = upTo;
      await w.reclaim(sealed);
      await writeSome(w, 4);
      await w.close();
    };
    const fresh = (): Run => ({ acked: [], floor: 0, segOf: new Map(), appended: 0 });
    const dry = await newSim();
    const from = dry.mutatingOps;
    await work(dry, fresh());
    const to = dry.mutatingOps;
    assert.ok(to - from > 100, `the run does ${to - from} mutating ops`);
    let cuts = 0;
    for (let m = from + 1; m <= to; m++) {
      const sim = await newSim();
      sim.crashAt(m);
      const run = fresh();
      await work(sim, run).catch((err: unknown) => {
        if (!sim.crashed) throw err;
      });
      assert.ok(sim.crashed, `op ${m}: no crash`);
      for (const tear of ['random', 'reorder'] as const) {
        for (let k = 1; k <= 2; k++) {
          const after = sim.clone().afterCrash(new Rng(m * 10 + k), tear);
          const got: number[] = [];
          const where = `crash at op ${m} (${sim.crashInfo}), tear ${tear}, rng ${k}`;
          await replayWal(after, '/wal', ID, BS, false, silentLogger, (h, _b, _o, path) => {
            got.push(h.seq);
            const seg = parseInt(path.slice(path.lastIndexOf('/') + 1, path.lastIndexOf('/') + 17), 16);
            assert.equal(run.segOf.get(h.seq), seg, `${where}: seq ${h.seq} replayed from segment ${seg}, appended to ${run.segOf.get(h.seq)}`);
          }).catch((err: unknown) => assert.fail(`${where}: ${String(err)}`));
          for (const s of run.acked) if (s > run.floor) assert.ok(got.includes(s), `${where}: acknowledged seq ${s} lost (replayed ${got.join(',')})`);
          // Recovery left a WAL that reads the same again (its truncations are complete).
          assert.deepEqual((await replay(after, true)).seqs, got, `${where}: a second replay differs`);
          cuts++;
        }
      }
    }
    assert.ok(cuts > 400);
  });
});

describe('WAL on the real disk: an fsync of a small write', () => {
  const RBS = 4096;
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-wal-inline-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  function realWriter(io: FileIO): WalWriter {
    // A write descheduled for 2 ms on a loaded machine must not move later ones to the pool here.
    return new WalWriter({ ...realWriterOptions(), fileIO: io, inlineSlowMs: 10_000 });
  }

  async function replayed(): Promise<number[]> {
    const seqs: number[] = [];
    await replayWal(new NodeFileIO(), dir, ID, RBS, true, silentLogger, (h) => seqs.push(h.seq));
    return seqs;
  }

  it('writes its record and the sync marker on the JS thread: the fdatasync is its only thread-pool call; a large batch still goes to the pool', async () => {
    const io = new CountingFileIO(new NodeFileIO());
    const w = realWriter(io);
    const data = Buffer.alloc(RBS, 7);
    w.append(1, 1, 0, RBS, data, 0, RBS);
    await w.sync(); // opens the segment (header, directory fsync)
    io.resetCounts();
    for (let i = 2; i <= 4; i++) {
      w.append(i, i, 0, RBS, data, 0, RBS);
      await w.sync();
    }
    assert.equal(io.count('write', dir), 0, 'no write() through the pool');
    assert.equal(io.count('writeSync', dir), 6, 'per sync: the record, then its marker');
    assert.equal(io.count('datasync', dir), 3);
    // 20 records (80 KiB) in one batch: written in the pool, off the thread that serves FUSE.
    for (let i = 5; i <= 24; i++) w.append(i, i, 0, RBS, data, 0, RBS);
    await w.sync();
    assert.equal(io.count('write', dir), 1);
    assert.equal(io.count('writeSync', dir), 7, 'the marker only');
    await w.close();
    assert.deepEqual(
      await replayed(),
      Array.from({ length: 24 }, (_, i) => i + 1),
    );
  });

  it('an inline write that blocks (dirty-page throttling) sends the next small writes through the pool', async () => {
    let stallNext = false;
    const stalls = hookWriteSync(() => {
      if (stallNext) {
        stallNext = false;
        const until = performance.now() + 80; // the kernel holding write(2) back
        while (performance.now() < until);
      }
    });
    const io = new CountingFileIO(stalls);
    // 50 ms, not the default 2: a loaded test machine may deschedule a normal write that long.
    const w = new WalWriter({ ...realWriterOptions(), fileIO: io, inlineSlowMs: 50 });
    const data = Buffer.alloc(RBS, 3);
    w.append(1, 1, 0, RBS, data, 0, RBS);
    await w.sync();
    io.resetCounts();
    stallNext = true;
    w.append(2, 2, 0, RBS, data, 0, RBS);
    await w.sync(); // the record's write stalls: its marker and later small writes go to the pool
    assert.equal(w.inlineBackoffs, 1);
    assert.equal(io.count('writeSync', dir), 1, 'only the write that stalled ran inline');
    w.append(3, 3, 0, RBS, data, 0, RBS);
    await w.sync();
    assert.equal(io.count('write', dir), 3, 'the marker after the stall, then record and marker of the next sync, in the pool');
    await w.close();
    assert.deepEqual(await replayed(), [1, 2, 3]);
  });

  it('an inline write that fails for lack of space is retried in place, not poisoned', async () => {
    let failNext = false;
    const noSpaceOnce = hookWriteSync(() => {
      if (failNext) {
        failNext = false;
        throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
      }
    });
    const w = new WalWriter({ ...realWriterOptions(), fileIO: noSpaceOnce, noSpaceRetryMs: 20 });
    const data = Buffer.alloc(RBS, 9);
    w.append(1, 1, 0, RBS, data, 0, RBS);
    await w.sync();
    w.append(2, 2, 0, RBS, data, 0, RBS);
    failNext = true;
    await assert.rejects(w.sync(), (err: unknown) => isVbfsError(err) && err.code === 'VBFS_IO');
    assert.equal(w.error, null, 'not poisoned');
    // The retry rewrote the batch at the same offset: a later sync covers it.
    for (let i = 0; i < 100 && w.noSpace; i++) await new Promise((r) => setTimeout(r, 10));
    w.append(3, 3, 0, RBS, data, 0, RBS);
    await w.sync();
    await w.close();
    assert.deepEqual(await replayed(), [1, 2, 3]);
  });

  /** The real disk, with `before` run ahead of every FileHandle.writeSync (to stall it or make it throw). */
  function hookWriteSync(before: () => void): FileIO {
    return new (class extends PassThroughFileIO {
      override async open(p: string, mode: OpenMode): Promise<FileHandle> {
        const fh = await this.inner.open(p, mode);
        const writeSync = (fh.writeSync as (b: Uint8Array, pos: number) => void).bind(fh);
        fh.writeSync = (buf, pos): void => {
          before();
          writeSync(buf, pos);
        };
        return fh;
      }
    })(new NodeFileIO());
  }

  function realWriterOptions(): ConstructorParameters<typeof WalWriter>[0] {
    return {
      dir,
      fileIO: new NodeFileIO(),
      volumeId: ID,
      blockSize: RBS,
      segmentBytes: 8 << 20,
      bufferBytes: 1 << 20,
      nextSegment: 1,
      existingSegments: [],
      logger: silentLogger,
    };
  }
});
