import type { Rng } from './rng';

/**
 * The reference a volume is checked against: a plain Buffer holding what the volume
 * should contain, plus, per block, every content the block has ever been given (for
 * crash checks: after a crash a block may hold any version written at or after the
 * last one a completed fsync covered, and nothing else).
 */
export class VolumeModel {
  readonly data: Buffer;
  readonly blocks: number;
  /** versions[b][0] is the all-zero block; each write touching b appends b's new content. */
  private readonly versions: Buffer[][];
  /** Per block, the oldest version index a crash may still show (raised by completed fsyncs). */
  private readonly floor: Int32Array;

  constructor(
    readonly size: number,
    readonly blockSize: number,
  ) {
    this.data = Buffer.alloc(size);
    this.blocks = size / blockSize;
    const zero = Buffer.alloc(blockSize);
    this.versions = Array.from({ length: this.blocks }, () => [zero]);
    this.floor = new Int32Array(this.blocks);
  }

  /** Apply a write in arrival order and record the new content of every block it touches. */
  write(offset: number, bytes: Uint8Array): void {
    this.data.set(bytes, offset);
    if (bytes.length === 0) return;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + bytes.length - 1) / this.blockSize);
    for (let b = first; b <= last; b++) {
      const block = Buffer.from(this.data.subarray(b * this.blockSize, (b + 1) * this.blockSize));
      this.vers(b).push(block);
    }
  }

  /** The newest version index of every block right now: what an fsync called now will cover. */
  snapshot(): Int32Array {
    const s = new Int32Array(this.blocks);
    for (let b = 0; b < this.blocks; b++) s[b] = this.vers(b).length - 1;
    return s;
  }

  /** A completed fsync (or a strict-mode write) made everything in `snap` durable. */
  durable(snap: Int32Array): void {
    for (let b = 0; b < this.blocks; b++) this.floor[b] = Math.max(this.floor[b] ?? 0, snap[b] ?? 0);
  }

  /** Everything acknowledged is durable (after a clean close). */
  allDurable(): void {
    this.durable(this.snapshot());
  }

  /**
   * After a crash: is `content` a legal state of block b? Returns null if so, else a
   * description of what is wrong. On success the model adopts that version as the
   * block's content (so later checks and writes build on what survived).
   */
  adoptAfterCrash(b: number, content: Buffer): string | null {
    const vs = this.vers(b);
    const fl = this.floor[b] ?? 0;
    for (let v = vs.length - 1; v >= fl; v--) {
      if ((vs[v] as Buffer).equals(content)) {
        this.data.set(content, b * this.blockSize);
        this.versions[b] = [vs[0] as Buffer, content];
        this.floor[b] = 1;
        return null;
      }
    }
    for (let v = fl - 1; v >= 0; v--) {
      if ((vs[v] as Buffer).equals(content)) {
        return `block ${b} went back to version ${v} of ${vs.length - 1}, but version ${fl} was covered by a completed fsync`;
      }
    }
    return `block ${b} holds bytes never written there (${vs.length - 1} versions written, durable floor ${fl}); first bytes ${content.subarray(0, 16).toString('hex')}`;
  }

  private vers(b: number): Buffer[] {
    const v = this.versions[b];
    if (v === undefined) throw new Error(`block ${b} out of range`);
    return v;
  }
}

/**
 * A random write range: aligned blocks, unaligned pieces inside a block, pieces
 * across block boundaries, runs across chunk boundaries, single bytes, the very end.
 */
export function randomRange(rng: Rng, size: number, blockSize: number, chunkBytes: number): { offset: number; length: number } {
  const kind = rng.weighted<string>([
    ['aligned', 25],
    ['inBlock', 20],
    ['crossBlock', 20],
    ['crossChunk', 10],
    ['byte', 8],
    ['end', 5],
    ['big', 4],
    ['hot', 8],
  ]);
  let offset: number;
  let length: number;
  switch (kind) {
    case 'aligned': {
      const n = rng.range(1, 4);
      offset = rng.int(size / blockSize) * blockSize;
      length = n * blockSize;
      break;
    }
    case 'inBlock':
      offset = rng.int(size);
      length = rng.range(1, blockSize - (offset % blockSize));
      break;
    case 'crossBlock': {
      const boundary = rng.range(1, size / blockSize - 1) * blockSize;
      offset = boundary - rng.range(1, blockSize - 1);
      length = boundary - offset + rng.range(1, blockSize);
      break;
    }
    case 'crossChunk': {
      const chunks = Math.max(1, Math.floor(size / chunkBytes));
      const boundary = rng.range(1, Math.max(1, chunks - 1)) * chunkBytes;
      offset = Math.max(0, boundary - rng.range(1, 2 * blockSize));
      length = boundary - offset + rng.range(1, 2 * blockSize);
      break;
    }
    case 'byte':
      offset = rng.int(size);
      length = 1;
      break;
    case 'end':
      length = rng.range(1, 2 * blockSize);
      offset = size - length;
      break;
    case 'big':
      length = rng.range(chunkBytes, 3 * chunkBytes);
      offset = rng.int(Math.max(1, size - length));
      break;
    default: // 'hot': the first few blocks, rewritten over and over
      offset = rng.int(4 * blockSize);
      length = rng.range(1, 2 * blockSize);
  }
  offset = Math.max(0, Math.min(offset, size - 1));
  length = Math.max(1, Math.min(length, size - offset));
  return { offset, length };
}

/** Data for a write: random, compressible (a repeated short pattern), or zeros. */
export function randomData(rng: Rng, length: number): Buffer {
  const kind = rng.weighted<string>([
    ['random', 6],
    ['pattern', 3],
    ['zeros', 1],
  ]);
  if (kind === 'zeros') return Buffer.alloc(length);
  if (kind === 'random') return rng.bytes(length);
  const unit = rng.bytes(rng.range(1, 16));
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = unit[i % unit.length] as number;
  return b;
}

/** First differing byte between two buffers, for error messages. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
