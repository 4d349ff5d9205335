import { VbfsError, isNoSpace } from '../errors';
import { chunkKey, chunkPrefix, decodeChunkHeader, parseChunkKey } from '../chunk/chunk';
import { isZeroRecord, RECORD_HEADER } from '../format/block-record';
import { SEGMENT_HEADER } from '../format/segment-header';
import { encodeVolumeMeta, VOLUME_FORMAT_VERSION } from '../format/volume-meta';
import { replayWal } from '../wal/wal-reader';
import type { VolumeInfo } from '../types';
import { checkZeroRecord, openRecordPayload } from './record-payload';
import type { VolumeCore } from './volume-core';
import type { WalStart } from './writer';

/**
 * Open = recover: checkpoint + map log give the persisted locations; chunk
 * objects newer than the map (a flush that crashed before its commit) are
 * orphans, deleted after their seqs are counted; the WAL replays every record
 * newer than its block's persisted version into the arena as Pending. Sequence
 * numbers restart above the maximum of all of these and of the seq reservation,
 * so they never go backwards nor repeat; a writable open reserves the next ones.
 * A writable open also upgrades an older volume format first. Returns where the
 * WAL continues (the writer appends after the replayed segments).
 */
export async function recover(core: VolumeCore): Promise<WalStart> {
  const { ctx, index, arena, readOnly, blockSize: bs, blockCount, name } = core;
  const volumeId = core.info.id;
  const loaded = await core.map.load(index, readOnly);
  // A seq reservation counts too: seqs up to it may have reached the disk in a WAL
  // tail that is cut below (never acknowledged, but its bytes may survive somewhere).
  let maxSeq = Math.max(loaded.seq, loaded.reserved);
  let nextChunk = loaded.nextChunkId;

  const keys = await ctx.backend.list(chunkPrefix(volumeId));
  const present = new Set<number>();
  const orphans: string[] = [];
  for (const key of keys) {
    const id = parseChunkKey(volumeId, key);
    if (id === null) continue;
    present.add(id);
    if (index.liveBlocks(id) > 0) continue;
    if (id >= loaded.nextChunkId) {
      // Written by a flush that crashed before its map commit: its seqs still count.
      const h = await ctx.backend
        .get(key, 0, SEGMENT_HEADER)
        .then((b) => decodeChunkHeader(b, key, volumeId))
        .catch(() => null);
      if (h && h.maxSeq > maxSeq) maxSeq = h.maxSeq;
    }
    if (id >= nextChunk) nextChunk = id + 1;
    orphans.push(key);
  }
  index.forEachLiveChunk((id, refs) => {
    if (!present.has(id)) {
      throw new VbfsError('VBFS_CORRUPT', `volume '${name}': chunk object ${chunkKey(volumeId, id)} holds ${refs} blocks but is missing from the backend`, {
        path: chunkKey(volumeId, id),
      });
    }
  });

  const replay = await replayWal(ctx.fileIO, `${ctx.dir}/wal`, volumeId, bs, readOnly, ctx.logger, (h, buf, off, path) => {
    if (h.block >= blockCount) {
      throw new VbfsError('VBFS_CORRUPT', `WAL record for block ${h.block} beyond the end of volume '${name}'`, { block: h.block });
    }
    if (h.seq <= index.persistedSeq(h.block)) return; // already in a chunk (crash before the WAL was reclaimed)
    if (isZeroRecord(h)) {
      // A trim or zero write: authenticated (when sealed) before it changes anything,
      // then Empty again, and its tombstone goes into the next flush's map commit.
      checkZeroRecord(core.cipher, h, buf, off, { path: `WAL segment ${path}`, offset: off - RECORD_HEADER });
      arena.release(index.setZero(h.block, h.seq));
      core.zeros.push(h.block, h.seq);
      return;
    }
    // Opened (authenticated, decrypted, uncompressed) before anything changes: a
    // sealed record that fails is corruption and the open is refused.
    const { data, base } = openRecordPayload(core.cipher, h, buf, off, bs, { path: `WAL segment ${path}`, offset: off - RECORD_HEADER });
    const slot = arena.allocForce();
    // The replayed record is kept as it was logged (an LZ4 or sealed payload is copied
    // out of the replay buffer), so the chunk record reuses it, its flags and its CRC
    // like a new write's: a replayed seq is never sealed again.
    arena.copyIn(slot, data, base);
    arena.setMeta(slot, h.block, h.seq);
    const crc = buf.readUInt32LE(off - RECORD_HEADER);
    if (core.cipher) {
      buf.copy(arena.sealedSlab(slot), arena.sealedOffset(slot), off, off + h.len);
      arena.setSealedRecord(slot, crc, h.len, h.flags);
    } else {
      arena.setRecord(slot, crc, h.flags !== 0 ? Buffer.from(buf.subarray(off, off + h.len)) : null, h.flags);
    }
    arena.release(index.setHot(h.block, slot, true));
  });
  if (replay.maxSeq > maxSeq) maxSeq = replay.maxSeq;
  core.seq = maxSeq;
  core.nextChunkId = nextChunk;

  if (!readOnly) {
    await upgradeFormat(core);
    for (const key of orphans) await ctx.backend.delete(key);
    // Reserve before the first write of this open (seq-reserve.ts); read-only opens reserve
    // nothing. On a full disk the volume still opens: its writes wait for a reservation
    // and get the out-of-space error until one succeeds.
    await core.map.reserve(maxSeq + core.tunables.seqReserveStep).catch((err: unknown) => {
      if (!isNoSpace(err)) throw err;
      ctx.logger.warn('store disk full: no seq reservation at open; writes are refused until one succeeds', { volume: name, error: String(err) });
    });
    if (replay.records > 0) ctx.logger.info('replayed WAL', { volume: name, records: replay.records, pendingBlocks: arena.used });
  }
  return { lastSegment: replay.lastSegment, segments: replay.segments };
}

/**
 * A format 1 volume is rewritten as format 2 before the first format 2 WAL segment
 * or map log is written, so an older build refuses it (unsupported version) instead
 * of reading a sync marker as a block. Atomic: temp file, sync, rename, sync dir.
 */
async function upgradeFormat(core: VolumeCore): Promise<void> {
  const info = core.info;
  if (info.formatVersion >= VOLUME_FORMAT_VERSION) return;
  const { fileIO, dir, logger } = core.ctx;
  const next: VolumeInfo = { ...info, formatVersion: VOLUME_FORMAT_VERSION };
  const tmp = `${dir}/volume.json.tmp`;
  const fd = await fileIO.open(tmp, 'w+');
  try {
    await fd.write(encodeVolumeMeta(next), 0);
    await fd.sync();
  } finally {
    await fd.close();
  }
  await fileIO.rename(tmp, `${dir}/volume.json`);
  await fileIO.fsyncDir(dir);
  logger.info('upgraded volume format', { volume: core.name, from: info.formatVersion, to: VOLUME_FORMAT_VERSION });
  core.info = next;
}
