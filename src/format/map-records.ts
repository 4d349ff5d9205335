import { RECORD_HEADER } from './block-record';
import { readU32, readU64, writeU32, writeU64 } from './u64';

/**
 * Payloads of the frames (format/frame.ts) in map log segments and the checkpoint.
 * The first payload byte is the frame type.
 *
 * 'H' map log header (first frame of every map log segment), 40 bytes:
 *     0 1 'H'   1 7 "VBFSMAP"   8 2 version (u16)   10 6 reserved
 *    16 16 volumeId   32 8 segment number
 *
 * 'C' chunk commit: the new locations of the blocks packed into one chunk object:
 *     0 1 'C'   1 3 reserved   4 4 chunkId   8 4 count   12 4 reserved
 *    16 count x 32-byte location entries (below)
 *
 * 'S' sync frame (map log version 2), 16 bytes, first frame of every commit write:
 *     0 1 'S'   1 7 reserved   8 8 offset in this segment up to which the log was
 *     covered by a completed fdatasync when this write was made
 *
 * 'Q' seq reservation (map log version 3 segments), 16 bytes, alone in a synced write
 *     after an 'S' frame: 0 1 'Q'   1 7 reserved   8 8 R: seqs up to R may be in use
 *     (the writer hands out no seq above the highest durable R; open starts above it)
 *
 * location entry (32 bytes), in commits and checkpoint entry frames:
 *     0 8 block   8 8 seq   16 4 chunkId   20 4 offset of the record in the chunk
 *    24 4 len (stored payload length)   28 4 flags (bit 0: LZ4)
 *
 * 'K' checkpoint header (first frame of the checkpoint file), 64 bytes:
 *     0 1 'K'   1 7 "VBFSCKP"   8 2 version   10 6 reserved   16 16 volumeId
 *    32 8 seq high-water   40 8 first map log segment to replay after this checkpoint
 *    48 4 next chunk id   52 4 reserved   56 8 entry count
 * 'E' checkpoint entries: 0 1 'E'  1 3 reserved  4 4 count  8 count x location entry
 * 'F' checkpoint footer: 0 1 'F'  1 7 reserved  8 8 entry count (must match 'K')
 *
 * Version 2 of the checkpoint and version 3 of the map log record extents: a run
 * of blocks whose records lie back to back in one chunk, with consecutive seqs and
 * one stored length and flags (a scattered block is an extent of one).
 *
 * extent entry (32 bytes):
 *     0 8 first block   8 8 seq of the first block   16 4 chunkId
 *    20 4 offset of the first block's record in the chunk
 *    24 4 len (stored payload length of every record, bits 0..23) | flags << 24
 *    28 4 block count (>= 1)
 *   block k of the extent: seq + k, record at offset + k * (32 + len)
 *
 * 'X' extent commit (map log version 3), replaces 'C':
 *     0 1 'X'   1 3 reserved   4 4 chunkId   8 4 extent count   12 4 block count
 *    16 extent count x extent entry (each with the frame's chunkId)
 * 'K' header version 2: as above, entry count = mapped blocks (not extents)
 * 'R' checkpoint extents (version 2), replaces 'E':
 *     0 1 'R'   1 3 reserved   4 4 extent count   8 extent count x extent entry
 * 'F' footer: as above (the block count of the 'K' header)
 *
 * 'Z' trim commit (map log version 4): blocks that became Empty (a trim or a
 * full-block zero write), each from a seq on; any location with an older seq is
 * gone, a newer one stays. Runs of blocks with consecutive seqs:
 *     0 1 'Z'   1 3 reserved   4 4 run count   8 4 block count   12 4 reserved
 *    16 run count x trim run: 0 8 first block   8 8 seq of the first block
 *                               16 4 block count (>= 1)   20 4 reserved
 * A checkpoint needs no tombstone: it lists every location, and replaces every
 * log segment before it, so a block it does not list is Empty.
 */
export const LOCATION_ENTRY = 32;
/**
 * Map log segments: 2 = every commit write begins with an 'S' sync frame; 3 =
 * chunk commits are 'X' extent frames instead of 'C' (1 and 2 are still read); 4 =
 * may hold 'Z' trim commits.
 */
export const MAP_LOG_VERSION = 4;
/** Checkpoint: 2 = 'R' extent frames instead of 'E' location frames (1 is still read). */
export const CHECKPOINT_VERSION = 2;

export interface Location {
  block: number;
  seq: number;
  chunkId: number;
  offset: number;
  len: number;
  flags: number;
}

export interface MapLogHeader {
  volumeId: string;
  segment: number;
  version: number;
}

export interface CheckpointHeader {
  volumeId: string;
  seq: number;
  mapSegment: number;
  nextChunkId: number;
  entryCount: number;
  version: number;
}

export function encodeMapLogHeader(h: Omit<MapLogHeader, 'version'>): Buffer {
  const p = Buffer.alloc(40);
  p.write('HVBFSMAP', 0, 'latin1');
  p.writeUInt16LE(MAP_LOG_VERSION, 8);
  p.write(h.volumeId, 16, 16, 'hex');
  writeU64(p, 32, h.segment);
  return p;
}

export function decodeMapLogHeader(p: Buffer): MapLogHeader | null {
  if (p.length !== 40 || p.toString('latin1', 0, 8) !== 'HVBFSMAP') return null;
  return { version: p.readUInt16LE(8), volumeId: p.toString('hex', 16, 32), segment: readU64(p, 32) };
}

export function writeLocation(p: Uint8Array, off: number, block: number, seq: number, chunkId: number, offset: number, len: number, flags: number): void {
  writeU64(p, off, block);
  writeU64(p, off + 8, seq);
  writeU32(p, off + 16, chunkId);
  writeU32(p, off + 20, offset);
  writeU32(p, off + 24, len);
  writeU32(p, off + 28, flags);
}

export function readLocation(p: Uint8Array, off: number): Location {
  return {
    block: readU64(p, off),
    seq: readU64(p, off + 8),
    chunkId: readU32(p, off + 16),
    offset: readU32(p, off + 20),
    len: readU32(p, off + 24),
    flags: readU32(p, off + 28),
  };
}

/**
 * Where the records of one chunk object went: entry k describes the k-th record.
 * Struct of arrays, so a flush builds no per-block objects. The flusher fills it
 * while building the chunk; the map store encodes it (encodeCommit) and the index
 * applies it, so the byte layout of a commit is known here alone.
 */
export interface ChunkPlacement {
  chunkId: number;
  count: number;
  blocks: Float64Array;
  seqs: Float64Array;
  offsets: Uint32Array;
  lens: Uint32Array;
  flags: Uint8Array;
}

export function allocPlacement(chunkId: number, count: number): ChunkPlacement {
  return {
    chunkId,
    count,
    blocks: new Float64Array(count),
    seqs: new Float64Array(count),
    offsets: new Uint32Array(count),
    lens: new Uint32Array(count),
    flags: new Uint8Array(count),
  };
}

/** The 'C' commit payload of a placement. */
export function encodeCommit(pl: ChunkPlacement): Buffer {
  const p = allocCommit(pl.chunkId, pl.count);
  for (let k = 0; k < pl.count; k++) {
    writeLocation(
      p,
      commitEntryOffset(k),
      pl.blocks[k] as number,
      pl.seqs[k] as number,
      pl.chunkId,
      pl.offsets[k] as number,
      pl.lens[k] as number,
      pl.flags[k] as number,
    );
  }
  return p;
}

/** Allocate a commit payload for `count` entries; fill entries with writeLocation at commitEntryOffset(i). */
export function allocCommit(chunkId: number, count: number): Buffer {
  const p = Buffer.alloc(16 + count * LOCATION_ENTRY);
  p[0] = 0x43; // 'C'
  writeU32(p, 4, chunkId);
  writeU32(p, 8, count);
  return p;
}

/** An 'S' sync frame payload claiming `syncedTo`. */
export function encodeSyncFrame(syncedTo: number): Buffer {
  const p = Buffer.alloc(16);
  p[0] = 0x53; // 'S'
  writeU64(p, 8, syncedTo);
  return p;
}

/** The claim of an 'S' payload, or null when the payload is not one. */
export function decodeSyncFrame(p: Buffer): number | null {
  if (p.length !== 16 || p[0] !== 0x53) return null;
  return readU64(p, 8);
}

/** A 'Q' seq reservation payload: seqs up to `upTo` may be in use. */
export function encodeReservation(upTo: number): Buffer {
  const p = Buffer.alloc(16);
  p[0] = 0x51; // 'Q'
  writeU64(p, 8, upTo);
  return p;
}

/** The R of a 'Q' payload, or null when the payload is not one. */
export function decodeReservation(p: Buffer): number | null {
  if (p.length !== 16 || p[0] !== 0x51) return null;
  return readU64(p, 8);
}

export const commitEntryOffset = (i: number): number => 16 + i * LOCATION_ENTRY;

export function decodeCommit(p: Buffer): { chunkId: number; count: number } | null {
  if (p.length < 16 || p[0] !== 0x43) return null;
  const count = readU32(p, 8);
  if (p.length !== 16 + count * LOCATION_ENTRY) return null;
  return { chunkId: readU32(p, 4), count };
}

export function encodeCheckpointHeader(h: Omit<CheckpointHeader, 'version'>): Buffer {
  const p = Buffer.alloc(64);
  p.write('KVBFSCKP', 0, 'latin1');
  p.writeUInt16LE(CHECKPOINT_VERSION, 8);
  p.write(h.volumeId, 16, 16, 'hex');
  writeU64(p, 32, h.seq);
  writeU64(p, 40, h.mapSegment);
  writeU32(p, 48, h.nextChunkId);
  writeU64(p, 56, h.entryCount);
  return p;
}

export function decodeCheckpointHeader(p: Buffer): CheckpointHeader | null {
  if (p.length !== 64 || p.toString('latin1', 0, 8) !== 'KVBFSCKP') return null;
  return {
    version: p.readUInt16LE(8),
    volumeId: p.toString('hex', 16, 32),
    seq: readU64(p, 32),
    mapSegment: readU64(p, 40),
    nextChunkId: readU32(p, 48),
    entryCount: readU64(p, 56),
  };
}

export function allocEntries(count: number): Buffer {
  const p = Buffer.alloc(8 + count * LOCATION_ENTRY);
  p[0] = 0x45; // 'E'
  writeU32(p, 4, count);
  return p;
}

export const entriesEntryOffset = (i: number): number => 8 + i * LOCATION_ENTRY;

export function decodeEntries(p: Buffer): number | null {
  if (p.length < 8 || p[0] !== 0x45) return null;
  const count = readU32(p, 4);
  return p.length === 8 + count * LOCATION_ENTRY ? count : null;
}

export function encodeFooter(entryCount: number): Buffer {
  const p = Buffer.alloc(16);
  p[0] = 0x46; // 'F'
  writeU64(p, 8, entryCount);
  return p;
}

export function decodeFooter(p: Buffer): number | null {
  if (p.length !== 16 || p[0] !== 0x46) return null;
  return readU64(p, 8);
}

// ------------------------------------------------------------------ extents (v2)

export const EXTENT_ENTRY = 32;
/** len is 24 bits in an extent entry (a block is at most 64 KiB). */
export const EXTENT_MAX_LEN = 0xffffff;

export interface Extent {
  block: number;
  count: number;
  seq: number;
  chunkId: number;
  offset: number;
  len: number;
  flags: number;
}

export function writeExtent(
  p: Uint8Array,
  off: number,
  block: number,
  count: number,
  seq: number,
  chunkId: number,
  offset: number,
  len: number,
  flags: number,
): void {
  writeU64(p, off, block);
  writeU64(p, off + 8, seq);
  writeU32(p, off + 16, chunkId);
  writeU32(p, off + 20, offset);
  writeU32(p, off + 24, ((len & EXTENT_MAX_LEN) | ((flags & 0xff) << 24)) >>> 0);
  writeU32(p, off + 28, count);
}

export function readExtent(p: Uint8Array, off: number): Extent {
  const lf = readU32(p, off + 24);
  return {
    block: readU64(p, off),
    seq: readU64(p, off + 8),
    chunkId: readU32(p, off + 16),
    offset: readU32(p, off + 20),
    len: lf & EXTENT_MAX_LEN,
    flags: lf >>> 24,
    count: readU32(p, off + 28),
  };
}

/**
 * Group a placement into extents: entry k continues the extent before it when its
 * block, seq and record offset are the next ones and its length and flags match.
 * Calls fn(first entry, entry count) per extent, in order; returns the count.
 */
export function forEachPlacementRun(pl: ChunkPlacement, fn: (k: number, n: number) => void, recordHeader = RECORD_HEADER): number {
  let runs = 0;
  let k0 = 0;
  for (let k = 1; k <= pl.count; k++) {
    const p = k - 1;
    const joins =
      k < pl.count &&
      pl.blocks[k] === (pl.blocks[p] as number) + 1 &&
      pl.seqs[k] === (pl.seqs[p] as number) + 1 &&
      pl.lens[k] === pl.lens[p] &&
      pl.flags[k] === pl.flags[p] &&
      pl.offsets[k] === (pl.offsets[p] as number) + recordHeader + (pl.lens[p] as number);
    if (joins) continue;
    fn(k0, k - k0);
    runs++;
    k0 = k;
  }
  return runs;
}

/** The 'X' extent commit payload of a placement (map log version 3). */
export function encodeExtentCommit(pl: ChunkPlacement): Buffer {
  const runs = forEachPlacementRun(pl, () => undefined);
  const p = Buffer.alloc(16 + runs * EXTENT_ENTRY);
  p[0] = 0x58; // 'X'
  writeU32(p, 4, pl.chunkId);
  writeU32(p, 8, runs);
  writeU32(p, 12, pl.count);
  let i = 0;
  forEachPlacementRun(pl, (k, n) => {
    writeExtent(
      p,
      extentCommitEntryOffset(i++),
      pl.blocks[k] as number,
      n,
      pl.seqs[k] as number,
      pl.chunkId,
      pl.offsets[k] as number,
      pl.lens[k] as number,
      pl.flags[k] as number,
    );
  });
  return p;
}

export const extentCommitEntryOffset = (i: number): number => 16 + i * EXTENT_ENTRY;

export function decodeExtentCommit(p: Buffer): { chunkId: number; extents: number; blocks: number } | null {
  if (p.length < 16 || p[0] !== 0x58) return null;
  const extents = readU32(p, 8);
  if (p.length !== 16 + extents * EXTENT_ENTRY) return null;
  return { chunkId: readU32(p, 4), extents, blocks: readU32(p, 12) };
}

/** A checkpoint 'R' payload for `count` extents; fill with writeExtent at runsEntryOffset(i). */
export function allocRuns(count: number): Buffer {
  const p = Buffer.alloc(8 + count * EXTENT_ENTRY);
  p[0] = 0x52; // 'R'
  writeU32(p, 4, count);
  return p;
}

export const runsEntryOffset = (i: number): number => 8 + i * EXTENT_ENTRY;

export function decodeRuns(p: Buffer): number | null {
  if (p.length < 8 || p[0] !== 0x52) return null;
  const count = readU32(p, 4);
  return p.length === 8 + count * EXTENT_ENTRY ? count : null;
}

// ------------------------------------------------------------------ trims (map log v4)

export const TRIM_RUN = 24;

/** The 'Z' trim commit payload of `count` (block, seq) pairs, in block order: runs of consecutive blocks and seqs. */
export function encodeTrimCommit(blocks: Float64Array, seqs: Float64Array, count: number): Buffer {
  let runs = 0;
  for (let k = 0; k < count; k++) if (k === 0 || !trimJoins(blocks, seqs, k)) runs++;
  const p = Buffer.alloc(16 + runs * TRIM_RUN);
  p[0] = 0x5a; // 'Z'
  writeU32(p, 4, runs);
  writeU32(p, 8, count);
  let i = -1;
  for (let k = 0; k < count; k++) {
    if (k === 0 || !trimJoins(blocks, seqs, k)) {
      i++;
      writeU64(p, 16 + i * TRIM_RUN, blocks[k] as number);
      writeU64(p, 16 + i * TRIM_RUN + 8, seqs[k] as number);
    }
    const at = 16 + i * TRIM_RUN + 16;
    writeU32(p, at, readU32(p, at) + 1);
  }
  return p;
}

function trimJoins(blocks: Float64Array, seqs: Float64Array, k: number): boolean {
  return blocks[k] === (blocks[k - 1] as number) + 1 && seqs[k] === (seqs[k - 1] as number) + 1;
}

export interface TrimRun {
  block: number;
  seq: number;
  count: number;
}

/** Run count and block count of a 'Z' payload, or null when the payload is not one. */
export function decodeTrimCommit(p: Buffer): { runs: number; blocks: number } | null {
  if (p.length < 16 || p[0] !== 0x5a) return null;
  const runs = readU32(p, 4);
  if (p.length !== 16 + runs * TRIM_RUN) return null;
  return { runs, blocks: readU32(p, 8) };
}

export function readTrimRun(p: Uint8Array, i: number): TrimRun {
  const off = 16 + i * TRIM_RUN;
  return { block: readU64(p, off), seq: readU64(p, off + 8), count: readU32(p, off + 16) };
}
