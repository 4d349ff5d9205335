/**
 * `vbfs fsck`: a clean volume is clean and its figures are right; every kind of
 * damage is reported as one problem naming the object and offset; orphans and torn
 * tails are warnings that --repair removes (and nothing else); a volume open for
 * writing is refused. Library level on SimFS, then the command line on a real store.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Backend } from '../src/backend/backend';
import { FileBackend } from '../src/backend/file-backend';
import type { FsckProblem, FsckReport } from '../src/store/fsck';
import type { VolumeTunables } from '../src/store/types';
import { isVbfsError } from '../src/errors';
import { checkRecord, isSyncMarker } from '../src/format/block-record';
import { SimFS, isCrash } from './helpers/sim-fs';
import { Rng } from './helpers/rng';
import { cleanupUnder, isMounted, requireFuse, tmpDir, vbfs } from './helpers/fuse-env';

const DIR = '/store';
const BS = 512;
const REC = 32 + BS;
const HDR = 64;
const BLOCKS = 256;
const SIZE = BS * BLOCKS;
const VOL = `${DIR}/volumes/c`;
const PER_CHUNK = 8;
const KEEP_IN_WAL: Partial<VolumeTunables> = { flushBytes: 1 << 30, writeBufferBytes: 1 << 20, flushIntervalMs: 1_000_000, walSegmentBytes: 1 << 20 };

function contents(n: number, seed: number): Buffer[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.bytes(BS));
}

/** `n` blocks flushed into chunks of PER_CHUNK records, then a clean close (checkpoint written). */
async function flushed(n: number, sim = new SimFS()): Promise<SimFS> {
  const store = await Store.open(DIR, { fileIO: sim });
  await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed' });
  const vol = await store.openVolume('c', { chunkBytes: HDR + PER_CHUNK * REC });
  const data = contents(n, n);
  for (let b = 0; b < n; b++) await vol.write(b * BS, data[b] as Buffer);
  await vol.close();
  await store.close();
  return sim.reopen();
}

/** `n` blocks fsynced into the WAL and never flushed, then the process dies. */
async function walOnly(n: number, tunables: Partial<VolumeTunables> = KEEP_IN_WAL): Promise<{ sim: SimFS; wals: string[] }> {
  const sim = new SimFS();
  const store = await Store.open(DIR, { fileIO: sim });
  await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed' });
  const vol = await store.openVolume('c', tunables);
  const data = contents(n, 1000 + n);
  for (let b = 0; b < n; b++) {
    await vol.write(b * BS, data[b] as Buffer);
    await vol.fsync();
  }
  const after = sim.reopen(); // kill -9
  return { sim: after, wals: after.files(`${VOL}/wal/`).filter((f) => f.endsWith('.wal')) };
}

async function fsck(sim: SimFS, opts: { repair?: boolean; backend?: Backend } = {}): Promise<FsckReport> {
  const store = await Store.open(DIR, { fileIO: sim, backend: opts.backend });
  try {
    return await store.fsckVolume('c', { repair: opts.repair });
  } finally {
    await store.close();
  }
}

/** Offsets of the block records in a WAL segment (not its sync markers), found with the engine's decoder. */
function walRecordOffsets(buf: Buffer, blockSize: number): number[] {
  const out: number[] = [];
  for (let off = HDR; ;) {
    const r = checkRecord(buf, off, buf.length, blockSize);
    if (!r.ok) return out;
    if (!isSyncMarker(r.header)) out.push(off);
    off = r.end;
  }
}

const chunkFiles = (sim: SimFS): string[] => sim.files(`${DIR}/objects/`);
const keyOf = (file: string): string => file.slice(`${DIR}/objects/`.length);

function only(r: FsckReport, kind: FsckProblem['kind']): FsckProblem[] {
  return r.problems.filter((p) => p.kind === kind);
}

function assertClean(r: FsckReport): void {
  assert.deepEqual(r.problems, [], `expected a clean report, got:\n${r.problems.map((p) => `${p.kind} ${p.object} ${p.offset}: ${p.message}`).join('\n')}`);
  assert.equal(r.clean, true);
  assert.equal(r.errors, 0);
  assert.equal(r.warnings, 0);
}

describe('fsck (library)', () => {
  it('a clean volume: no problems, and the figures match what was written', async () => {
    const n = 50;
    const sim = await flushed(n);
    const r = await fsck(sim);
    assertClean(r);
    const chunks = chunkFiles(sim);
    assert.equal(chunks.length, Math.ceil(n / PER_CHUNK));
    assert.equal(r.chunks, chunks.length);
    assert.equal(r.referencedChunks, chunks.length);
    assert.equal(r.mappedBlocks, n);
    assert.equal(r.checkedRecords, n);
    assert.equal(r.liveBytes, n * BS);
    const stored = chunks.reduce((s, f) => s + (sim.readRaw(f) as Buffer).length, 0);
    assert.equal(stored, chunks.length * HDR + n * REC, 'chunk layout: header + one record per block');
    assert.equal(r.storedBytes, stored);
    assert.equal(r.spaceAmplification, Math.round((stored / (n * BS)) * 1000) / 1000);
    assert.equal(r.walBlocks, 0);
    assert.equal(r.size, SIZE);
  });

  it('blocks only in the WAL are counted, not reported', async () => {
    const { sim } = await walOnly(12);
    const r = await fsck(sim);
    assertClean(r);
    assert.equal(r.walRecords, 12);
    assert.equal(r.walBlocks, 12);
    assert.equal(r.mappedBlocks, 0);
    assert.equal(r.chunks, 0);
    assert.equal(r.spaceAmplification, null);
  });

  it('a rewritten block counts once, and superseded chunks are not orphans until the map drops them', async () => {
    const sim = new SimFS();
    const store = await Store.open(DIR, { fileIO: sim });
    await store.createVolume('c', { size: SIZE, blockSize: BS });
    const vol = await store.openVolume('c', { chunkBytes: HDR + PER_CHUNK * REC });
    const data = contents(16, 3);
    for (let b = 0; b < 16; b++) await vol.write(b * BS, data[b] as Buffer);
    await vol.flush();
    for (let b = 0; b < 4; b++) await vol.write(b * BS, data[15 - b] as Buffer);
    await vol.close();
    await store.close();
    const r = await fsck(sim.reopen());
    assertClean(r);
    assert.equal(r.mappedBlocks, 16);
    assert.ok(r.storedBytes > r.liveBytes, 'a partly superseded chunk is stored but not live');
  });

  it('a flipped bit in a chunk record is an error naming the chunk and the record offset, and the block', async () => {
    const sim = await flushed(20);
    const victim = chunkFiles(sim)[1] as string;
    const rec = 3;
    sim.flipBit(victim, HDR + rec * REC + 32 + 77, 2);
    const r = await fsck(sim);
    assert.equal(r.errors, 1, JSON.stringify(r.problems));
    const [p] = only(r, 'bad-record');
    assert.ok(p);
    assert.equal(p.object, keyOf(victim));
    assert.equal(p.offset, HDR + rec * REC);
    assert.equal(p.severity, 'error');
    assert.match(p.message, new RegExp(`block ${PER_CHUNK + rec}\\b`), 'the problem names the block whose data is lost');
    assert.equal(r.checkedRecords, 19, 'the records after the damaged one are still checked');
  });

  it('any flipped bit in any chunk object is reported (seeded sweep)', async () => {
    const rng = new Rng(11);
    const clean = await flushed(20);
    for (let i = 0; i < 40; i++) {
      const sim = clean.clone();
      const victim = rng.pick(chunkFiles(sim));
      const len = (sim.readRaw(victim) as Buffer).length;
      const at = rng.int(len);
      sim.flipBit(victim, at, rng.int(8));
      const r = await fsck(sim);
      assert.ok(r.errors > 0, `flip at ${victim}:${at} went unreported`);
      assert.ok(
        r.problems.every((p) => p.object === keyOf(victim)),
        `problems outside the damaged object: ${JSON.stringify(r.problems)}`,
      );
      const covering = r.problems.some((p) => p.offset !== null && (at < HDR ? p.offset === 0 : p.offset <= at && at < p.offset + REC));
      assert.ok(covering, `no problem names the damaged spot ${at}: ${JSON.stringify(r.problems)}`);
    }
  });

  it('a missing chunk is an error naming it', async () => {
    const sim = await flushed(20);
    const victim = chunkFiles(sim)[0] as string;
    await sim.unlink(victim);
    const r = await fsck(sim);
    const missing = only(r, 'missing-chunk');
    assert.equal(missing.length, 1);
    assert.equal(missing[0]?.object, keyOf(victim));
    assert.match(missing[0]?.message ?? '', /\b8 block/);
    assert.equal(r.errors, 1);
  });

  it('a chunk object replaced by another one: header and every map entry into it are errors', async () => {
    const sim = await flushed(20);
    const [a, b] = chunkFiles(sim) as [string, string];
    sim.writeRaw(a, sim.readRaw(b) as Buffer);
    const r = await fsck(sim);
    assert.equal(only(r, 'chunk-header').length, 1, JSON.stringify(r.problems));
    const mism = only(r, 'record-mismatch');
    assert.equal(mism.length, PER_CHUNK, JSON.stringify(r.problems));
    for (const [k, p] of mism.entries()) {
      assert.equal(p.object, keyOf(a));
      assert.equal(p.offset, HDR + k * REC);
    }
  });

  it('a truncated chunk: the cut record and the map entries past the end are errors', async () => {
    const sim = await flushed(16);
    const victim = chunkFiles(sim)[0] as string;
    const raw = sim.readRaw(victim) as Buffer;
    sim.writeRaw(victim, raw.subarray(0, HDR + 5 * REC + 100));
    const r = await fsck(sim);
    const bad = only(r, 'bad-record');
    assert.equal(bad.length, 1);
    assert.equal(bad[0]?.offset, HDR + 5 * REC);
    assert.equal(only(r, 'record-mismatch').length, 2, 'blocks 6 and 7 point past the end');
  });

  it('an orphan chunk is a warning (exit-0 kind); --repair deletes it and a second run is clean', async () => {
    const sim = await flushed(20);
    const [first] = chunkFiles(sim) as [string];
    const orphan = `${path.posix.dirname(first)}/000000ff`;
    sim.writeRaw(orphan, sim.readRaw(first) as Buffer);
    const r = await fsck(sim);
    assert.equal(r.errors, 0, JSON.stringify(r.problems));
    assert.equal(r.warnings, 1);
    assert.equal(r.clean, false);
    const [p] = only(r, 'orphan-chunk');
    assert.equal(p?.object, keyOf(orphan));
    assert.equal(p?.severity, 'warning');
    assert.equal(r.orphanChunks, 1);
    assert.ok(sim.readRaw(orphan), 'a check without --repair changes nothing');

    const fixed = await fsck(sim, { repair: true });
    assert.equal(only(fixed, 'orphan-chunk')[0]?.repaired, true);
    assert.equal(sim.readRaw(orphan), undefined, '--repair deleted the orphan');
    assertClean(await fsck(sim));
  });

  it('--repair keeps orphans while there is damage: they may hold the only copy of a block', async () => {
    const sim = await flushed(20);
    const [first, second] = chunkFiles(sim) as [string, string];
    const orphan = `${path.posix.dirname(first)}/000000ff`;
    sim.writeRaw(orphan, sim.readRaw(first) as Buffer);
    sim.flipBit(second, HDR + 10, 0);
    const r = await fsck(sim, { repair: true });
    assert.equal(r.errors, 1);
    assert.notEqual(only(r, 'orphan-chunk')[0]?.repaired, true);
    assert.ok(sim.readRaw(orphan), 'the orphan must survive --repair while fsck finds damage');
    assert.ok(r.problems.every((p) => !p.repaired));
  });

  it('an orphan holding the newest version of a block (a lost map commit) is an error; --repair changes nothing', async () => {
    const sim = new SimFS();
    const store = await Store.open(DIR, { fileIO: sim });
    await store.createVolume('c', { size: SIZE, blockSize: BS });
    const vol = await store.openVolume('c', { chunkBytes: HDR + PER_CHUNK * REC, checkpointBytes: 1 << 20 });
    const data = contents(12, 9);
    for (let b = 0; b < 8; b++) await vol.write(b * BS, data[b] as Buffer);
    await vol.flush();
    const log = sim.files(`${VOL}/map/`).find((f) => f.endsWith('.log')) as string;
    const firstCommitEnd = (sim.readRaw(log) as Buffer).length;
    for (let b = 0; b < 4; b++) await vol.write(b * BS, data[8 + b] as Buffer);
    await vol.flush(); // second chunk committed, its WAL reclaimed
    const after = sim.reopen();
    assertClean(await fsck(after.clone()));
    // Lose the second commit (a whole frame, so no torn tail): its chunk is now the only copy of blocks 0..3.
    after.writeRaw(log, (after.readRaw(log) as Buffer).subarray(0, firstCommitEnd));
    const r = await fsck(after);
    const [p] = only(r, 'orphan-chunk');
    assert.equal(p?.severity, 'error', JSON.stringify(r.problems));
    assert.match(p?.message ?? '', /newest version of 4 block/);
    assert.equal(r.errors, 1, JSON.stringify(r.problems));
    const chunks = chunkFiles(after);
    const fixed = await fsck(after, { repair: true });
    assert.equal(fixed.repaired, 0);
    assert.deepEqual(chunkFiles(after), chunks, '--repair deleted a chunk holding the only copy of a block');
    assert.equal((after.readRaw(log) as Buffer).length, firstCommitEnd);
  });

  it('a torn WAL tail is a warning; fsck leaves it alone, --repair cuts it, a second run is clean', async () => {
    const { sim, wals } = await walOnly(10);
    const wal = wals[wals.length - 1] as string;
    const raw = sim.readRaw(wal) as Buffer;
    const offs = walRecordOffsets(raw, BS);
    assert.equal(offs.length, 10);
    const last = offs[9] as number;
    assert.ok(raw.length <= last + REC + 40, 'at most a sync marker follows the last block record');
    const cut = last + 200; // the last record, cut short
    sim.writeRaw(wal, raw.subarray(0, cut));
    const r = await fsck(sim);
    assert.equal(r.errors, 0, JSON.stringify(r.problems));
    const [p] = only(r, 'torn-wal-tail');
    assert.equal(p?.object, wal);
    assert.equal(p?.offset, last);
    assert.equal(r.walRecords, 9);
    assert.equal((sim.readRaw(wal) as Buffer).length, cut, 'a check without --repair does not cut');

    const fixed = await fsck(sim, { repair: true });
    assert.equal(only(fixed, 'torn-wal-tail')[0]?.repaired, true);
    assert.equal((sim.readRaw(wal) as Buffer).length, last);
    const again = await fsck(sim);
    assertClean(again);
    assert.equal(again.walRecords, 9);
  });

  it('a torn map log tail (power cut during a commit fdatasync) is a warning with its orphan; --repair cuts both and the data reads the same', async () => {
    const sim = new SimFS();
    const store = await Store.open(DIR, { fileIO: sim });
    await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed' });
    const vol = await store.openVolume('c', { ...KEEP_IN_WAL, chunkBytes: HDR + PER_CHUNK * REC, checkpointBytes: 1 << 20 });
    const data = contents(16, 12);
    for (let b = 0; b < 8; b++) await vol.write(b * BS, data[b] as Buffer);
    await vol.fsync();
    await vol.flush();
    for (let b = 8; b < 16; b++) await vol.write(b * BS, data[b] as Buffer);
    await vol.fsync();
    sim.crashWhen((op) => op.kind === 'datasync' && op.path.includes('/map/') && op.path.endsWith('.log'));
    await vol.flush().catch((e: unknown) => assert.ok(isCrash(e), String(e)));
    await Promise.race([store.close().catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
    assert.ok(sim.crashed, "the power cut came during the second flush's commit");
    const after = sim.afterCrash(new Rng(1), 'all'); // the unsynced commit write reached the disk whole ...
    const log = after.files(`${VOL}/map/`).find((f) => f.endsWith('.log')) as string;
    const raw = after.readRaw(log) as Buffer;
    after.writeRaw(log, raw.subarray(0, raw.length - 20)); // ... but for its last 20 bytes
    const r = await fsck(after);
    assert.equal(r.errors, 0, JSON.stringify(r.problems));
    const [t] = only(r, 'torn-map-tail');
    assert.equal(t?.object, log, JSON.stringify(r.problems));
    assert.equal(only(r, 'orphan-chunk').length, 1, 'the chunk of the torn commit is an orphan; the WAL still has its blocks');
    assert.equal(r.walBlocks, 8);
    const readAll = async (): Promise<Buffer> => {
      const s = await Store.open(DIR, { fileIO: after });
      const v = await s.openVolume('c', { readOnly: true });
      const out = await v.read(0, 16 * BS);
      await s.close();
      return out;
    };
    const before = await readAll();
    assert.deepEqual(before, Buffer.concat(data));
    const fixed = await fsck(after, { repair: true });
    assert.equal(fixed.repaired, 2);
    assertClean(await fsck(after));
    assert.deepEqual(await readAll(), before);
  });

  it('a damaged record in an older WAL segment is an error naming the segment and offset', async () => {
    const { sim, wals } = await walOnly(30, { ...KEEP_IN_WAL, walSegmentBytes: HDR + 8 * REC });
    assert.ok(wals.length >= 3, `expected several WAL segments, got ${wals.join(', ')}`);
    const wal = wals[0] as string;
    const third = walRecordOffsets(sim.readRaw(wal) as Buffer, BS)[2] as number;
    sim.flipBit(wal, third + 40, 1);
    const r = await fsck(sim);
    const [p] = only(r, 'wal');
    assert.ok(p, JSON.stringify(r.problems));
    assert.equal(p.object, wal);
    assert.equal(p.offset, third);
    assert.equal(r.errors, 1);
    const fixed = await fsck(sim, { repair: true });
    assert.equal(fixed.errors, 1, '--repair never cuts corruption');
    assert.ok(sim.readRaw(wal), 'the damaged segment is still there');
  });

  it('a damaged checkpoint is an error; the chunks are still checked, none is called an orphan or deleted', async () => {
    const sim = await flushed(20);
    const ck = `${VOL}/map/checkpoint`;
    sim.flipBit(ck, Math.floor((sim.readRaw(ck) as Buffer).length / 2), 3);
    const chunks = chunkFiles(sim);
    sim.flipBit(chunks[2] as string, HDR + REC + 50, 0);
    const r = await fsck(sim, { repair: true });
    const [m] = only(r, 'map');
    assert.equal(m?.object, ck);
    assert.equal(only(r, 'bad-record').length, 1, 'chunk CRCs are checked even without a map');
    assert.equal(only(r, 'orphan-chunk').length, 0, 'without a map nothing can be called an orphan');
    assert.deepEqual(chunkFiles(sim), chunks, 'nothing deleted');
  });

  it('a map log commit that disagrees with the checkpoint (chunk id below its high-water) is an error', async () => {
    // Flush, checkpoint (clean close), then flush more without closing: the log holds the later commits.
    const sim = new SimFS();
    let store = await Store.open(DIR, { fileIO: sim });
    await store.createVolume('c', { size: SIZE, blockSize: BS });
    let vol = await store.openVolume('c', { chunkBytes: HDR + PER_CHUNK * REC });
    const data = contents(32, 4);
    for (let b = 0; b < 16; b++) await vol.write(b * BS, data[b] as Buffer);
    await vol.close();
    await store.close();
    store = await Store.open(DIR, { fileIO: sim });
    vol = await store.openVolume('c', { chunkBytes: HDR + PER_CHUNK * REC, checkpointBytes: 1 << 20 });
    for (let b = 16; b < 24; b++) await vol.write(b * BS, data[b] as Buffer);
    await vol.flush();
    const after = sim.reopen();
    assertClean(await fsck(after.clone()));
    // Rewrite the checkpoint's next chunk id to above the logged commit (frame CRC recomputed).
    const { checkFrame, encodeFrame } = await import('../src/format/frame');
    const { decodeCheckpointHeader, encodeCheckpointHeader } = await import('../src/format/map-records');
    const ck = `${VOL}/map/checkpoint`;
    const raw = after.readRaw(ck) as Buffer;
    const f = checkFrame(raw, 0);
    assert.ok(f.ok);
    const h = decodeCheckpointHeader(f.payload);
    assert.ok(h);
    const frame = encodeFrame(encodeCheckpointHeader({ ...h, nextChunkId: h.nextChunkId + 5 }));
    after.writeRaw(ck, Buffer.concat([frame, raw.subarray(f.end)]));
    const r = await fsck(after);
    const [p] = only(r, 'map-inconsistent');
    assert.ok(p, JSON.stringify(r.problems));
    assert.match(p.object, /\.log$/);
    assert.equal(r.errors, 1);
  });

  it('refuses a volume open for writing (VBFS_LOCKED), with or without --repair', async () => {
    const sim = await flushed(4);
    const store = await Store.open(DIR, { fileIO: sim });
    const vol = await store.openVolume('c');
    for (const repair of [false, true]) {
      await assert.rejects(store.fsckVolume('c', { repair }), (e: unknown) => isVbfsError(e, 'VBFS_LOCKED'));
    }
    await vol.close();
    assertClean(await store.fsckVolume('c'));
    await store.close();
  });

  it('--repair holds the volume lock while it works', async () => {
    const sim = await flushed(4);
    const store = await Store.open(DIR, { fileIO: sim });
    let heldDuring = false;
    await store.fsckVolume('c', {
      repair: true,
      onProgress: () => {
        if (!heldDuring) heldDuring = sim.readRaw(`${VOL}/LOCK`) !== undefined;
      },
    });
    assert.ok(heldDuring, 'no LOCK file while --repair ran');
    assert.equal(sim.readRaw(`${VOL}/LOCK`), undefined, 'LOCK released afterwards');
    assert.equal(await store.isVolumeOpen('c'), false);
    await store.close();
  });

  it('streams: one chunk object read at a time, each once when the volume is clean', async () => {
    const sim = await flushed(40);
    const inner = new FileBackend(`${DIR}/objects`, sim);
    let inFlight = 0;
    let maxInFlight = 0;
    let gets = 0;
    const counting: Backend = {
      kind: 'counting',
      put: (k, d) => inner.put(k, d),
      delete: (k) => inner.delete(k),
      list: (p) => inner.list(p),
      close: () => inner.close(),
      get: async (k, o, l) => {
        gets++;
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        try {
          return await inner.get(k, o, l);
        } finally {
          inFlight--;
        }
      },
    };
    const r = await fsck(sim, { backend: counting });
    assertClean(r);
    assert.equal(maxInFlight, 1);
    assert.equal(gets, r.chunks);
  });

  it('the format v1 fixture store is clean', async () => {
    const fix = path.join(__dirname, '..', '..', 'test', 'fixtures', 'store-v1');
    const root = await tmpDir('fsck-fixture');
    try {
      await fsp.cp(fix, root, { recursive: true });
      const store = await Store.open(root);
      for (const name of ['raw', 'lz4']) {
        const r = await store.fsckVolume(name);
        assertClean(r);
        assert.ok(r.mappedBlocks > 0 && r.walBlocks > 0, `${name}: expected blocks in chunks and in the WAL`);
      }
      await store.close();
    } finally {
      await fsp.rm(root, { recursive: true, force: true });
    }
  });
});

/**
 * What a power cut leaves behind is never damage: the engine opens it, so fsck must
 * find no error there (warnings only: orphans, torn tails), and --repair must leave a
 * clean volume that reads exactly as before the repair.
 */
describe('fsck after simulated power cuts', function () {
  this.timeout(120_000);
  const modes = ['strict', 'batched', 'relaxed', 'async'] as const;
  const POINTS = 12;

  async function workload(sim: SimFS, seed: number, mode: (typeof modes)[number]): Promise<void> {
    const rng = new Rng(seed);
    const store = await Store.open(DIR, { fileIO: sim });
    await store.createVolume('c', { size: SIZE, blockSize: BS, durability: mode, compression: seed % 2 === 0 ? 'lz4' : 'none' });
    const tun: Partial<VolumeTunables> = {
      chunkBytes: HDR + 4 * REC,
      walSegmentBytes: 4096,
      writeBufferBytes: 32 * BS,
      flushBytes: 6 * BS,
      flushIntervalMs: 1_000_000,
      batchBlocks: 8,
      batchMs: 1_000_000,
      checkpointBytes: 512,
    };
    try {
      let vol = await store.openVolume('c', tun);
      for (let i = 0; i < 120; i++) {
        const op = rng.int(20);
        if (op < 13) {
          const blocks = 1 + rng.int(6);
          await vol.write(rng.int(BLOCKS - blocks) * BS, rng.bytes(blocks * BS));
        } else if (op < 16) await vol.fsync();
        else if (op < 19) await vol.flush();
        else {
          await vol.close();
          vol = await store.openVolume('c', tun);
        }
      }
    } finally {
      // After a power cut the dead store must still drop its timers (or mocha never exits).
      await Promise.race([store.close().catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
    }
  }

  async function readAll(sim: SimFS): Promise<Buffer> {
    const store = await Store.open(DIR, { fileIO: sim });
    try {
      const vol = await store.openVolume('c', { readOnly: true });
      return await vol.read(0, SIZE);
    } finally {
      await store.close();
    }
  }

  for (const [k, mode] of modes.entries()) {
    const seed = 40 + k;
    it(`${mode}: no error after any of ${POINTS} power cuts; --repair leaves it clean and reading the same`, async () => {
      const dry = new SimFS();
      await workload(dry, seed, mode);
      const total = dry.mutatingOps;
      const pick = new Rng(seed * 31);
      let crashes = 0;
      for (let i = 0; i < POINTS; i++) {
        const at = pick.range(20, Math.floor(total * 0.9));
        const sim = new SimFS().crashAt(at);
        try {
          await workload(sim, seed, mode);
        } catch (err) {
          if (!isCrash(err)) throw err;
        }
        if (!sim.crashed) continue;
        crashes++;
        const after = sim.afterCrash(new Rng(seed + i));
        if (!(await after.stat(`${VOL}/volume.json`))) continue; // crashed before the volume existed
        const where = `seed ${seed} crash at op ${at}`;
        const r = await fsck(after);
        assert.equal(r.errors, 0, `${where}: ${JSON.stringify(r.problems, null, 1)}`);
        const before = await readAll(after);
        const fixed = await fsck(after, { repair: true });
        assert.equal(fixed.errors, 0, `${where} (repair): ${JSON.stringify(fixed.problems, null, 1)}`);
        assert.ok(
          fixed.problems.every((p) => p.repaired),
          `${where}: --repair left something: ${JSON.stringify(fixed.problems, null, 1)}`,
        );
        assertClean(await fsck(after));
        assert.ok((await readAll(after)).equals(before), `${where}: --repair changed what the volume reads`);
      }
      assert.equal(crashes, POINTS, 'every planned power cut happened');
    });
  }
});

describe('vbfs fsck (command line)', function () {
  this.timeout(120_000);
  let root = '';
  let store = '';

  beforeEach(async () => {
    root = await tmpDir('fsck-cli');
    store = path.join(root, 'store');
  });
  afterEach(async () => {
    await fsp.rm(root, { recursive: true, force: true });
  });

  async function writeVolume(blocks: number): Promise<string> {
    const s = await Store.open(store);
    const info = await s.createVolume('v', { size: 1 << 20, blockSize: 4096 });
    const vol = await s.openVolume('v', { chunkBytes: 64 + 4 * (32 + 4096) });
    await vol.write(0, new Rng(5).bytes(blocks * 4096));
    await vol.close();
    await s.close();
    return path.join(store, 'objects', info.id, 'chunks');
  }

  it('clean: exit 0; --json prints one object with the figures', async () => {
    await writeVolume(10);
    const text = await vbfs(['fsck', 'v'], store);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /fsck: clean/);
    assert.equal(text.stderr, '', 'no progress bar when stderr is not a terminal');
    const j = await vbfs(['fsck', 'v', '--json'], store);
    assert.equal(j.code, 0, j.stderr);
    const r = JSON.parse(j.stdout) as FsckReport;
    assert.equal(r.clean, true);
    assert.equal(r.mappedBlocks, 10);
    assert.equal(r.liveBytes, 10 * 4096);
    assert.equal(r.chunks, 3);
    assert.equal(r.storedBytes, 3 * 64 + 10 * (32 + 4096));
  });

  it('a flipped bit: exit 1, one line naming the chunk and the offset', async () => {
    const dir = await writeVolume(10);
    const victim = path.join(dir, '00000002');
    const fd = fs.openSync(victim, 'r+');
    const b = Buffer.alloc(1);
    const at = 64 + (32 + 4096) + 1000;
    fs.readSync(fd, b, 0, 1, at);
    b[0] = (b[0] as number) ^ 0x10;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);
    const r = await vbfs(['fsck', 'v'], store);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('error:'));
    assert.equal(lines.length, 1, r.stdout);
    assert.match(lines[0] as string, new RegExp(`chunks/00000002 offset ${64 + 32 + 4096}:`));
    const j = await vbfs(['fsck', 'v', '--json'], store);
    assert.equal(j.code, 1);
    assert.equal((JSON.parse(j.stdout) as FsckReport).errors, 1);
  });

  it('an orphan: exit 0 with a warning; --repair removes it; then clean', async () => {
    const dir = await writeVolume(10);
    await fsp.copyFile(path.join(dir, '00000001'), path.join(dir, '00000077'));
    const r = await vbfs(['fsck', 'v'], store);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^warning: .*chunks\/00000077: \[orphan-chunk\]/m);
    const fix = await vbfs(['fsck', 'v', '--repair'], store);
    assert.equal(fix.code, 0, fix.stdout + fix.stderr);
    assert.equal(fs.existsSync(path.join(dir, '00000077')), false);
    assert.match((await vbfs(['fsck', 'v'], store)).stdout, /fsck: clean/);
  });

  it('a torn WAL tail after kill -9: exit 0 with a warning; --repair cuts it; then clean', async () => {
    const s = await Store.open(store);
    await s.createVolume('v', { size: 1 << 20, blockSize: 4096, durability: 'relaxed' });
    await s.close();
    // A writer we kill -9 after its fsync: its WAL is left behind, its LOCK is stale.
    const script = `
      const { Store } = require(${JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'))});
      (async () => {
        const s = await Store.open(${JSON.stringify(store)});
        const v = await s.openVolume('v', { flushBytes: 1 << 30, flushIntervalMs: 1e9 });
        for (let b = 0; b < 6; b++) await v.write(b * 4096, Buffer.alloc(4096, b + 1));
        await v.fsync();
        process.stdout.write('ready\\n');
        setInterval(() => {}, 1000);
      })();`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      child.on('exit', (code) => reject(new Error(`writer exited ${code}`)));
    });
    const locked = await vbfs(['fsck', 'v'], store);
    assert.equal(locked.code, 1, 'refused while another process has it open for writing');
    assert.match(locked.stderr, /open for writing by process \d+/);
    assert.equal(locked.stderr.trim().split('\n').length, 1, locked.stderr);
    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGKILL');
    await exited;

    const walDir = path.join(store, 'volumes', 'v', 'wal');
    const wal = path.join(
      walDir,
      (await fsp.readdir(walDir))
        .filter((n) => n.endsWith('.wal'))
        .sort()
        .pop() as string,
    );
    const size = (await fsp.stat(wal)).size;
    const offs = walRecordOffsets(await fsp.readFile(wal), 4096);
    assert.equal(offs.length, 6);
    const last = offs[5] as number;
    assert.ok(size - 1000 > last && size - 1000 < last + 32 + 4096, 'the cut below lands in the last block record');
    await fsp.truncate(wal, size - 1000);
    const r = await vbfs(['fsck', 'v', '--json'], store);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const rep = JSON.parse(r.stdout) as FsckReport;
    assert.equal(rep.problems.length, 1);
    assert.equal(rep.problems[0]?.kind, 'torn-wal-tail');
    assert.equal(rep.problems[0]?.object, wal);
    assert.equal(rep.problems[0]?.offset, last);
    const fix = await vbfs(['fsck', 'v', '--repair'], store);
    assert.equal(fix.code, 0, fix.stdout + fix.stderr);
    assert.equal((await fsp.stat(wal)).size, last);
    const again = await vbfs(['fsck', 'v', '--json'], store);
    assert.equal(again.code, 0);
    const clean = JSON.parse(again.stdout) as FsckReport;
    assert.equal(clean.clean, true, again.stdout);
    assert.equal(clean.walBlocks, 5);
  });

  it('usage errors exit 2, an unknown volume exits 1', async () => {
    const none = await vbfs(['fsck'], store);
    assert.equal(none.code, 2, none.stderr);
    const opt = await vbfs(['fsck', 'v', '--frobnicate'], store);
    assert.equal(opt.code, 2, opt.stderr);
    const unknown = await vbfs(['fsck', 'nope'], store);
    assert.equal(unknown.code, 1, unknown.stderr);
    assert.match(unknown.stderr, /nope/);
  });
});

describe('vbfs fsck and a FUSE mount', function () {
  this.timeout(180_000);
  let root = '';
  let store = '';
  let mnt = '';

  before(async function () {
    requireFuse(this);
    root = await tmpDir('fsck-fuse');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    await fsp.mkdir(mnt);
  });
  after(async () => {
    if (!root) return;
    await cleanupUnder(root, [mnt], [], store);
    await fsp.rm(root, { recursive: true, force: true });
  });

  it('FUSE: refused (exit 1, naming the mount) while the store is mounted read-write; clean after unmount, with the data written through the mount', async () => {
    assert.equal((await vbfs(['create', 'v', '--size', '8M'], store)).code, 0);
    const m = await vbfs(['mount', mnt, '--daemon'], store);
    assert.equal(m.code, 0, m.stderr);
    assert.ok(await isMounted(mnt));
    const fh = await fsp.open(path.join(mnt, 'v'), 'r+');
    await fh.write(new Rng(8).bytes(1 << 20), 0, 1 << 20, 4096);
    await fh.sync();
    await fh.close();
    const busy = await vbfs(['fsck', 'v'], store);
    assert.equal(busy.code, 1, busy.stdout + busy.stderr);
    assert.ok(busy.stderr.includes(`open for writing by the mount at ${mnt} (pid `), busy.stderr);
    assert.equal(busy.stdout, '', 'no report for a volume it refused to check');
    assert.equal((await vbfs(['fsck', 'v', '--repair'], store)).code, 1, '--repair is refused too');
    const u = await vbfs(['unmount', mnt], store);
    assert.equal(u.code, 0, u.stderr);
    const r = await vbfs(['fsck', 'v', '--json'], store);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const rep = JSON.parse(r.stdout) as FsckReport;
    assert.equal(rep.clean, true, r.stdout);
    assert.equal(rep.mappedBlocks, (1 << 20) / 4096);
  });
});
