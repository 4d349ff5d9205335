import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';
import type { VolumeTunables } from '../src/store/types';
import type { Logger } from '../src/types';
import { VbfsError, isVbfsError } from '../src/errors';
import type { KeyMaterial } from '../src/crypto/key-source';
import { sealHook } from '../src/crypto/volume-cipher';
import { FLAG_LZ4, FLAG_SEALED } from '../src/format/block-record';
import { crc32c } from '../src/format/crc32c';
import { SimFS } from './helpers/sim-fs';
import { replayWal } from '../src/wal/wal-reader';
import { Rng } from './helpers/rng';

/**
 * Encryption at rest through the engine (issue 13): round trips through the write
 * buffer, the WAL replay and the chunks; key handling at open; no plaintext in any
 * store file; a record damaged with its CRC fixed up, moved to another block or
 * another volume, or replaced by a plaintext record is VBFS_CORRUPT, never bytes;
 * each seq sealed once. The model test and the crash sweep also run encrypted
 * (model.test.ts, crash.test.ts).
 */
const DIR = '/store';
const BS = 512;
const SEALED_REC = 32 + BS + 16; // header + raw payload + GCM tag
const HDR = 64; // segment / chunk header
const BLOCKS = 64;
const SIZE = BS * BLOCKS;
const KEEP_IN_WAL: Partial<VolumeTunables> = { flushBytes: 1 << 30, writeBufferBytes: 1 << 20, flushIntervalMs: 1_000_000, walSegmentBytes: 1 << 20 };
const SMALL_CHUNKS: Partial<VolumeTunables> = { chunkBytes: HDR + 8 * SEALED_REC, checkpointBytes: 1 << 20, flushIntervalMs: 1_000_000 };

/** A raw 32-byte key, as `--key-env` gives one (64 hex digits). */
function hexKey(seed = 1): KeyMaterial {
  return { source: '$TEST_KEY', bytes: Buffer.from(new Rng(seed).bytes(32).toString('hex')) };
}
/** A passphrase; tests create with cheap scrypt parameters. */
function passphrase(text: string): KeyMaterial {
  return { source: '$TEST_PASSPHRASE', bytes: Buffer.from(text) };
}
const CHEAP_SCRYPT = { N: 1024, r: 8, p: 1 };

class RecordingLogger implements Logger {
  readonly lines: string[] = [];
  error(msg: string, meta?: Record<string, unknown>): void {
    this.lines.push(`${msg} ${JSON.stringify(meta ?? {})}`);
  }
  warn(msg: string, meta?: Record<string, unknown>): void {
    this.lines.push(`${msg} ${JSON.stringify(meta ?? {})}`);
  }
  info(msg: string, meta?: Record<string, unknown>): void {
    this.lines.push(`${msg} ${JSON.stringify(meta ?? {})}`);
  }
  debug(msg: string, meta?: Record<string, unknown>): void {
    this.lines.push(`${msg} ${JSON.stringify(meta ?? {})}`);
  }
}

function contents(n: number, seed: number): Buffer[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.bytes(BS));
}

function joined(data: Buffer[]): Buffer {
  const out = Buffer.alloc(SIZE);
  data.forEach((d, b) => d.copy(out, b * BS));
  return out;
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<VbfsError> {
  try {
    await p;
  } catch (err) {
    assert.ok(isVbfsError(err), `expected ${code}, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    return err;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

/** An encrypted volume 'c' in a fresh SimFS store with blocks 0..n-1 written and fsynced; the process then dies (kill -9). */
async function encryptedWalOnly(n: number, key = hexKey(), extra: { compression?: 'lz4' } = {}): Promise<{ sim: SimFS; data: Buffer[]; wal: string }> {
  const sim = new SimFS();
  const store = await Store.open(DIR, { fileIO: sim });
  await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed', encryption: { key }, ...extra });
  const vol = await store.openVolume('c', { ...KEEP_IN_WAL, key });
  const data = contents(n, 7 + n);
  for (let b = 0; b < n; b++) await vol.write(b * BS, data[b] as Buffer);
  await vol.fsync();
  const after = sim.reopen();
  const wal = after.files(`${DIR}/volumes/c/wal/`).filter((f) => f.endsWith('.wal'))[0] as string;
  return { sim: after, data, wal };
}

/** An encrypted volume with n blocks flushed into chunks of 8 records and cleanly closed. */
async function encryptedFlushed(n: number, name = 'c', sim = new SimFS(), key = hexKey()): Promise<{ sim: SimFS; data: Buffer[]; chunks: string[] }> {
  const store = await Store.open(DIR, { fileIO: sim });
  await store.createVolume(name, { size: SIZE, blockSize: BS, durability: 'relaxed', encryption: { key } });
  const vol = await store.openVolume(name, { ...SMALL_CHUNKS, key });
  const data = contents(n, 100 + n + name.length);
  for (let b = 0; b < n; b++) await vol.write(b * BS, data[b] as Buffer);
  await vol.flush();
  const id = vol.info.id;
  await vol.close();
  await store.close();
  const after = sim.reopen();
  return { sim: after, data, chunks: after.files(`${DIR}/objects/${id}/chunks/`) };
}

/** Open volume `name` with `key` and read all of it: the bytes, or the VbfsError. */
async function openAndRead(sim: SimFS, key: KeyMaterial | undefined = hexKey(), name = 'c'): Promise<Buffer | VbfsError> {
  let store: Store | undefined;
  try {
    store = await Store.open(DIR, { fileIO: sim });
    const vol = await store.openVolume(name, { ...KEEP_IN_WAL, key });
    return await vol.read(0, SIZE);
  } catch (err) {
    if (err instanceof VbfsError) return err;
    throw err;
  } finally {
    await store?.close().catch(() => {});
  }
}

function assertCorrupt(got: Buffer | VbfsError, what: string): void {
  assert.ok(got instanceof VbfsError, `${what}: the volume opened and read back data`);
  assert.equal(got.code, 'VBFS_CORRUPT', `${what}: expected VBFS_CORRUPT, got ${got.code}: ${got.message}`);
}

/** Rewrite the CRC of the record at `off` so that only authentication can catch a change. */
function fixCrc(buf: Buffer, off: number): void {
  const len = buf.readUInt32LE(off + 4);
  buf.writeUInt32LE(crc32c(buf, 0, off + 4, off + 32 + len), off);
}

/** Every file of the store, as bytes. */
function storeFiles(sim: SimFS): Map<string, Buffer> {
  return new Map(sim.files('/').map((f) => [f, sim.readRaw(f) as Buffer]));
}

describe('encryption at rest (engine)', () => {
  afterEach(() => {
    sealHook.fn = null;
  });

  describe('round trip', () => {
    it('reads back what was written: from the write buffer, after WAL replay, from chunks, read-only; volume.json says encrypted', async () => {
      const key = hexKey(3);
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      const info = await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed', encryption: { key } });
      assert.equal(info.encrypted, true);
      assert.equal(info.formatVersion, 3);
      const meta = JSON.parse((sim.readRaw(`${DIR}/volumes/c/volume.json`) as Buffer).toString('utf8')) as Record<string, unknown>;
      assert.equal((meta['encryption'] as { kdf: string }).kdf, 'none');
      assert.equal(meta['encrypted'], undefined, 'the derived flag is not stored');
      assert.equal((await store.volumeInfo('c')).encrypted, true);
      assert.equal((await store.listVolumes())[0]?.encrypted, true);

      const data = contents(BLOCKS, 5);
      let vol: Volume = await store.openVolume('c', { ...SMALL_CHUNKS, key });
      // Unaligned writes too: a read-modify-write of a sealed block in a chunk.
      for (let b = 0; b < 40; b++) await vol.write(b * BS, data[b] as Buffer);
      assert.deepEqual(await vol.read(0, 40 * BS), joined(data).subarray(0, 40 * BS), 'from the write buffer');
      await vol.flush();
      await vol.close();
      vol = await store.openVolume('c', { ...SMALL_CHUNKS, key });
      assert.deepEqual(await vol.read(0, 40 * BS), joined(data).subarray(0, 40 * BS), 'from the chunks');
      const patch = Buffer.from('partial overwrite across a block boundary');
      await vol.write(3 * BS - 10, patch);
      patch.copy(data[2] as Buffer, BS - 10, 0, 10);
      patch.copy(data[3] as Buffer, 0, 10);
      for (let b = 40; b < BLOCKS; b++) await vol.write(b * BS, data[b] as Buffer);
      await vol.fsync();
      const crashed = sim.reopen(); // kill -9: blocks 40.. only in the WAL
      const s2 = await Store.open(DIR, { fileIO: crashed });
      vol = await s2.openVolume('c', { ...SMALL_CHUNKS, key });
      assert.deepEqual(await vol.read(0, SIZE), joined(data), 'after WAL replay');
      await vol.flush();
      await vol.close();
      const ro = await s2.openVolume('c', { readOnly: true, key });
      assert.deepEqual(await ro.read(0, SIZE), joined(data), 'read-only');
      await ro.close();
      await s2.close();
    });

    it('LZ4 then encryption: compressible blocks are stored compressed and sealed, and read back', async () => {
      const key = hexKey(4);
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed', compression: 'lz4', encryption: { key } });
      let vol = await store.openVolume('c', { ...SMALL_CHUNKS, key });
      const rng = new Rng(9);
      const data = Array.from({ length: 32 }, (_, b) => (b % 2 === 0 ? Buffer.alloc(BS, `block ${b} compresses well `) : rng.bytes(BS)));
      for (let b = 0; b < 32; b++) await vol.write(b * BS, data[b] as Buffer);
      await vol.flush();
      await vol.close();
      const chunks = sim.files(`${DIR}/objects/${vol.info.id}/chunks/`);
      const flags = new Set<number>();
      for (const c of chunks) {
        const buf = sim.readRaw(c) as Buffer;
        for (let off = HDR; off < buf.length; off += 32 + buf.readUInt32LE(off + 4)) flags.add(buf.readUInt32LE(off + 24));
      }
      assert.deepEqual([...flags].sort(), [FLAG_LZ4 | FLAG_SEALED, FLAG_SEALED].sort(), 'compressed and raw records, all sealed');
      vol = await store.openVolume('c', { key });
      assert.deepEqual(await vol.read(0, 32 * BS), Buffer.concat(data));
      await store.close();
    });

    for (const compression of ['none', 'lz4'] as const) {
      it(`a block sealed inline is not copied in clear into the write buffer: reads and partial overwrites open its sealed payload, authenticated (compression ${compression})`, async () => {
        const sim = new SimFS();
        const key = hexKey();
        const store = await Store.open(DIR, { fileIO: sim });
        try {
          await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'relaxed', encryption: { key }, compression });
          const vol = await store.openVolume('c', { ...KEEP_IN_WAL, key });
          type Core = {
            arena: { slab(s: number): Buffer; offset(s: number): number; packedOf(s: number): Buffer | undefined };
            index: { slot(b: number): number };
          };
          const core = (vol as unknown as { core: Core }).core;
          const inSlot = (b: number): Buffer => {
            const s = core.index.slot(b);
            const o = core.arena.offset(s);
            return core.arena.slab(s).subarray(o, o + BS);
          };
          // A quarter random, the rest compressible: LZ4 keeps it compressed.
          const rng = new Rng(55);
          const data = Array.from({ length: 4 }, (_, b) => Buffer.concat([rng.bytes(BS / 4), Buffer.alloc((3 * BS) / 4, b + 1)]));
          for (let b = 0; b < 4; b++) await vol.write(b * BS, data[b] as Buffer);
          for (let b = 0; b < 4; b++) assert.notDeepEqual(inSlot(b), data[b], `block ${b} is in clear in its write-buffer slot`);
          assert.deepEqual(await vol.read(0, BS), data[0]);
          await vol.write(BS + 10, Buffer.from('hello'));
          const one = Buffer.from(data[1] as Buffer);
          one.write('hello', 10);
          assert.deepEqual(await vol.read(BS, BS), one, 'a partial overwrite starts from the opened block');
          // The sealed payload in memory is authenticated when opened, like one read from the store.
          const sealed = core.arena.packedOf(core.index.slot(2)) as Buffer;
          sealed[3] = (sealed[3] as number) ^ 1;
          await rejectsWith(vol.read(2 * BS, BS), 'VBFS_CORRUPT');
          sealed[3] = sealed[3] ^ 1;
          assert.deepEqual(await vol.read(2 * BS, 2 * BS), Buffer.concat([data[2] as Buffer, data[3] as Buffer]));
          await vol.flush();
          await vol.close();
          const again = await store.openVolume('c', { key });
          assert.deepEqual(await again.read(0, 4 * BS), Buffer.concat([data[0] as Buffer, one, data[2] as Buffer, data[3] as Buffer]));
        } finally {
          await store.close();
        }
      });
    }

    it('a passphrase volume (scrypt) opens with the same passphrase only', async () => {
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('p', { size: SIZE, blockSize: BS, encryption: { key: passphrase('correct horse'), scrypt: CHEAP_SCRYPT } });
      const vol = await store.openVolume('p', { key: passphrase('correct horse\n') });
      await vol.write(0, Buffer.alloc(BS, 1));
      await vol.close();
      await rejectsWith(store.openVolume('p', { key: passphrase('battery staple') }), 'VBFS_BAD_KEY');
      await store.close();
    });
  });

  describe('keys at open', () => {
    it('no key: VBFS_KEY_REQUIRED (read-only too); wrong key: VBFS_BAD_KEY; a key for a plain volume: VBFS_INVALID_ARGUMENT; the lock is not taken', async () => {
      const key = hexKey(5);
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, encryption: { key } });
      await store.createVolume('plain', { size: SIZE, blockSize: BS });
      await rejectsWith(store.openVolume('c'), 'VBFS_KEY_REQUIRED');
      await rejectsWith(store.openVolume('c', { readOnly: true }), 'VBFS_KEY_REQUIRED');
      await rejectsWith(store.openVolume('c', { key: hexKey(6) }), 'VBFS_BAD_KEY');
      await rejectsWith(store.openVolume('c', { readOnly: true, key: hexKey(6) }), 'VBFS_BAD_KEY');
      await rejectsWith(store.openVolume('c', { key: passphrase('a guess') }), 'VBFS_BAD_KEY');
      await rejectsWith(store.openVolume('plain', { key }), 'VBFS_INVALID_ARGUMENT');
      await rejectsWith(store.createVolume('bad', { size: SIZE, encryption: {} as never }), 'VBFS_INVALID_ARGUMENT');
      assert.equal(await store.isVolumeOpen('c'), false, 'refused opens leave no lock');
      const vol = await store.openVolume('c', { key });
      await vol.close();
      await store.close();
    });

    it('neither the key nor the passphrase appears in volume.json, any store file, a log line or an error message', async () => {
      const key = hexKey(8);
      const raw = Buffer.from(key.bytes.toString('latin1'), 'hex');
      const pass = passphrase('my very secret passphrase');
      const sim = new SimFS();
      const logger = new RecordingLogger();
      const store = await Store.open(DIR, { fileIO: sim, logger });
      await store.createVolume('c', { size: SIZE, blockSize: BS, encryption: { key } });
      await store.createVolume('p', { size: SIZE, blockSize: BS, encryption: { key: pass, scrypt: CHEAP_SCRYPT } });
      const messages: string[] = [];
      for (const attempt of [() => store.openVolume('c', { key: pass }), () => store.openVolume('p', { key }), () => store.openVolume('c')]) {
        messages.push(
          (
            await attempt().then(
              () => assert.fail('opened'),
              (e: Error) => e,
            )
          ).message,
        );
      }
      const vol = await store.openVolume('c', { key });
      await vol.write(0, Buffer.alloc(BS, 7));
      await vol.close();
      await store.close();
      const secrets = [key.bytes.toString('latin1'), raw.toString('hex'), 'my very secret passphrase'];
      const text = [...logger.lines, ...messages].join('\n');
      for (const s of secrets) assert.ok(!text.includes(s), `a secret appears in a log line or an error message`);
      for (const [file, bytes] of storeFiles(sim)) {
        for (const s of [...secrets.map((x) => Buffer.from(x)), raw]) assert.equal(bytes.indexOf(s), -1, `a secret appears in ${file}`);
      }
    });
  });

  describe('no plaintext in the store', () => {
    const PATTERN = Buffer.from('VBFS-KNOWN-PLAINTEXT-PATTERN-0123456789abcdef');
    const patterned = (): Buffer => {
      const b = Buffer.alloc(BS);
      for (let i = 0; i < BS; i += PATTERN.length) PATTERN.copy(b, i);
      return b;
    };
    /** Where a 16-byte piece of the pattern occurs in the store's files. */
    const hits = (sim: SimFS): string[] => {
      const needles = [PATTERN.subarray(0, 16), PATTERN.subarray(20, 36)];
      const out: string[] = [];
      for (const [file, bytes] of storeFiles(sim)) if (needles.some((n) => bytes.indexOf(n) >= 0)) out.push(file);
      return out;
    };

    for (const compression of ['none', 'lz4'] as const) {
      for (const encrypted of [true, false]) {
        it(`${encrypted ? 'encrypted' : 'plain (the control: the grep finds it)'}, compression ${compression}: after the WAL write and after the flush`, async () => {
          const key = hexKey(11);
          const sim = new SimFS();
          const store = await Store.open(DIR, { fileIO: sim });
          await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'strict', compression, ...(encrypted ? { encryption: { key } } : {}) });
          const vol = await store.openVolume('c', { ...KEEP_IN_WAL, ...(encrypted ? { key } : {}) });
          for (let b = 0; b < 16; b++) await vol.write(b * BS, patterned());
          const inWal = hits(sim);
          await vol.flush();
          await vol.close();
          await store.close();
          const afterFlush = hits(sim);
          if (encrypted) {
            assert.deepEqual(inWal, [], 'the pattern is in the store before the flush');
            assert.deepEqual(afterFlush, [], 'the pattern is in the store after the flush');
          } else if (compression === 'none') {
            assert.ok(
              inWal.some((f) => f.endsWith('.wal')) && afterFlush.some((f) => f.includes('/chunks/')),
              `the control grep found nothing: ${afterFlush.join(', ')}`,
            );
          }
        });
      }
    }
  });

  describe('damage and moved records: VBFS_CORRUPT, never bytes', () => {
    it('WAL: a flipped bit in the ciphertext or in the tag, with the CRC fixed up, refuses the open', async () => {
      for (const at of [32 + 5, 32 + BS + 3]) {
        const { sim, wal } = await encryptedWalOnly(6);
        const raw = Buffer.from(sim.readRaw(wal) as Buffer);
        const rec = HDR + 2 * SEALED_REC;
        raw[rec + at] = (raw[rec + at] as number) ^ 0x10;
        fixCrc(raw, rec);
        sim.writeRaw(wal, raw);
        const got = await openAndRead(sim);
        assertCorrupt(got, `WAL byte ${at}`);
        assert.ok((got as VbfsError).message.includes(wal), 'the error names the WAL file');
      }
    });

    it('WAL: a flipped bit without the CRC fixed is caught by the CRC as before', async () => {
      const { sim, wal } = await encryptedWalOnly(6);
      sim.flipBit(wal, HDR + 2 * SEALED_REC + 40, 1);
      assertCorrupt(await openAndRead(sim), 'WAL CRC');
    });

    it('WAL: a record relabelled as another block (header and CRC patched) refuses the open', async () => {
      const { sim, wal } = await encryptedWalOnly(6);
      const raw = Buffer.from(sim.readRaw(wal) as Buffer);
      const rec = HDR + 1 * SEALED_REC;
      raw.writeUInt32LE(9, rec + 16); // block 1 -> 9
      fixCrc(raw, rec);
      sim.writeRaw(wal, raw);
      assertCorrupt(await openAndRead(sim), 'relabelled WAL record');
    });

    it('chunk: a flipped bit in the ciphertext or the tag (CRC fixed up) fails that block only, each time, and nothing is cached', async () => {
      for (const at of [32 + 100, 32 + BS + 15]) {
        const { sim, data, chunks } = await encryptedFlushed(16);
        const chunk = chunks[0] as string;
        const raw = Buffer.from(sim.readRaw(chunk) as Buffer);
        const rec = HDR + 3 * SEALED_REC; // block 3
        raw[rec + at] = (raw[rec + at] as number) ^ 0x01;
        fixCrc(raw, rec);
        sim.writeRaw(chunk, raw);
        const store = await Store.open(DIR, { fileIO: sim });
        const vol = await store.openVolume('c', { key: hexKey() });
        for (let i = 0; i < 2; i++) await rejectsWith(vol.read(3 * BS, BS), 'VBFS_CORRUPT');
        await rejectsWith(vol.read(0, 8 * BS), 'VBFS_CORRUPT');
        assert.deepEqual(await vol.read(4 * BS, 4 * BS), Buffer.concat(data.slice(4, 8)), 'the blocks around it read fine');
        assert.equal(vol.stats().corruptReads >= 3, true);
        await store.close();
      }
    });

    it('chunk: a record copied over another block (header and CRC patched) is detected', async () => {
      const { sim, chunks } = await encryptedFlushed(16);
      const chunk = chunks[0] as string;
      const raw = Buffer.from(sim.readRaw(chunk) as Buffer);
      const from = HDR + 2 * SEALED_REC;
      const to = HDR + 5 * SEALED_REC;
      // Block 2's sealed payload under block 5's header (block 5's own seq, so the map still matches).
      raw.copy(raw, to + 32, from + 32, from + SEALED_REC);
      fixCrc(raw, to);
      sim.writeRaw(chunk, raw);
      const store = await Store.open(DIR, { fileIO: sim });
      const vol = await store.openVolume('c', { key: hexKey() });
      await rejectsWith(vol.read(5 * BS, BS), 'VBFS_CORRUPT');
      await store.close();
    });

    it('chunk: a record copied from another volume under the same key (header and CRC patched) is detected', async () => {
      const a = await encryptedFlushed(8, 'a');
      const b = await encryptedFlushed(8, 'b', a.sim);
      const chunkA = b.sim.files('/store/objects/').find((f) => f.includes('/chunks/') && !b.chunks.includes(f)) as string;
      const chunkB = b.chunks[0] as string;
      const rawA = b.sim.readRaw(chunkA) as Buffer;
      const rawB = Buffer.from(b.sim.readRaw(chunkB) as Buffer);
      const rec = HDR + 4 * SEALED_REC;
      rawA.copy(rawB, rec + 32, rec + 32, rec + SEALED_REC); // A's block 4 payload, B's header (block 4, B's seq)
      fixCrc(rawB, rec);
      b.sim.writeRaw(chunkB, rawB);
      const store = await Store.open(DIR, { fileIO: b.sim });
      const vol = await store.openVolume('b', { key: hexKey() });
      await rejectsWith(vol.read(4 * BS, BS), 'VBFS_CORRUPT');
      assert.deepEqual(await vol.read(0, 4 * BS), Buffer.concat(b.data.slice(0, 4)));
      await store.close();
    });

    it('chunk: a plaintext record slipped into an encrypted volume (sealed flag cleared, CRC fixed) is refused', async () => {
      const { sim, chunks } = await encryptedFlushed(8);
      const chunk = chunks[0] as string;
      const raw = Buffer.from(sim.readRaw(chunk) as Buffer);
      const rec = HDR + 1 * SEALED_REC;
      raw.writeUInt32LE(0, rec + 24); // flags: not sealed
      raw.writeUInt32LE(BS, rec + 4); // len: one raw block (the tag's 16 bytes become slack the reader never reaches)
      Buffer.alloc(BS, 0x41).copy(raw, rec + 32);
      fixCrc(raw, rec);
      sim.writeRaw(chunk, raw);
      const store = await Store.open(DIR, { fileIO: sim });
      const vol = await store.openVolume('c', { key: hexKey() });
      await rejectsWith(vol.read(1 * BS, BS), 'VBFS_CORRUPT');
      await store.close();
    });
  });

  describe('opening runs off the event loop (crypto worker)', () => {
    it('a worker and the inline path read the same bytes and refuse the same damaged record', async () => {
      const { sim, data, chunks } = await encryptedFlushed(16);
      const chunk = chunks[0] as string;
      const raw = Buffer.from(sim.readRaw(chunk) as Buffer);
      const rec = HDR + 5 * SEALED_REC; // block 5
      raw[rec + 77] = (raw[rec + 77] as number) ^ 0x20;
      fixCrc(raw, rec);
      sim.writeRaw(chunk, raw);
      for (const cryptoThreads of [0, 1]) {
        const store = await Store.open(DIR, { fileIO: sim });
        const vol = await store.openVolume('c', { key: hexKey(), cryptoThreads, cryptoBatchBlocks: 2, readaheadBytes: 0, cacheBytes: 0 });
        const pool = (vol as unknown as { core: { cipherPool: { runsOpened: number } | null } }).core.cipherPool;
        assert.equal(pool === null, cryptoThreads === 0);
        assert.deepEqual(await vol.read(0, 5 * BS), Buffer.concat(data.slice(0, 5)), `blocks 0-4, cryptoThreads ${cryptoThreads}`);
        assert.deepEqual(await vol.read(8 * BS, 8 * BS), Buffer.concat(data.slice(8, 16)), `blocks 8-15 (second chunk), cryptoThreads ${cryptoThreads}`);
        await rejectsWith(vol.read(0, 8 * BS), 'VBFS_CORRUPT');
        await rejectsWith(vol.read(4 * BS, 3 * BS), 'VBFS_CORRUPT');
        assert.deepEqual(await vol.read(6 * BS, 2 * BS), Buffer.concat(data.slice(6, 8)));
        if (pool) assert.ok(pool.runsOpened >= 4, `the worker opened ${pool.runsOpened} runs`);
        await store.close();
      }
    });

    it('the buffers runs are opened in come back and are reused: no fresh buffer (page faults on first touch) per run', async () => {
      const { sim, data } = await encryptedFlushed(16);
      const store = await Store.open(DIR, { fileIO: sim });
      try {
        const vol = await store.openVolume('c', { key: hexKey(), cryptoThreads: 1, cryptoBatchBlocks: 2, readaheadBytes: 0, cacheBytes: 0 });
        const pool = (vol as unknown as { core: { cipherPool: { runsOpened: number; runBuffersAllocated: number } } }).core.cipherPool;
        for (let i = 0; i < 10; i++) assert.deepEqual(await vol.read(0, 16 * BS), Buffer.concat(data), `pass ${i}`);
        assert.ok(pool.runsOpened >= 20, `the worker opened ${pool.runsOpened} runs`);
        assert.ok(pool.runBuffersAllocated <= 2, `${pool.runBuffersAllocated} run buffers allocated for ${pool.runsOpened} runs`);
      } finally {
        await store.close();
      }
    });
  });

  describe('sealing large writes in the crypto worker', () => {
    type Pool = { batchesSealed: number; worker: { terminate(): Promise<number> } | null };
    const poolOf = (vol: Volume): Pool => (vol as unknown as { core: { cipherPool: Pool } }).core.cipherPool;
    /**
     * Batches sent to the crypto worker wait (before they reach it) until release():
     * their records stay in the worker, acknowledged and not in the WAL, for as long as
     * a test needs, whatever the worker's speed.
     */
    function holdSeals(vol: Volume): { release: () => void; calls: number } {
      const pool = (vol as unknown as { core: { cipherPool: { seal: (...args: unknown[]) => Promise<void> } } }).core.cipherPool;
      const seal = pool.seal.bind(pool);
      let open!: () => void;
      const gate = new Promise<void>((r) => (open = r));
      const h = { release: () => open(), calls: 0 };
      pool.seal = async (...args: unknown[]) => {
        h.calls++;
        await gate;
        return seal(...args);
      };
      return h;
    }
    /** Writes of 1 to 12 blocks, some overlapping blocks still in the worker; the model of what the volume holds. */
    async function writeMix(vol: Volume, model: Buffer, rng: Rng, n: number): Promise<number> {
      let blocks = 0;
      for (let i = 0; i < n; i++) {
        const b = rng.int(BLOCKS - 12);
        const len = (1 + rng.int(12)) * BS;
        const data = rng.bytes(len);
        data.copy(model, b * BS);
        await vol.write(b * BS, data);
        blocks += len / BS;
        // Read back at once: the plaintext is in the write buffer while the worker seals it.
        assert.deepEqual(await vol.read(b * BS, len), data);
      }
      return blocks;
    }

    for (const compression of ['none', 'lz4'] as const) {
      it(`writes are sealed there, acknowledged before, appended in seq order, some superseded while in the worker: the WAL replay (kill -9) and the chunks authenticate them (compression ${compression})`, async () => {
        const sealed = new Map<string, string>();
        let seals = 0;
        sealHook.fn = (nonce, aad, plaintext) => {
          seals++;
          const n = nonce.toString('hex');
          const what = createHash('sha256').update(aad).update(plaintext).digest('hex');
          assert.ok(!sealed.has(n) || sealed.get(n) === what, `nonce ${n} sealed twice with different AAD or plaintext`);
          sealed.set(n, what);
        };
        let sim = new SimFS();
        let store = await Store.open(DIR, { fileIO: sim });
        await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', compression, encryption: { key: hexKey(7) } });
        const model = Buffer.alloc(SIZE);
        const rng = new Rng(21);
        let vol = await store.openVolume('c', { key: hexKey(7), cryptoSealBlocks: 4, ...KEEP_IN_WAL });
        let writes = await writeMix(vol, model, rng, 40);
        await vol.fsync();
        assert.ok(poolOf(vol).batchesSealed >= 2, `the worker sealed ${poolOf(vol).batchesSealed} batches`);
        // kill -9 after the fsync: everything comes back from the WAL, opened inline.
        sim = sim.reopen();
        store = await Store.open(DIR, { fileIO: sim });
        vol = await store.openVolume('c', { key: hexKey(7), cryptoThreads: 0 });
        assert.deepEqual(await vol.read(0, SIZE), model, 'after WAL replay');
        await vol.close();
        // Worker-sealed records flushed into chunks, read cold.
        vol = await store.openVolume('c', { key: hexKey(7), cryptoSealBlocks: 4, ...SMALL_CHUNKS });
        writes += await writeMix(vol, model, rng, 20);
        await vol.flush();
        await vol.close();
        vol = await store.openVolume('c', { key: hexKey(7), cacheBytes: 0, readaheadBytes: 0 });
        assert.deepEqual(await vol.read(0, SIZE), model, 'from chunks');
        await store.close();
        sealHook.fn = null;
        assert.equal(seals, writes, 'every block version is sealed exactly once');
        assert.equal(sealed.size, writes, 'every seal used its own nonce');
      });
    }

    it('a batch is sealed in place in the shared write buffer: the message to the worker carries no plaintext and transfers nothing', async () => {
      const posted: { bytes: number; shared: SharedArrayBuffer[]; transferred: number }[] = [];
      const proto = Worker.prototype as unknown as { postMessage: (this: Worker, m: unknown, t?: readonly unknown[]) => void };
      const post = proto.postMessage;
      proto.postMessage = function (this: Worker, m: unknown, t?: readonly unknown[]) {
        if ((m as { op?: string }).op === 'seal') {
          const one = { bytes: 0, shared: [] as SharedArrayBuffer[], transferred: t?.length ?? 0 };
          for (const v of Object.values(m as object)) {
            if (v instanceof ArrayBuffer) one.bytes += v.byteLength;
            else if (ArrayBuffer.isView(v)) one.bytes += v.buffer instanceof SharedArrayBuffer ? 0 : v.byteLength;
            else if (Array.isArray(v)) for (const x of v) if (x instanceof SharedArrayBuffer) one.shared.push(x);
          }
          posted.push(one);
        }
        post.call(this, m, t);
      };
      let sim = new SimFS();
      let store = await Store.open(DIR, { fileIO: sim });
      try {
        await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', encryption: { key: hexKey(4) } });
        const vol = await store.openVolume('c', { key: hexKey(4), cryptoSealBlocks: 4, ...KEEP_IN_WAL });
        const data = new Rng(4).bytes(SIZE);
        for (let b = 0; b < BLOCKS; b += 16) await vol.write(b * BS, data.subarray(b * BS, (b + 16) * BS));
        await vol.fsync();
        const arena = (vol as unknown as { core: { arena: { slab(s: number): Buffer; sealedSlab(s: number): Buffer } } }).core.arena;
        assert.ok(posted.length >= 1, 'nothing was sent to the worker');
        for (const m of posted) {
          assert.equal(m.transferred, 0, 'a buffer was transferred');
          // block, seq and flags, lengths, and where each record is: a few bytes per record, never its payload
          assert.ok(m.bytes <= 64 * 64, `${m.bytes} bytes of unshared memory in one message`);
          for (const sab of m.shared) assert.ok(sab === arena.slab(0).buffer || sab === arena.sealedSlab(0).buffer, 'memory other than the write buffer');
        }
        sim = sim.reopen();
        store = await Store.open(DIR, { fileIO: sim });
        const again = await store.openVolume('c', { key: hexKey(4), cryptoThreads: 0 });
        assert.deepEqual(await again.read(0, SIZE), data, 'after WAL replay, opened inline');
      } finally {
        proto.postMessage = post;
        await store.close();
      }
    });

    for (const compression of ['none', 'lz4'] as const) {
      it(`no plaintext reaches the store from a batch sealed in place, nor from one sealed inline after the worker died (compression ${compression})`, async () => {
        const PATTERN = Buffer.from('VBFS-KNOWN-PLAINTEXT-PATTERN-0123456789abcdef');
        const patterned = Buffer.alloc(8 * BS);
        for (let i = 0; i < patterned.length; i += PATTERN.length) PATTERN.copy(patterned, i);
        const sim = new SimFS();
        const store = await Store.open(DIR, { fileIO: sim });
        await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', compression, encryption: { key: hexKey(12) } });
        const vol = await store.openVolume('c', { key: hexKey(12), cryptoSealBlocks: 4, ...KEEP_IN_WAL });
        await vol.write(0, patterned);
        await vol.write(8 * BS, patterned);
        await vol.fsync();
        assert.ok(poolOf(vol).batchesSealed >= 1, 'the worker sealed nothing');
        // A batch sent to a worker that dies: sealed inline (an LZ4 payload is in its sealed room, in clear).
        const pool = poolOf(vol);
        const sealedBefore = pool.batchesSealed;
        const dying = (pool.worker as { terminate(): Promise<number> }).terminate();
        await vol.write(16 * BS, patterned);
        (vol as unknown as { writer: { sendSeals(): void } }).writer.sendSeals();
        await dying;
        await vol.write(24 * BS, patterned); // the worker starts again
        await vol.fsync();
        assert.equal(pool.batchesSealed, sealedBefore + 1, 'the batch sent to the dying worker was not sealed inline');
        await vol.flush();
        await vol.close();
        await store.close();
        const needles = [PATTERN.subarray(0, 16), PATTERN.subarray(20, 36)];
        for (const [file, bytes] of storeFiles(sim)) assert.ok(!needles.some((n) => bytes.indexOf(n) >= 0), `the pattern is in ${file}`);
        const again = await Store.open(DIR, { fileIO: sim.reopen() });
        const v = await again.openVolume('c', { key: hexKey(12), cryptoThreads: 0 });
        assert.deepEqual(await v.read(0, 32 * BS), Buffer.concat([patterned, patterned, patterned, patterned]));
        await again.close();
      });
    }

    it('an fsync waiting for records in the worker refuses once the volume failed meanwhile: the records were dropped, not logged', async () => {
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', encryption: { key: hexKey(11) } });
      const vol = await store.openVolume('c', { key: hexKey(11), cryptoSealBlocks: 4, ...KEEP_IN_WAL });
      const held = holdSeals(vol);
      await vol.write(0, new Rng(11).bytes(8 * BS)); // acknowledged: its records are in the worker
      const synced = vol.fsync(); // waits for them
      await new Promise<void>((r) => setImmediate(r));
      // The volume fails meanwhile (what a flush's chunk write error or a power cut in
      // the crash sweeps does): the batch, once back, is not appended (appendSealed).
      const core = (vol as unknown as { core: { fail: (err: unknown) => VbfsError } }).core;
      core.fail(new VbfsError('VBFS_IO', 'simulated: a chunk write failed'));
      held.release();
      await rejectsWith(synced, 'VBFS_IO');
      assert.ok(held.calls > 0, 'nothing went to the worker');
      await vol.close().catch(() => undefined);
      await store.close().catch(() => undefined);
    });

    it('a close with records still in the worker leaves no WAL byte unsynced: a power cut after the next open cannot tear the segment they landed in', async () => {
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', encryption: { key: hexKey(9) } });
      let vol = await store.openVolume('c', { key: hexKey(9), cryptoSealBlocks: 4, ...KEEP_IN_WAL });
      const model = Buffer.alloc(SIZE);
      const data = new Rng(9).bytes(8 * BS);
      data.copy(model, 0);
      // The batch stays in the worker until the close's flush has sealed the WAL segment
      // (rotate): its records land in a new segment, which the close's WAL sync covers.
      const held = holdSeals(vol);
      await vol.write(0, data);
      const wal = (vol as unknown as { writer: { wal: { rotate: () => Promise<number> } } }).writer.wal;
      const rotate = wal.rotate.bind(wal);
      wal.rotate = () => {
        const p = rotate();
        held.release();
        return p;
      };
      await vol.close();
      assert.ok(held.calls > 0, 'nothing went to the worker');
      assert.deepEqual(
        sim.unsynced().files.filter((f) => f.endsWith('.wal')),
        [],
        'a WAL segment kept after a clean close has bytes no fdatasync covered (the last sync marker)',
      );
      // The next open writes a newer segment; then the power goes. Whatever of the
      // unsynced bytes lands, the older segment must replay.
      vol = await store.openVolume('c', { key: hexKey(9), cryptoThreads: 0 });
      const one = new Rng(10).bytes(BS);
      one.copy(model, 40 * BS);
      await vol.write(40 * BS, one);
      await vol.fsync();
      for (let k = 0; k < 16; k++) {
        const after = sim.afterCrash(new Rng(k), 'reorder', BS);
        const s2 = await Store.open(DIR, { fileIO: after });
        const v2 = await s2.openVolume('c', { key: hexKey(9), readOnly: true });
        assert.deepEqual(await v2.read(0, SIZE), model, `power cut ${k}`);
        await s2.close();
      }
      await store.close().catch(() => undefined);
    });

    it('a zero write or trim behind records still in the worker waits for them: the WAL holds records in seq order', async () => {
      const sim = new SimFS();
      const store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', encryption: { key: hexKey(7) } });
      const vol = await store.openVolume('c', { key: hexKey(7), cryptoSealBlocks: 4, ...KEEP_IN_WAL });
      const rng = new Rng(5);
      const model = Buffer.alloc(SIZE);
      for (let i = 0; i < 12; i++) {
        // 8 blocks to the worker, acknowledged at once; then a zero block and a trim right behind them.
        const b = rng.int(BLOCKS - 10);
        const data = rng.bytes(8 * BS);
        data.copy(model, b * BS);
        await vol.write(b * BS, data);
        const z = rng.int(BLOCKS);
        model.fill(0, z * BS, (z + 1) * BS);
        await vol.write(z * BS, Buffer.alloc(BS));
        const t = rng.int(BLOCKS);
        model.fill(0, t * BS, (t + 1) * BS);
        await vol.trim(t * BS, BS);
      }
      await vol.fsync();
      assert.ok(poolOf(vol).batchesSealed >= 1, 'the worker sealed nothing');
      assert.deepEqual(await vol.read(0, SIZE), model);
      const walDir = (sim.files(`${DIR}/`).find((f) => f.endsWith('.wal')) as string).replace(/\/[^/]+$/, '');
      const seqs: number[] = [];
      await replayWal(sim, walDir, vol.info.id, BS, true, new RecordingLogger(), (h) => seqs.push(h.seq));
      assert.ok(seqs.length >= 12 * 8, `${seqs.length} records in the WAL`);
      for (let i = 1; i < seqs.length; i++) assert.ok((seqs[i] as number) > (seqs[i - 1] as number), `WAL record ${i}: seq ${seqs[i]} after ${seqs[i - 1]}`);
      await vol.close();
      await store.close();
    });

    it('a worker that dies with batches in it: they are sealed inline with the same nonce and content, and fsync covers them', async () => {
      let seals = 0;
      sealHook.fn = () => void seals++;
      let sim = new SimFS();
      let store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', encryption: { key: hexKey(8) } });
      const vol = await store.openVolume('c', { key: hexKey(8), cryptoSealBlocks: 2, ...KEEP_IN_WAL });
      const data = new Rng(5).bytes(SIZE);
      await vol.write(0, data.subarray(0, 16 * BS)); // starts the worker
      await vol.write(16 * BS, data.subarray(16 * BS, 32 * BS));
      const pool = poolOf(vol);
      await pool.worker?.terminate();
      await vol.write(32 * BS, data.subarray(32 * BS)); // the worker starts again
      await vol.fsync();
      sealHook.fn = null;
      assert.equal(seals, BLOCKS, 'no block is announced twice');
      sim = sim.reopen();
      store = await Store.open(DIR, { fileIO: sim });
      const again = await store.openVolume('c', { key: hexKey(8), cryptoThreads: 0 });
      assert.deepEqual(await again.read(0, SIZE), data);
      await store.close();
    });

    it('writes of cryptoSealBlocks blocks or more go to the worker, in batches across writes, and smaller ones join while it has records; strict writes, and all with cryptoSealBlocks 0, are sealed inline', async () => {
      const store = await Store.open(DIR, { fileIO: new SimFS() });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', encryption: { key: hexKey(9) } });
      const data = new Rng(6).bytes(SIZE);
      for (const [opts, batches] of [
        [{ cryptoSealBlocks: 4 }, 2], // the 8-block writes fill one batch; the 3-block one joins the next (sent by the fsync)
        [{ cryptoSealBlocks: 4, durability: 'strict' as const }, 0],
        [{ cryptoSealBlocks: 0 }, 0],
      ] as const) {
        const vol = await store.openVolume('c', { key: hexKey(9), ...opts });
        for (let b = 0; b < BLOCKS; b += 8) await vol.write(b * BS, data.subarray(b * BS, (b + 8) * BS));
        await vol.write(0, data.subarray(0, 3 * BS));
        await vol.fsync();
        assert.equal(poolOf(vol).batchesSealed, batches, JSON.stringify(opts));
        assert.deepEqual(await vol.read(0, SIZE), data);
        await vol.close();
      }
      const vol = await store.openVolume('c', { key: hexKey(9), cryptoSealBlocks: 16 });
      // Single-block writes, as FUSE sends 4 KiB random writes: inline.
      for (let b = 0; b < 16; b++) await vol.write(b * BS, data.subarray(b * BS, (b + 1) * BS));
      await vol.fsync();
      assert.equal(poolOf(vol).batchesSealed, 0);
      // After a large write, small ones join its batch until the worker has nothing left.
      await vol.write(16 * BS, data.subarray(16 * BS, 32 * BS));
      for (let b = 32; b < 48; b++) await vol.write(b * BS, data.subarray(b * BS, (b + 1) * BS));
      await vol.fsync();
      assert.equal(poolOf(vol).batchesSealed, 1);
      assert.deepEqual(await vol.read(0, SIZE), data);
      await store.close();
    });
  });

  describe('fsck', () => {
    it('with the key it authenticates every record and finds a tampered one; without it, CRCs only, and it says so', async () => {
      const { sim, chunks } = await encryptedFlushed(16);
      let store = await Store.open(DIR, { fileIO: sim });
      const clean = await store.fsckVolume('c', { key: hexKey() });
      assert.equal(clean.clean, true, JSON.stringify(clean.problems));
      assert.equal(clean.authenticated, true);
      assert.equal(clean.encrypted, true);
      await rejectsWith(store.fsckVolume('c', { key: hexKey(2) }), 'VBFS_BAD_KEY');
      await store.close();
      const chunk = chunks[1] as string;
      const raw = Buffer.from(sim.readRaw(chunk) as Buffer);
      const rec = HDR + 2 * SEALED_REC;
      raw[rec + 40] = (raw[rec + 40] as number) ^ 4;
      fixCrc(raw, rec);
      sim.writeRaw(chunk, raw);
      store = await Store.open(DIR, { fileIO: sim });
      const withKey = await store.fsckVolume('c', { key: hexKey() });
      assert.equal(withKey.errors, 1, JSON.stringify(withKey.problems));
      assert.equal(withKey.problems[0]?.kind, 'bad-record');
      assert.equal(withKey.problems[0]?.offset, rec);
      const noKey = await store.fsckVolume('c');
      assert.equal(noKey.authenticated, false);
      assert.equal(noKey.clean, true, 'without the key a CRC-valid record cannot be judged');
      await store.close();
    });

    it('with the key it refuses a WAL record that fails authentication', async () => {
      const { sim, wal } = await encryptedWalOnly(4);
      const raw = Buffer.from(sim.readRaw(wal) as Buffer);
      const rec = HDR + SEALED_REC;
      raw[rec + 50] = (raw[rec + 50] as number) ^ 1;
      fixCrc(raw, rec);
      sim.writeRaw(wal, raw);
      const store = await Store.open(DIR, { fileIO: sim });
      const r = await store.fsckVolume('c', { key: hexKey() });
      assert.ok(
        r.problems.some((p) => p.kind === 'wal' && p.severity === 'error'),
        JSON.stringify(r.problems),
      );
      await store.close();
    });
  });

  describe('nonces', () => {
    it('within a run, across flushes, a crash and reopens, no nonce is sealed twice with other AAD or plaintext, and each write is sealed once', async () => {
      const sealed = new Map<string, string>();
      let seals = 0;
      sealHook.fn = (nonce, aad, plaintext) => {
        seals++;
        const n = nonce.toString('hex');
        const what = createHash('sha256').update(aad).update(plaintext).digest('hex');
        const before = sealed.get(n);
        assert.ok(before === undefined || before === what, `nonce ${n} sealed twice with different AAD or plaintext`);
        sealed.set(n, what);
      };
      const key = hexKey(12);
      let sim = new SimFS();
      let store = await Store.open(DIR, { fileIO: sim });
      await store.createVolume('c', { size: SIZE, blockSize: BS, durability: 'batched', compression: 'lz4', encryption: { key } });
      const rng = new Rng(13);
      let writes = 0;
      for (let round = 0; round < 4; round++) {
        const vol = await store.openVolume('c', { ...SMALL_CHUNKS, key });
        for (let i = 0; i < 120; i++) {
          const b = rng.int(BLOCKS);
          const n = 1 + rng.int(3);
          const len = Math.min(n, BLOCKS - b) * BS;
          await vol.write(b * BS, rng.bytes(len));
          writes += len / BS;
          if (i % 40 === 39) await vol.flush();
        }
        await vol.fsync();
        if (round % 2 === 0) {
          sim = sim.reopen(); // kill -9: the WAL is replayed (never re-sealed) at the next open
          store = await Store.open(DIR, { fileIO: sim });
        } else {
          await vol.close();
        }
      }
      await store.close();
      assert.equal(seals, writes, 'every block version is sealed exactly once (the flusher and recovery do not seal)');
      assert.equal(sealed.size, writes, 'every seal used its own nonce');
    });
  });
});
