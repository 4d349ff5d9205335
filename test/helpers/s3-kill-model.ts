/**
 * The writes of test/s3-kill.test.ts and how to recognise them: every 4 KiB block a
 * write carries is stamped with (round, write index, block number) and filled from
 * that stamp, so a block read back says which write it came from and whether its
 * bytes are whole. The write sequence of a round is a pure function of (seed, round,
 * index), shared by the child that writes and the test that checks.
 */
import type { VolumeTunables } from '../../src/store/types';
import { Rng } from './rng';

export const BLOCK = 4096;
export const BLOCKS = 4096; // 16 MiB volume
const MAGIC = 0x4b494c4c; // 'KILL'

/** Small chunks and flush thresholds: a flush to the bucket is nearly always running. */
/** Lease TTL of the killed writers and of the checks: each reopen after a SIGKILL waits for it. */
export const KILL_LEASE_TTL_MS = 2000;

export const KILL_TUNABLES: Partial<VolumeTunables> = {
  chunkBytes: 256 * 1024,
  flushBytes: 256 * 1024,
  flushIntervalMs: 200,
  checkpointBytes: 64 * 1024,
  batchMs: 2,
};

/**
 * The killed writer's tunables in round `round`: flush waves of one or two chunks
 * (alternating), so that a flush of more than a chunk or two has several waves and
 * the next wave's chunk PUTs overlap a wave's map delta (two waves in flight over a
 * bucket): kills then land between one wave's PUTs and another's commit.
 */
export function killTunables(round: number): Partial<VolumeTunables> {
  return { ...KILL_TUNABLES, flushWaveChunks: 1 + (round % 2) };
}

export interface KillWrite {
  block: number;
  blocks: number;
  /** fsync after this many writes since the last one. */
  fsyncEvery: number;
}

export function writeOf(seed: number, round: number, i: number): KillWrite {
  const rng = new Rng((((seed * 131 + round) * 1_000_003) ^ (i * 2_654_435_761)) >>> 0);
  const blocks = 1 + rng.int(32);
  return { block: rng.int(BLOCKS - blocks + 1), blocks, fsyncEvery: 1 + rng.int(6) };
}

function fillBlock(buf: Buffer, round: number, i: number, block: number): void {
  buf.writeUInt32LE(MAGIC, 0);
  buf.writeUInt32LE(round, 4);
  buf.writeUInt32LE(i, 8);
  buf.writeUInt32LE(block, 12);
  let x = (round * 0x9e3779b1) ^ (i * 0x85ebca6b) ^ (block * 0xc2b2ae35) || 1;
  for (let o = 16; o < BLOCK; o += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeInt32LE(x | 0, o);
  }
}

export function stampedWrite(seed: number, round: number, i: number): Buffer {
  const w = writeOf(seed, round, i);
  const out = Buffer.allocUnsafe(w.blocks * BLOCK);
  for (let b = 0; b < w.blocks; b++) fillBlock(out.subarray(b * BLOCK, (b + 1) * BLOCK), round, i, w.block + b);
  return out;
}

/** A version of a block: the write it came from, ordered (round, index); null: never written. */
export interface Version {
  round: number;
  i: number;
}

export function newer(a: Version | null, b: Version | null): boolean {
  if (!a) return false;
  if (!b) return true;
  return a.round > b.round || (a.round === b.round && a.i > b.i);
}

/**
 * The version a block read back holds, or a description of why it is not one that
 * was ever written there (torn, foreign, wrong place, a write that never covered it).
 */
export function decodeBlock(seed: number, buf: Buffer, block: number, rounds: number): Version | null | string {
  if (buf.every((v) => v === 0)) return null;
  if (buf.readUInt32LE(0) !== MAGIC) return `block ${block}: not a stamped block`;
  const v = { round: buf.readUInt32LE(4), i: buf.readUInt32LE(8) };
  if (buf.readUInt32LE(12) !== block) return `block ${block}: holds block ${buf.readUInt32LE(12)}'s bytes`;
  if (v.round > rounds) return `block ${block}: from round ${v.round}, never run`;
  const w = writeOf(seed, v.round, v.i);
  if (block < w.block || block >= w.block + w.blocks) return `block ${block}: write ${v.round}/${v.i} never covered it`;
  const want = Buffer.allocUnsafe(BLOCK);
  fillBlock(want, v.round, v.i, block);
  if (!want.equals(buf)) return `block ${block}: torn or damaged copy of write ${v.round}/${v.i}`;
  return v;
}
