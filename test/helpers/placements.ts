import { type ChunkPlacement, allocPlacement } from '../../src/format/map-records';

/** A map commit of chunk `chunkId` holding blocks firstBlock.. (n of them) at seqs 100 * chunkId + 1.., 4 KiB records. */
export function commitOf(chunkId: number, firstBlock: number, n: number): ChunkPlacement {
  const p = allocPlacement(chunkId, n);
  for (let i = 0; i < n; i++) {
    p.blocks[i] = firstBlock + i;
    p.seqs[i] = 100 * chunkId + i + 1;
    p.offsets[i] = 64 + i * 4128;
    p.lens[i] = 4096;
  }
  return p;
}
