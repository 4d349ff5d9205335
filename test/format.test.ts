import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32c, crc32cImplementation, crc32cJs, setCrc32cAccelerator } from '../src/format/crc32c';
import { installCrc32c, loadNativeCrc32c } from '../src/os/native-crc32c';
import { checkRecord, encodeRecord, encodeSyncMarker, isSyncMarker, RECORD_HEADER, syncMarkerClaim, SYNC_MARKER_BYTES } from '../src/format/block-record';
import { checkFrame, encodeFrame } from '../src/format/frame';
import { CHUNK_MAGIC, decodeSegmentHeader, encodeSegmentHeader, WAL_MAGIC } from '../src/format/segment-header';
import {
  allocCommit,
  allocPlacement,
  allocRuns,
  decodeExtentCommit,
  decodeRuns,
  encodeExtentCommit,
  EXTENT_ENTRY,
  extentCommitEntryOffset,
  readExtent,
  runsEntryOffset,
  writeExtent,
  encodeCommit,
  commitEntryOffset,
  decodeCheckpointHeader,
  decodeCommit,
  decodeMapLogHeader,
  decodeSyncFrame,
  decodeReservation,
  encodeReservation,
  encodeCheckpointHeader,
  encodeMapLogHeader,
  encodeSyncFrame,
  readLocation,
  writeLocation,
} from '../src/format/map-records';
import { readU64, writeU64 } from '../src/format/u64';

/**
 * Encoders and decoders against saved byte samples in test/fixtures/format/. A
 * change of any on-disk layout makes these fail: bump the format version and keep
 * the old samples (and a reader for them) instead of editing the files.
 * Regenerate only for a new format version: VBFS_WRITE_FIXTURES=1.
 */
const FIX = path.join(__dirname, '..', '..', 'test', 'fixtures', 'format');
const VOLUME_ID = '00112233445566778899aabbccddeeff';

function sample(name: string, bytes: Uint8Array): Buffer {
  const file = path.join(FIX, name);
  if (process.env.VBFS_WRITE_FIXTURES === '1') {
    fs.mkdirSync(FIX, { recursive: true });
    fs.writeFileSync(file, bytes);
  }
  return fs.readFileSync(file);
}

/** A sample of an older format version: only ever read, never regenerated. */
function oldSample(name: string): Buffer {
  return fs.readFileSync(path.join(FIX, name));
}

function payload(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + 3) & 0xff;
  return b;
}

describe('format', () => {
  it('crc32c matches the standard check value and composes', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
    const b = payload(1000);
    assert.equal(crc32c(b, crc32c(b, 0, 0, 333), 333, 1000), crc32c(b));
  });

  const crcImpl = installCrc32c();
  it(`crc32c: the ${crcImpl} implementation agrees with the table version at every length and offset`, () => {
    const b = payload(9000);
    for (const [start, end] of [
      [0, 0],
      [0, 255],
      [0, 256],
      [3, 4099],
      [1, 9000],
      [4096, 8192],
    ] as const) {
      assert.equal(crc32c(b, 0, start, end), crc32cJs(b, 0, start, end), `[${start}, ${end})`);
      assert.equal(crc32c(b, 0x12345678, start, end), crc32cJs(b, 0x12345678, start, end), `continued [${start}, ${end})`);
    }
  });

  it('crc32c: an accelerator is taken only if it gives the check value; VBFS_CRC32C=js keeps the table', () => {
    assert.equal(loadNativeCrc32c({ VBFS_CRC32C: 'js' }), null);
    assert.equal(
      setCrc32cAccelerator(() => 0),
      false,
    );
    assert.equal(crc32cImplementation(), crcImpl);
    const b = payload(4096);
    try {
      assert.equal(installCrc32c({ VBFS_CRC32C: 'js' }), 'js');
      assert.equal(crc32c(b), crc32cJs(b));
    } finally {
      installCrc32c();
    }
    assert.equal(crc32cImplementation(), crcImpl);
  });

  it('u64 round-trips values up to 2^53', () => {
    const b = Buffer.alloc(8);
    for (const v of [0, 1, 0xffffffff, 0x100000000, 2 ** 40 + 12345, Number.MAX_SAFE_INTEGER]) {
      writeU64(b, 0, v);
      assert.equal(readU64(b, 0), v);
      assert.equal(b.readBigUInt64LE(0), BigInt(v));
    }
  });

  it('block record: saved sample decodes, encoder reproduces it byte for byte', () => {
    const buf = Buffer.alloc(RECORD_HEADER + 512);
    encodeRecord(buf, 0, 2 ** 33 + 7, 123456789, 0, 512, payload(512));
    const saved = sample('block-record-v1.bin', buf);
    assert.deepEqual(buf, saved);
    const r = checkRecord(saved, 0, saved.length, 512);
    assert.ok(r.ok);
    assert.deepEqual(r.header, { len: 512, seq: 2 ** 33 + 7, block: 123456789, flags: 0, rawLen: 512 });
  });

  it('block record: every single-bit flip is detected, short and zero tails are told apart', () => {
    const good = Buffer.alloc(RECORD_HEADER + 64);
    encodeRecord(good, 0, 5, 9, 0, 64, payload(64));
    for (let bit = 0; bit < good.length * 8; bit++) {
      const b = Buffer.from(good);
      b[bit >> 3] = (b[bit >> 3] as number) ^ (1 << (bit & 7));
      assert.equal(checkRecord(b, 0, b.length, 64).ok, false, `flip of bit ${bit} not detected`);
    }
    assert.deepEqual(checkRecord(good, 0, good.length - 1, 64), { ok: false, reason: 'short' });
    assert.deepEqual(checkRecord(Buffer.alloc(100), 0, 100, 64), { ok: false, reason: 'zero' });
  });

  it('segment headers (WAL and chunk): saved samples decode', () => {
    // WAL format 3: count holds the flags (1 = preallocated), maxSeq the base seq.
    const wal = Buffer.from(encodeSegmentHeader({ magic: WAL_MAGIC, blockSize: 4096, volumeId: VOLUME_ID, number: 42, count: 1, maxSeq: 2 ** 40 + 3 }));
    const chk = Buffer.from(encodeSegmentHeader({ magic: CHUNK_MAGIC, blockSize: 4096, volumeId: VOLUME_ID, number: 7, count: 1024, maxSeq: 99999 }));
    assert.deepEqual(wal, sample('wal-header-v3.bin', wal));
    assert.deepEqual(chk, sample('chunk-header-v1.bin', chk), 'chunk objects are still format 1');
    assert.deepEqual(decodeSegmentHeader(wal, WAL_MAGIC), {
      magic: WAL_MAGIC,
      version: 3,
      blockSize: 4096,
      volumeId: VOLUME_ID,
      number: 42,
      count: 1,
      maxSeq: 2 ** 40 + 3,
    });
    const v2 = decodeSegmentHeader(oldSample('wal-header-v2.bin'), WAL_MAGIC);
    assert.deepEqual(v2, { magic: WAL_MAGIC, version: 2, blockSize: 4096, volumeId: VOLUME_ID, number: 42, count: 0, maxSeq: 0 });
    const v1 = decodeSegmentHeader(oldSample('wal-header-v1.bin'), WAL_MAGIC);
    assert.deepEqual(v1, { magic: WAL_MAGIC, version: 1, blockSize: 4096, volumeId: VOLUME_ID, number: 42, count: 0, maxSeq: 0 });
    assert.deepEqual(decodeSegmentHeader(sample('chunk-header-v1.bin', chk), CHUNK_MAGIC), {
      magic: CHUNK_MAGIC,
      version: 1,
      blockSize: 4096,
      volumeId: VOLUME_ID,
      number: 7,
      count: 1024,
      maxSeq: 99999,
    });
    assert.equal(decodeSegmentHeader(wal, CHUNK_MAGIC), null, 'magic is checked');
    const bad = Buffer.from(wal);
    bad[33] = (bad[33] as number) ^ 1;
    assert.equal(decodeSegmentHeader(bad, WAL_MAGIC), null, 'crc is checked');
  });

  it('map log header and commit frames: saved samples decode', () => {
    const hdr = encodeFrame(encodeMapLogHeader({ volumeId: VOLUME_ID, segment: 3 }));
    const p = allocCommit(17, 2);
    writeLocation(p, commitEntryOffset(0), 10, 100, 17, 64, 4096, 0);
    writeLocation(p, commitEntryOffset(1), 11, 101, 17, 4192, 1000, 1);
    const commit = encodeFrame(p);
    const savedHdr = oldSample('maplog-header-v2.bin');
    const savedCommit = oldSample('maplog-commit-v1.bin'); // unchanged in format 2
    assert.deepEqual(commit, savedCommit);
    const f = checkFrame(savedHdr, 0);
    assert.ok(f.ok);
    assert.deepEqual(decodeMapLogHeader(f.payload), { version: 2, volumeId: VOLUME_ID, segment: 3 });
    const f3 = checkFrame(sample('maplog-header-v3.bin', hdr), 0);
    assert.ok(f3.ok);
    assert.deepEqual(decodeMapLogHeader(f3.payload), { version: 3, volumeId: VOLUME_ID, segment: 3 });
    const f1 = checkFrame(oldSample('maplog-header-v1.bin'), 0);
    assert.ok(f1.ok);
    assert.deepEqual(decodeMapLogHeader(f1.payload), { version: 1, volumeId: VOLUME_ID, segment: 3 });
    const sync = encodeFrame(encodeSyncFrame(123456));
    const savedSync = sample('maplog-sync-v2.bin', sync);
    assert.deepEqual(sync, savedSync);
    const sf = checkFrame(savedSync, 0);
    assert.ok(sf.ok);
    assert.equal(decodeSyncFrame(sf.payload), 123456);
    assert.equal(decodeSyncFrame(p), null, 'a commit is not a sync frame');
    const c = checkFrame(savedCommit, 0);
    assert.ok(c.ok);
    assert.deepEqual(decodeCommit(c.payload), { chunkId: 17, count: 2 });
    assert.deepEqual(readLocation(c.payload, commitEntryOffset(1)), { block: 11, seq: 101, chunkId: 17, offset: 4192, len: 1000, flags: 1 });
    const pl = allocPlacement(17, 2);
    pl.blocks.set([10, 11]);
    pl.seqs.set([100, 101]);
    pl.offsets.set([64, 4192]);
    pl.lens.set([4096, 1000]);
    pl.flags.set([0, 1]);
    assert.deepEqual(encodeFrame(encodeCommit(pl)), savedCommit, 'a placement encodes to the same commit');
  });

  it("map log seq reservation ('Q' frame): saved sample decodes, encoder reproduces it, no other frame reads as one", () => {
    const q = encodeFrame(encodeReservation(2 ** 40 + 5));
    const saved = sample('maplog-reservation-v3.bin', q);
    assert.deepEqual(q, saved);
    assert.equal(saved.length, 24);
    assert.equal(saved[8], 0x51); // 'Q'
    assert.equal(readU64(saved, 16), 2 ** 40 + 5);
    const f = checkFrame(saved, 0);
    assert.ok(f.ok);
    assert.equal(decodeReservation(f.payload), 2 ** 40 + 5);
    assert.equal(decodeSyncFrame(f.payload), null, 'a reservation is not a sync frame');
    assert.equal(decodeReservation(encodeSyncFrame(7)), null, 'a sync frame is not a reservation');
    assert.equal(decodeReservation(Buffer.concat([encodeReservation(7), Buffer.alloc(1)])), null, 'wrong length');
  });

  it('WAL sync marker (format 2): saved sample decodes, encoder reproduces it', () => {
    const buf = Buffer.alloc(SYNC_MARKER_BYTES);
    assert.equal(encodeSyncMarker(buf, 0, 2 ** 33 + 7, Buffer.alloc(8)), SYNC_MARKER_BYTES);
    const saved = sample('wal-sync-marker-v2.bin', buf);
    assert.deepEqual(buf, saved);
    const r = checkRecord(saved, 0, saved.length, 4096);
    assert.ok(r.ok);
    assert.ok(isSyncMarker(r.header));
    assert.equal(syncMarkerClaim(r.header, saved, RECORD_HEADER), 2 ** 33 + 7);
    const bad = Buffer.from(saved);
    bad[16] = 1; // a block number in a marker
    bad.writeUInt32LE(crc32c(bad, 0, 4, bad.length), 0);
    const rb = checkRecord(bad, 0, bad.length, 4096);
    assert.ok(rb.ok);
    assert.equal(syncMarkerClaim(rb.header, bad, RECORD_HEADER), -1, 'a malformed marker is refused');
  });

  it('checkpoint header: saved samples decode (v1 and v2)', () => {
    const h = encodeFrame(encodeCheckpointHeader({ volumeId: VOLUME_ID, seq: 2 ** 40, mapSegment: 9, nextChunkId: 300, entryCount: 123 }));
    const f1 = checkFrame(oldSample('checkpoint-header-v1.bin'), 0);
    assert.ok(f1.ok);
    assert.deepEqual(decodeCheckpointHeader(f1.payload), { version: 1, volumeId: VOLUME_ID, seq: 2 ** 40, mapSegment: 9, nextChunkId: 300, entryCount: 123 });
    const saved = sample('checkpoint-header-v2.bin', h);
    assert.deepEqual(h, saved);
    const f = checkFrame(saved, 0);
    assert.ok(f.ok);
    assert.deepEqual(decodeCheckpointHeader(f.payload), { version: 2, volumeId: VOLUME_ID, seq: 2 ** 40, mapSegment: 9, nextChunkId: 300, entryCount: 123 });
  });

  it('extents (map log v3 and checkpoint v2): a placement encodes to the saved commit, runs to the saved checkpoint frame', () => {
    // Blocks 2^32-2 .. 2^32 raw and back to back (one extent across the 16 TiB edge), then
    // an LZ4 block, then a block far away (256 TiB - 1).
    const stride = RECORD_HEADER + 4096;
    const pl = allocPlacement(17, 5);
    pl.blocks.set([2 ** 32 - 2, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 36 - 1]);
    pl.seqs.set([100, 101, 102, 103, 104]);
    pl.offsets.set([64, 64 + stride, 64 + 2 * stride, 64 + 3 * stride, 64 + 3 * stride + RECORD_HEADER + 1000]);
    pl.lens.set([4096, 4096, 4096, 1000, 4096]);
    pl.flags.set([0, 0, 0, 1, 0]);
    const commit = encodeFrame(encodeExtentCommit(pl));
    const saved = sample('maplog-extent-commit-v3.bin', commit);
    assert.deepEqual(commit, saved);
    const c = checkFrame(saved, 0);
    assert.ok(c.ok);
    assert.deepEqual(decodeExtentCommit(c.payload), { chunkId: 17, extents: 3, blocks: 5 });
    assert.deepEqual(readExtent(c.payload, extentCommitEntryOffset(0)), {
      block: 2 ** 32 - 2,
      count: 3,
      seq: 100,
      chunkId: 17,
      offset: 64,
      len: 4096,
      flags: 0,
    });
    assert.deepEqual(readExtent(c.payload, extentCommitEntryOffset(1)), {
      block: 2 ** 32 + 1,
      count: 1,
      seq: 103,
      chunkId: 17,
      offset: 64 + 3 * stride,
      len: 1000,
      flags: 1,
    });
    assert.equal(decodeCommit(c.payload), null, "an 'X' frame is not a 'C' frame");

    const r = allocRuns(2);
    writeExtent(r, runsEntryOffset(0), 5, 1024, 2 ** 40, 300, 64, 4096, 0);
    writeExtent(r, runsEntryOffset(1), 2 ** 36 - 1, 1, 2 ** 40 + 5000, 301, 4192, 77, 1);
    const rf = encodeFrame(r);
    const savedRuns = sample('checkpoint-runs-v2.bin', rf);
    assert.deepEqual(rf, savedRuns);
    const f = checkFrame(savedRuns, 0);
    assert.ok(f.ok);
    assert.equal(decodeRuns(f.payload), 2);
    assert.deepEqual(readExtent(f.payload, runsEntryOffset(1)), {
      block: 2 ** 36 - 1,
      count: 1,
      seq: 2 ** 40 + 5000,
      chunkId: 301,
      offset: 4192,
      len: 77,
      flags: 1,
    });
    assert.equal(rf.length, 8 + 8 + 2 * EXTENT_ENTRY, '32 bytes per extent');
  });

  it('frames: damage is detected, a zero tail reads as zero', () => {
    const f = encodeFrame(Buffer.from('Chello'));
    const b = Buffer.from(f);
    b[9] = (b[9] as number) ^ 0x10;
    assert.deepEqual(checkFrame(b, 0), { ok: false, reason: 'bad-crc' });
    assert.deepEqual(checkFrame(Buffer.alloc(20), 0), { ok: false, reason: 'zero' });
    assert.deepEqual(checkFrame(f.subarray(0, f.length - 1), 0), { ok: false, reason: 'short' });
  });
});
