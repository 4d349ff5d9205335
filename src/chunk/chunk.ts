import { VbfsError } from '../errors';
import { checkRecord, maxPayload } from '../format/block-record';
import { CHUNK_MAGIC, decodeSegmentHeader, encodeSegmentHeader } from '../format/segment-header';

/**
 * Chunk objects: a 64-byte header ("VBFSCHK\0", volume id, chunk id, record count,
 * max seq) then block records in block order, each self-checked (see
 * format/block-record.ts). A volume can be rebuilt from its chunks alone: for each
 * block, the record with the highest seq wins.
 */
export const chunkKey = (volumeId: string, id: number): string => `${volumeId}/chunks/${id.toString(16).padStart(8, '0')}`;
export const chunkPrefix = (volumeId: string): string => `${volumeId}/chunks/`;

export function parseChunkKey(volumeId: string, key: string): number | null {
  const p = chunkPrefix(volumeId);
  if (!key.startsWith(p)) return null;
  const rest = key.slice(p.length);
  return /^[0-9a-f]{8}$/.test(rest) ? parseInt(rest, 16) : null;
}

export function encodeChunkHeader(out: Buffer, volumeId: string, blockSize: number, chunkId: number, count: number, maxSeq: number): void {
  encodeSegmentHeader({ magic: CHUNK_MAGIC, volumeId, blockSize, number: chunkId, count, maxSeq }, out);
}

export function decodeChunkHeader(buf: Buffer, key: string, volumeId: string): { count: number; maxSeq: number } {
  const h = decodeSegmentHeader(buf, CHUNK_MAGIC);
  if (!h || h.volumeId !== volumeId) throw new VbfsError('VBFS_CORRUPT', `chunk object ${key}: bad header`, { path: key, offset: 0 });
  return { count: h.count, maxSeq: h.maxSeq };
}

/**
 * Verify one record read from a chunk run: its checksum, and that it is the block
 * and version the index points at (a misplaced pointer must never return another
 * block's data).
 */
export function verifyChunkRecord(buf: Buffer, at: number, block: number, seq: number, blockSize: number, key: string, objOff: number): number {
  const r = checkRecord(buf, at, buf.length, maxPayload(blockSize));
  if (!r.ok)
    throw new VbfsError('VBFS_CORRUPT', `chunk object ${key}: block record at offset ${objOff} is damaged (${r.reason})`, { path: key, offset: objOff, block });
  if (r.header.block !== block || r.header.seq !== seq) {
    throw new VbfsError(
      'VBFS_CORRUPT',
      `chunk object ${key}: record at offset ${objOff} holds block ${r.header.block} seq ${r.header.seq}, expected block ${block} seq ${seq}`,
      { path: key, offset: objOff, block },
    );
  }
  return r.header.flags;
}
