import { VbfsError } from '../errors';
import {
  checkRecord,
  isSyncMarker,
  isZeroRecord,
  WAL_RECORD_FLAGS,
  zeroRecordWellFormed,
  maxPayload,
  RECORD_HEADER,
  syncMarkerClaim,
  type RecordCheck,
  type RecordHeader,
} from '../format/block-record';
import { decodeSegmentHeader, SEGMENT_HEADER, WAL_FLAG_PREALLOCATED, WAL_MAGIC } from '../format/segment-header';
import type { FileIO } from '../io/file-io';
import type { Logger } from '../types';
import { walSegmentName } from './wal-writer';

export interface WalReplay {
  segments: number[]; // segment numbers still on disk after replay
  lastSegment: number; // highest segment number seen (0 if none)
  maxSeq: number;
  records: number;
  /** Torn tails cut (or, read-only, that would be cut): where, and what was dropped. */
  cuts: WalCut[];
}

export interface WalCut {
  path: string;
  offset: number;
  bytes: number;
  /** Valid block records found after the damage (never acknowledged: dropped with the tail). */
  records: number;
  provenSynced: number;
  reason: string;
}

/**
 * Replay every WAL segment in order, calling `onRecord` for each valid block record.
 *
 * Older segments are fdatasync'ed before a newer one is started, so any damage in
 * them is corruption. In the newest segment, what is proven synced decides:
 *
 * - Format 2 segments begin every batch with a sync marker claiming the offset a
 *   completed fdatasync covered. The highest claim found anywhere in the segment
 *   (also after the damage: a marker is true even in a batch that was only half
 *   written) is the proven sync point. Damage at or after it is a torn tail: until
 *   an fdatasync completes the disk may keep any subset of the pages written, so a
 *   hole can be followed by valid records, none of which was acknowledged. The
 *   segment is cut at the damage (truncate + fdatasync unless read-only) with a
 *   warning saying what was dropped. Damage before it is corruption.
 * - Format 1 segments (written before markers existed) keep the old rule: a torn
 *   tail only when no valid record follows the damage.
 * - Format 3 segments may be preallocated (zero-filled, or a recycled file still
 *   holding an earlier use's records). Records at or below the header's base seq, and
 *   markers not carrying it, are that earlier use's: they end the log like zeros do.
 *   In the newest segment, an end with no record of this use after it is the normal
 *   end of the log, not a torn tail: truncated there without a warning. An older
 *   preallocated segment must end right after a marker claiming all of it (the
 *   writer syncs one before it starts the next segment), with nothing of this use
 *   after it; anything else is corruption.
 *
 * Corruption is refused with VBFS_CORRUPT naming file and offset, never skipped.
 */
export async function replayWal(
  fileIO: FileIO,
  dir: string,
  volumeId: string,
  blockSize: number,
  readOnly: boolean,
  logger: Logger,
  onRecord: (h: RecordHeader, buf: Buffer, payloadOff: number, path: string) => void,
): Promise<WalReplay> {
  const names = (await fileIO.readdir(dir)).filter((n) => /^[0-9a-f]{16}\.wal$/.test(n));
  const nums = names.map((n) => parseInt(n.slice(0, 16), 16)).sort((a, b) => a - b);
  const out: WalReplay = { segments: [], lastSegment: nums.length > 0 ? (nums[nums.length - 1] as number) : 0, maxSeq: 0, records: 0, cuts: [] };
  let lastSeq = 0;
  const corrupt = (path: string, off: number, why: string): VbfsError =>
    new VbfsError('VBFS_CORRUPT', `WAL record at ${path} offset ${off} ${why}`, { path, offset: off });
  const cut = async (c: WalCut): Promise<void> => {
    logger.warn('cutting torn WAL tail (bytes written after the last proven fdatasync, never acknowledged)', {
      file: c.path,
      offset: c.offset,
      bytes: c.bytes,
      droppedRecords: c.records,
      provenSynced: c.provenSynced,
      reason: c.reason,
    });
    out.cuts.push(c);
    if (readOnly) return;
    if (c.offset === 0) {
      await fileIO.unlink(c.path);
      await fileIO.fsyncDir(dir);
      return;
    }
    const fd = await fileIO.open(c.path, 'r+');
    await fd.truncate(c.offset);
    await fd.datasync();
    await fd.close();
  };

  for (let k = 0; k < nums.length; k++) {
    const seg = nums[k] as number;
    const isLast = k === nums.length - 1;
    const path = `${dir}/${walSegmentName(seg)}`;
    const buf = await fileIO.readFile(path);
    const h = decodeSegmentHeader(buf, WAL_MAGIC);
    if (!h) {
      // The header shares its page with the first batch and is only made durable by
      // the first fdatasync, so in the newest segment it can be lost with everything
      // after it. A marker claiming a sync proves the header was synced too.
      const after = isLast ? scanAfter(buf, SEGMENT_HEADER - 1, blockSize, null) : null;
      if (isLast && after && after.maxClaim <= 0) {
        await cut({ path, offset: 0, bytes: buf.length, records: after.records, provenSynced: 0, reason: 'bad segment header' });
        continue;
      }
      throw new VbfsError('VBFS_CORRUPT', `WAL segment ${path}: bad header at offset 0`, { path, offset: 0 });
    }
    if (h.volumeId !== volumeId || h.blockSize !== blockSize || h.number !== seg || h.version < 1 || h.version > 3) {
      throw new VbfsError(
        'VBFS_CORRUPT',
        `WAL segment ${path} belongs to another volume or position, or has an unknown version (volume ${h.volumeId}, segment ${h.number}, version ${h.version})`,
        {
          path,
          offset: 0,
        },
      );
    }
    const markers = h.version >= 2;
    // Format 3: a recycled file still holds the records of its earlier use after this
    // use's last one. They all have seqs at or below the base seq (they were appended
    // before this use began) and their markers carry another base seq: not records here.
    const v3 = h.version >= 3;
    const baseSeq = v3 ? h.maxSeq : 0;
    const preallocated = v3 && (h.count & WAL_FLAG_PREALLOCATED) !== 0;
    out.segments.push(seg);
    let proven = 0;
    let off = SEGMENT_HEADER;
    /** Where the last marker ended, and whether it claimed everything before it (an end marker). */
    let endMarkerAt = -1;
    while (off < buf.length) {
      let r: RecordCheck | { ok: false; reason: 'stale' } = checkRecord(buf, off, buf.length, maxPayload(blockSize));
      if (r.ok && v3 && isStale(r.header, baseSeq)) r = { ok: false, reason: 'stale' };
      if (r.ok && markers && isSyncMarker(r.header)) {
        const claim = syncMarkerClaim(r.header, buf, off + RECORD_HEADER, baseSeq);
        if (claim < 0 || claim > off) throw corrupt(path, off, `is a malformed sync marker (claims ${claim})`);
        if (claim > proven) proven = claim;
        endMarkerAt = claim === off ? r.end : -1;
        off = r.end;
        continue;
      }
      if (r.ok) {
        if (
          r.header.seq <= lastSeq ||
          r.header.rawLen !== blockSize ||
          (r.header.flags & ~WAL_RECORD_FLAGS) !== 0 ||
          (isZeroRecord(r.header) && !zeroRecordWellFormed(r.header))
        ) {
          throw corrupt(path, off, `has sequence ${r.header.seq} out of order, a wrong block size or unknown flags`);
        }
        lastSeq = r.header.seq;
        out.maxSeq = r.header.seq;
        out.records++;
        onRecord(r.header, buf, off + RECORD_HEADER, path);
        off = r.end;
        continue;
      }
      if (!isLast) {
        // A preallocated segment the writer moved on from ends with a marker claiming
        // all of it (written and synced before the next segment was created): what
        // follows is its zero or stale tail.
        if (preallocated && endMarkerAt === off) {
          const tail = scanAfter(buf, off, blockSize, baseSeq);
          if (tail.records === 0 && tail.maxClaim < off) break;
        }
        throw corrupt(path, off, `is damaged (${r.reason}) in a segment that is not the newest: refusing to replay past it`);
      }
      const after = scanAfter(buf, off, blockSize, v3 ? baseSeq : -1);
      if (markers) {
        if (after.maxClaim > proven) proven = after.maxClaim;
        if (off < proven) {
          throw corrupt(path, off, `is damaged (${r.reason}) before offset ${proven}, which a completed fdatasync covered: refusing to replay past it`);
        }
      } else if (after.first >= 0) {
        throw corrupt(path, off, `is damaged (${r.reason}) and a valid record follows at offset ${after.first}: refusing to replay past it`);
      }
      if (preallocated && after.records === 0) {
        // The end of the log in a preallocated file: nothing of this use follows (at
        // most a record torn in its last, never acknowledged, batch). Truncated, so
        // that the file, no longer the newest once the writer continues, ends at EOF.
        logger.info('WAL ends before the preallocated tail of its newest segment', { file: path, offset: off, provenSynced: proven });
        if (!readOnly) {
          const fd = await fileIO.open(path, 'r+');
          await fd.truncate(off);
          await fd.datasync();
          await fd.close();
        }
        break;
      }
      await cut({ path, offset: off, bytes: buf.length - off, records: after.records, provenSynced: proven, reason: r.reason });
      break;
    }
  }
  return out;
}

/** In a format 3 segment: a record or marker left by an earlier use of the file. */
function isStale(h: RecordHeader, baseSeq: number): boolean {
  return isSyncMarker(h) ? h.seq !== baseSeq : h.seq <= baseSeq;
}

interface TailScan {
  /** Offset of the first valid record after `from`, or -1. */
  first: number;
  /** Valid block records (not markers) found. */
  records: number;
  /** Highest sync marker claim found, or -1. */
  maxClaim: number;
}

/**
 * Find every valid record after damage at `from`: resynchronise byte by byte,
 * follow the chain of valid records, and resynchronise again at the next damage.
 * Records are self-checking (CRC over header and payload), so a match is a record
 * this writer wrote into this file, not an accident of stale bytes; in format 3
 * (`baseSeq` >= 0) the records and markers of an earlier use of the file are skipped;
 * -1: format 1 or 2; null: unknown (the header is lost), markers of any base seq count.
 */
function scanAfter(buf: Buffer, from: number, blockSize: number, baseSeq: number | null): TailScan {
  const out: TailScan = { first: -1, records: 0, maxClaim: -1 };
  let off = from + 1;
  while (off + RECORD_HEADER <= buf.length) {
    const r = checkRecord(buf, off, buf.length, maxPayload(blockSize));
    if (!r.ok || (baseSeq !== null && baseSeq >= 0 && isStale(r.header, baseSeq))) {
      // A record has a non-zero byte within its first 16: the length field (bytes 4..8),
      // or, in a zero record (len 0), the seq (bytes 8..16). Across a run of zeros (the
      // preallocated tail) the next candidate is at most 15 bytes before its end.
      off = Math.max(off + 1, nextNonZero(buf, off + 1) - 15);
      continue;
    }
    if (out.first < 0) out.first = off;
    if (isSyncMarker(r.header)) {
      const claim = syncMarkerClaim(r.header, buf, off + RECORD_HEADER, baseSeq === null ? r.header.seq : Math.max(baseSeq, 0));
      if (claim > out.maxClaim && claim <= off) out.maxClaim = claim;
    } else out.records++;
    off = r.end;
  }
  return out;
}

const ZERO_PAGE = Buffer.alloc(4096);

/** The offset of the first non-zero byte at or after `from` (buf.length if none): native compares, page by page. */
function nextNonZero(buf: Buffer, from: number): number {
  let i = from;
  while (i < buf.length && (i & 4095) !== 0) {
    if (buf[i] !== 0) return i;
    i++;
  }
  while (i + 4096 <= buf.length && buf.compare(ZERO_PAGE, 0, 4096, i, i + 4096) === 0) i += 4096;
  while (i < buf.length && buf[i] === 0) i++;
  return i;
}
