import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import type { VolumeTunables } from '../src/store/types';
import { NodeFileIO } from '../src/io/node-file-io';
import { EMPTY, HOT } from '../src/map/block-index';
import { checkRecord, encodeRecord, FLAG_SEALED, FLAG_ZERO, maxPayload, RECORD_HEADER } from '../src/format/block-record';
import { decodeMapLogHeader, decodeTrimCommit, encodeMapLogHeader, encodeTrimCommit, readTrimRun } from '../src/format/map-records';
import { checkFrame, encodeFrame } from '../src/format/frame';
import { crc32c } from '../src/format/crc32c';
import { VbfsError, isVbfsError } from '../src/errors';
import type { KeyMaterial } from '../src/crypto/key-source';
import { SimFS } from './helpers/sim-fs';
import { Rng } from './helpers/rng';

/**
 * Zero blocks and TRIM in the engine: a trim of whole blocks, or a full-block write
 * of zeros, is a payload-less zero record in the WAL; the block goes Empty with no
 * write-buffer slot; the flush commits a map tombstone ('Z'), after which the old
 * chunk copy no longer counts, so a chunk left with no live block is deleted. The
 * trim survives a crash once fsynced (WAL replay) and after its flush (tombstone,
 * checkpoint), and on an encrypted volume a forged zero record is refused.
 */
const BS = 4096;
/** 8 records per chunk: a chunk is 8 blocks written together. */
const CHUNK = 64 + 8 * (RECORD_HEADER + BS);
const TUN: Partial<VolumeTunables> = { chunkBytes: CHUNK, flushBytes: 1 << 30, flushIntervalMs: 1_000_000, readaheadBytes: 0, checkpointBytes: 1 << 30 };

function pattern(n: number, seed: number): Buffer {
  return Buffer.from(new Rng(seed).bytes(n));
}

async function onDisk(
  durability: 'strict' | 'relaxed' = 'relaxed',
): Promise<{ store: Store; vol: Volume; dir: string; chunks: () => string[]; done: () => Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-zero-'));
  const store = await Store.open(dir, { fileIO: new NodeFileIO() });
  await store.createVolume('z', { size: 64 * BS, blockSize: BS, durability });
  const vol = await store.openVolume('z', TUN);
  const chunkDir = path.join(dir, 'objects', vol.info.id, 'chunks');
  return {
    store,
    vol,
    dir,
    chunks: () => (fs.existsSync(chunkDir) ? fs.readdirSync(chunkDir).sort() : []),
    done: async () => {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

const FIX = path.join(__dirname, '..', '..', 'test', 'fixtures', 'format');

/** A saved byte sample (VBFS_WRITE_FIXTURES=1 writes it): the encoders must keep producing it. */
function sample(name: string, bytes: Uint8Array): Buffer {
  const file = path.join(FIX, name);
  if (process.env.VBFS_WRITE_FIXTURES === '1') fs.writeFileSync(file, bytes);
  return fs.readFileSync(file);
}

/** Let the dead-chunk deletes (started, not awaited, by the flush) land. */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50));

describe('zero blocks and trim (engine)', () => {
  it('formats: a zero record (header only), a map log v4 header and a Z trim frame match their saved samples', () => {
    const rec = Buffer.alloc(RECORD_HEADER);
    encodeRecord(rec, 0, 77, 5, FLAG_ZERO, BS, Buffer.alloc(0));
    assert.deepEqual(rec, sample('wal-zero-record-v2.bin', rec));
    const c = checkRecord(rec, 0, rec.length, maxPayload(BS));
    assert.ok(c.ok && c.header.flags === FLAG_ZERO && c.header.len === 0, 'a payload-less zero record checks out');
    const noFlag = Buffer.from(rec);
    noFlag.writeUInt32LE(0, 24);
    assert.equal(checkRecord(noFlag, 0, noFlag.length, maxPayload(BS)).ok, false, 'only a zero record may have no payload');

    const hdr = encodeFrame(encodeMapLogHeader({ volumeId: '00112233445566778899aabbccddeeff', segment: 3 }));
    const h = checkFrame(sample('maplog-header-v4.bin', hdr), 0);
    assert.ok(h.ok);
    assert.equal(decodeMapLogHeader(h.payload)?.version, 4);
    // Blocks 10..12 at seqs 100..102 are one run; block 20 (seq 103) and block 21 (seq 90) two more.
    const z = encodeFrame(encodeTrimCommit(Float64Array.of(10, 11, 12, 20, 21), Float64Array.of(100, 101, 102, 103, 90), 5));
    const f = checkFrame(sample('maplog-trim-v4.bin', z), 0);
    assert.ok(f.ok);
    assert.deepEqual(decodeTrimCommit(f.payload), { runs: 3, blocks: 5 });
    assert.deepEqual(
      [0, 1, 2].map((i) => readTrimRun(f.payload, i)),
      [
        { block: 10, seq: 100, count: 3 },
        { block: 20, seq: 103, count: 1 },
        { block: 21, seq: 90, count: 1 },
      ],
    );
  });

  it('a trim of whole blocks makes them Empty with no slot; after the flush their chunk is deleted, and a reopen reads zeros', async () => {
    const t = await onDisk();
    try {
      const { vol } = t;
      const a = pattern(8 * BS, 1);
      const b = pattern(8 * BS, 2);
      await vol.write(0, a);
      await vol.write(8 * BS, b);
      await vol.flush();
      const before = t.chunks();
      assert.equal(before.length, 2, 'two chunks of 8 blocks');

      await vol.trim(0, 8 * BS);
      assert.equal(vol.blockState(0), EMPTY);
      assert.equal(vol.blockState(7), EMPTY);
      const s = vol.stats();
      assert.equal(s.trims, 1);
      assert.equal(s.zeroBlocks, 8);
      assert.equal(s.pendingBytes, 0, 'a zero record holds no write-buffer slot');
      assert.equal(s.zeroBlocksUnflushed, 8);
      assert.ok((await vol.read(0, 8 * BS)).equals(Buffer.alloc(8 * BS)));
      assert.ok((await vol.read(8 * BS, 8 * BS)).equals(b));

      const flushed = vol.stats().flushedBytes;
      await vol.flush();
      await settle();
      assert.equal(vol.stats().flushedBytes, flushed, 'the trim wrote no chunk bytes');
      assert.equal(vol.stats().zeroBlocksUnflushed, 0);
      assert.deepEqual(t.chunks(), before.slice(1), 'the chunk whose blocks were all trimmed is deleted');

      await vol.close();
      const again = await t.store.openVolume('z', TUN);
      assert.ok((await again.read(0, 8 * BS)).equals(Buffer.alloc(8 * BS)));
      assert.ok((await again.read(8 * BS, 8 * BS)).equals(b));
      assert.equal(again.blockState(3), EMPTY);
      await again.close();
    } finally {
      await t.done();
    }
  });

  it('a full-block write of zeros is a zero record: no chunk bytes; a write of zeros over Empty blocks logs nothing', async () => {
    const t = await onDisk();
    try {
      const { vol } = t;
      const wal0 = vol.stats().walBytes;
      await vol.write(0, Buffer.alloc(16 * BS));
      await vol.fsync();
      assert.equal(vol.stats().zeroBlocks, 0, 'never-written blocks are Empty already');
      assert.ok(vol.stats().walBytes - wal0 < BS, 'nothing logged for zeros over Empty blocks');

      await vol.write(0, pattern(8 * BS, 3));
      await vol.flush();
      assert.equal(t.chunks().length, 1);
      const flushed = vol.stats().flushedBytes;
      const wal1 = vol.stats().walBytes;
      await vol.write(0, Buffer.alloc(8 * BS));
      await vol.fsync();
      assert.equal(vol.stats().zeroBlocks, 8);
      assert.ok(vol.stats().walBytes - wal1 < 8 * (RECORD_HEADER + 64), `zero records are header-only (${vol.stats().walBytes - wal1} bytes)`);
      assert.equal(vol.blockState(5), EMPTY);
      await vol.flush();
      await settle();
      assert.equal(vol.stats().flushedBytes, flushed, 'zero blocks take no chunk space');
      assert.deepEqual(t.chunks(), [], 'the chunk that held them is gone');
      assert.ok((await vol.read(0, 16 * BS)).equals(Buffer.alloc(16 * BS)));
    } finally {
      await t.done();
    }
  });

  it('partial blocks of a trim are zeroed by read-modify-write; whole blocks in between become Empty', async () => {
    const t = await onDisk();
    try {
      const { vol } = t;
      const data = pattern(4 * BS, 4);
      await vol.write(0, data);
      await vol.flush(); // the partial blocks must be read back from their chunk
      await vol.trim(100, 200); // inside block 0
      await vol.trim(BS + 1000, 2 * BS); // end of block 1, all of block 2, start of block 3
      const want = Buffer.from(data);
      want.fill(0, 100, 300);
      want.fill(0, BS + 1000, 3 * BS + 1000);
      assert.ok((await vol.read(0, 4 * BS)).equals(want));
      assert.deepEqual([vol.blockState(0), vol.blockState(1), vol.blockState(2), vol.blockState(3)], [HOT, HOT, EMPTY, HOT]);
      assert.equal(vol.stats().zeroBlocks, 1);
      await vol.flush();
      await vol.close();
      const again = await t.store.openVolume('z', TUN);
      assert.ok((await again.read(0, 4 * BS)).equals(want));
      await again.close();
    } finally {
      await t.done();
    }
  });

  describe('after a power cut (SimFS: only what was synced survives)', () => {
    const run = async (steps: (vol: Volume) => Promise<void>, tun: Partial<VolumeTunables> = TUN, key?: KeyMaterial): Promise<Buffer> => {
      const sim = new SimFS();
      const store = await Store.open('/s', { fileIO: sim });
      await store.createVolume('z', { size: 64 * BS, blockSize: BS, durability: 'relaxed', ...(key ? { encryption: { key } } : {}) });
      const vol = await store.openVolume('z', { ...tun, ...(key ? { key } : {}) });
      await vol.write(0, pattern(16 * BS, 5));
      await vol.flush();
      await steps(vol);
      sim.crashNow();
      await store.close().catch(() => undefined);
      const after = sim.afterCrash(new Rng(1), 'none');
      const s2 = await Store.open('/s', { fileIO: after });
      try {
        const v2 = await s2.openVolume('z', { ...tun, ...(key ? { key } : {}) });
        return await v2.read(0, 16 * BS);
      } finally {
        await s2.close();
      }
    };
    const want = (): Buffer => {
      const w = pattern(16 * BS, 5);
      w.fill(0, 2 * BS, 10 * BS);
      return w;
    };

    it('an fsynced trim survives (WAL replay of zero records)', async () => {
      const got = await run(async (vol) => {
        await vol.trim(2 * BS, 8 * BS);
        await vol.fsync();
      });
      assert.ok(got.equals(want()));
    });

    it('a flushed trim is not undone by map load + WAL replay (the tombstone in the map log)', async () => {
      const got = await run(async (vol) => {
        await vol.trim(2 * BS, 8 * BS);
        await vol.flush();
      });
      assert.ok(got.equals(want()));
    });

    it('nor after a checkpoint replaced the map log (an absent block is Empty)', async () => {
      const got = await run(
        async (vol) => {
          await vol.trim(2 * BS, 8 * BS);
          await vol.flush(); // checkpointBytes 1: every flush writes a checkpoint
          await vol.write(40 * BS, pattern(BS, 6));
          await vol.flush();
        },
        { ...TUN, checkpointBytes: 1 },
      );
      assert.ok(got.equals(want()));
    });

    it('an encrypted volume replays its sealed zero records', async () => {
      const key: KeyMaterial = { source: '$TEST_KEY', bytes: Buffer.from(new Rng(9).bytes(32).toString('hex')) };
      const got = await run(
        async (vol) => {
          await vol.trim(2 * BS, 8 * BS);
          await vol.fsync();
        },
        TUN,
        key,
      );
      assert.ok(got.equals(want()));
    });
  });

  it('fsck understands zero records in the WAL and Z tombstones in the map log: clean, trimmed blocks not mapped', async () => {
    for (const key of [undefined, { source: '$TEST_KEY', bytes: Buffer.from(new Rng(10).bytes(32).toString('hex')) } as KeyMaterial]) {
      const sim = new SimFS();
      const store = await Store.open('/s', { fileIO: sim });
      await store.createVolume('f', { size: 64 * BS, blockSize: BS, durability: 'relaxed', ...(key ? { encryption: { key } } : {}) });
      const vol = await store.openVolume('f', { ...TUN, ...(key ? { key } : {}) });
      await vol.write(0, pattern(16 * BS, 11));
      await vol.flush();
      await vol.trim(2 * BS, 8 * BS); // blocks 2..9: a Z frame in the map log
      await vol.flush();
      await vol.trim(12 * BS, 2 * BS); // blocks 12, 13: zero records left in the WAL
      await vol.fsync();
      const after = sim.reopen(); // kill -9
      const s2 = await Store.open('/s', { fileIO: after });
      try {
        const r = await s2.fsckVolume('f', key ? { key } : {});
        assert.deepEqual(r.problems, [], `${key ? 'encrypted' : 'plain'}: ${r.problems.map((p) => `${p.kind}: ${p.message}`).join('; ')}`);
        assert.equal(r.mappedBlocks, 8, 'blocks 0, 1 and 10..15 are mapped (12 and 13 until the WAL replays their trims)');
        assert.equal(r.walBlocks, 2);
      } finally {
        await s2.close();
      }
    }
  });

  describe('encrypted volume: a zero record must authenticate', () => {
    const key: KeyMaterial = { source: '$TEST_KEY', bytes: Buffer.from(new Rng(8).bytes(32).toString('hex')) };

    /** Blocks 0..3 written and fsynced (in the WAL), block 3 trimmed; then the process dies. */
    const setup = async (): Promise<{ sim: SimFS; wal: string; raw: Buffer }> => {
      const sim = new SimFS();
      const store = await Store.open('/s', { fileIO: sim });
      await store.createVolume('e', { size: 64 * BS, blockSize: BS, durability: 'relaxed', encryption: { key } });
      const vol = await store.openVolume('e', { ...TUN, key });
      await vol.write(0, pattern(4 * BS, 7));
      await vol.trim(3 * BS, BS);
      await vol.fsync();
      const after = sim.reopen();
      const wal = after.files('/s/volumes/e/wal/').filter((f) => f.endsWith('.wal'))[0] as string;
      return { sim: after, wal, raw: Buffer.from(after.readRaw(wal) as Buffer) };
    };
    const open = async (sim: SimFS): Promise<Buffer | VbfsError> => {
      const store = await Store.open('/s', { fileIO: sim });
      try {
        const vol = await store.openVolume('e', { ...TUN, key });
        return await vol.read(0, 4 * BS);
      } catch (err) {
        if (isVbfsError(err)) return err;
        throw err;
      } finally {
        await store.close().catch(() => undefined);
      }
    };
    /**
     * `raw` with `rec` written where the log ends: at the end of an appended segment, or
     * over the start of a preallocated segment's zero tail (the file keeps its size).
     */
    const atLogEnd = (raw: Buffer, rec: Buffer): Buffer => {
      let off = 64;
      while (off + RECORD_HEADER <= raw.length && raw.subarray(off, off + RECORD_HEADER).some((b) => b !== 0)) off += RECORD_HEADER + raw.readUInt32LE(off + 4);
      const out = Buffer.concat([raw.subarray(0, off), rec]);
      return out.length >= raw.length ? out : Buffer.concat([out, raw.subarray(out.length)]);
    };
    /** Offset of the (only) zero record in the segment. */
    const zeroAt = (raw: Buffer): number => {
      for (let off = 64; off + RECORD_HEADER <= raw.length;) {
        const len = raw.readUInt32LE(off + 4);
        if ((raw.readUInt32LE(off + 24) & FLAG_ZERO) !== 0) return off;
        off += RECORD_HEADER + len;
      }
      throw new Error('no zero record in the WAL');
    };

    it('the genuine one replays: the trimmed block reads as zeros', async () => {
      const { sim } = await setup();
      const got = await open(sim);
      assert.ok(Buffer.isBuffer(got), `open failed: ${String(got)}`);
      const want = pattern(4 * BS, 7);
      want.fill(0, 3 * BS);
      assert.ok(got.equals(want));
    });

    it('a forged zero record appended to the WAL (valid CRC, made-up tag) refuses the open: VBFS_CORRUPT', async () => {
      const { sim, wal, raw } = await setup();
      const rec = Buffer.alloc(RECORD_HEADER + 16);
      const end = encodeRecord(rec, 0, 1_000_000, 1, FLAG_ZERO | FLAG_SEALED, BS, new Rng(3).bytes(16));
      sim.writeRaw(wal, atLogEnd(raw, rec.subarray(0, end)));
      const got = await open(sim);
      assert.ok(got instanceof VbfsError, 'the forged trim was accepted');
      assert.equal(got.code, 'VBFS_CORRUPT');
    });

    it('an unsealed zero record (what a plain volume writes) appended to the WAL refuses the open', async () => {
      const { sim, wal, raw } = await setup();
      const rec = Buffer.alloc(RECORD_HEADER);
      encodeRecord(rec, 0, 1_000_000, 1, FLAG_ZERO, BS, Buffer.alloc(0));
      sim.writeRaw(wal, atLogEnd(raw, rec));
      const got = await open(sim);
      assert.ok(got instanceof VbfsError, 'the unsealed trim was accepted');
      assert.equal(got.code, 'VBFS_CORRUPT');
    });

    it('the genuine zero record moved to another block (header and CRC patched) refuses the open', async () => {
      const { sim, wal, raw } = await setup();
      const at = zeroAt(raw);
      raw.writeUInt32LE(1, at + 16); // block 3 -> 1
      raw.writeUInt32LE(crc32c(raw, 0, at + 4, at + RECORD_HEADER + raw.readUInt32LE(at + 4)), at);
      sim.writeRaw(wal, raw);
      const got = await open(sim);
      assert.ok(got instanceof VbfsError, 'the moved trim was accepted');
      assert.equal(got.code, 'VBFS_CORRUPT');
    });
  });
});
