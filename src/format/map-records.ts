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
 */
export const LOCATION_ENTRY = 32;
/** Map log segments: 2 = every commit write begins with an 'S' sync frame (1 is still read). */
const MAP_LOG_VERSION = 2;
const CHECKPOINT_VERSION = 1;

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
    writeLocation(p, commitEntryOffset(k), pl.blocks[k] as number, pl.seqs[k] as number, pl.chunkId, pl.offsets[k] as number, pl.lens[k] as number, pl.flags[k] as number);
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
