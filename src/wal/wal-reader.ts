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
  type RecordHeader,
} from '../format/block-record';
import { decodeSegmentHeader, SEGMENT_HEADER, WAL_MAGIC } from '../format/segment-header';
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
      const after = isLast ? scanAfter(buf, SEGMENT_HEADER - 1, blockSize) : null;
      if (isLast && after && after.maxClaim <= 0) {
        await cut({ path, offset: 0, bytes: buf.length, records: after.records, provenSynced: 0, reason: 'bad segment header' });
        continue;
      }
      throw new VbfsError('VBFS_CORRUPT', `WAL segment ${path}: bad header at offset 0`, { path, offset: 0 });
    }
    if (h.volumeId !== volumeId || h.blockSize !== blockSize || h.number !== seg || (h.version !== 1 && h.version !== 2)) {
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
    out.segments.push(seg);
    let proven = 0;
    let off = SEGMENT_HEADER;
    while (off < buf.length) {
      const r = checkRecord(buf, off, buf.length, maxPayload(blockSize));
      if (r.ok && markers && isSyncMarker(r.header)) {
        const claim = syncMarkerClaim(r.header, buf, off + RECORD_HEADER);
        if (claim < 0 || claim > off) throw corrupt(path, off, `is a malformed sync marker (claims ${claim})`);
        if (claim > proven) proven = claim;
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
      if (!isLast) throw corrupt(path, off, `is damaged (${r.reason}) in a segment that is not the newest: refusing to replay past it`);
      const after = scanAfter(buf, off, blockSize);
      if (markers) {
        if (after.maxClaim > proven) proven = after.maxClaim;
        if (off < proven) {
          throw corrupt(path, off, `is damaged (${r.reason}) before offset ${proven}, which a completed fdatasync covered: refusing to replay past it`);
        }
      } else if (after.first >= 0) {
        throw corrupt(path, off, `is damaged (${r.reason}) and a valid record follows at offset ${after.first}: refusing to replay past it`);
      }
      await cut({ path, offset: off, bytes: buf.length - off, records: after.records, provenSynced: proven, reason: r.reason });
      break;
    }
  }
  return out;
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
 * this writer wrote into this file, not an accident of stale bytes.
 */
function scanAfter(buf: Buffer, from: number, blockSize: number): TailScan {
  const out: TailScan = { first: -1, records: 0, maxClaim: -1 };
  let off = from + 1;
  while (off + RECORD_HEADER <= buf.length) {
    const r = checkRecord(buf, off, buf.length, maxPayload(blockSize));
    if (!r.ok) {
      off++;
      continue;
    }
    if (out.first < 0) out.first = off;
    if (isSyncMarker(r.header)) {
      const claim = syncMarkerClaim(r.header, buf, off + RECORD_HEADER);
      if (claim > out.maxClaim && claim <= off) out.maxClaim = claim;
    } else out.records++;
    off = r.end;
  }
  return out;
}
