import { VbfsError } from '../errors';
import { checkRecord, RECORD_HEADER, type RecordHeader } from '../format/block-record';
import { decodeSegmentHeader, SEGMENT_HEADER, WAL_MAGIC } from '../format/segment-header';
import type { FileIO } from '../io/file-io';
import type { Logger } from '../store/types';
import { walSegmentName } from './wal-writer';

export interface WalReplay {
  segments: number[]; // segment numbers still on disk after replay
  lastSegment: number; // highest segment number seen (0 if none)
  maxSeq: number;
  records: number;
}

/**
 * Replay every WAL segment in order, calling `onRecord` for each valid record.
 *
 * A damaged record is a torn tail only if it is in the newest segment and no valid
 * record follows it: then the segment is cut there (truncate + fdatasync, unless
 * read-only) with a warning. A damaged record followed by a valid one, or a damaged
 * tail in an older segment (older segments are synced before a newer one is
 * started), is corruption: refused with an error that names file and offset.
 */
export async function replayWal(
  fileIO: FileIO,
  dir: string,
  volumeId: string,
  blockSize: number,
  readOnly: boolean,
  logger: Logger,
  onRecord: (h: RecordHeader, buf: Buffer, payloadOff: number) => void,
): Promise<WalReplay> {
  const names = (await fileIO.readdir(dir)).filter((n) => /^[0-9a-f]{16}\.wal$/.test(n));
  const nums = names.map((n) => parseInt(n.slice(0, 16), 16)).sort((a, b) => a - b);
  const out: WalReplay = { segments: [], lastSegment: nums.length > 0 ? (nums[nums.length - 1] as number) : 0, maxSeq: 0, records: 0 };
  let lastSeq = 0;
  for (let k = 0; k < nums.length; k++) {
    const seg = nums[k] as number;
    const isLast = k === nums.length - 1;
    const path = `${dir}/${walSegmentName(seg)}`;
    const buf = await fileIO.readFile(path);
    const h = decodeSegmentHeader(buf, WAL_MAGIC);
    if (!h) {
      if (isLast && buf.length <= SEGMENT_HEADER + RECORD_HEADER) {
        // Created but its header never became durable: nothing in it was ever synced.
        logger.warn('removing WAL segment with a torn header', { file: path, bytes: buf.length });
        if (!readOnly) {
          await fileIO.unlink(path);
          await fileIO.fsyncDir(dir);
        }
        continue;
      }
      throw new VbfsError('VBFS_CORRUPT', `WAL segment ${path}: bad header at offset 0`, { path, offset: 0 });
    }
    if (h.volumeId !== volumeId || h.blockSize !== blockSize || h.number !== seg) {
      throw new VbfsError('VBFS_CORRUPT', `WAL segment ${path} belongs to another volume or position (volume ${h.volumeId}, segment ${h.number})`, { path, offset: 0 });
    }
    out.segments.push(seg);
    let off = SEGMENT_HEADER;
    while (off < buf.length) {
      const r = checkRecord(buf, off, buf.length, blockSize);
      if (r.ok) {
        if (r.header.seq <= lastSeq || r.header.rawLen !== blockSize) {
          throw new VbfsError('VBFS_CORRUPT', `WAL record at ${path} offset ${off}: sequence ${r.header.seq} out of order or wrong block size`, { path, offset: off });
        }
        lastSeq = r.header.seq;
        out.maxSeq = r.header.seq;
        out.records++;
        onRecord(r.header, buf, off + RECORD_HEADER);
        off = r.end;
        continue;
      }
      const after = validRecordAfter(buf, off, blockSize);
      if (after >= 0 || !isLast) {
        throw new VbfsError(
          'VBFS_CORRUPT',
          `WAL record at ${path} offset ${off} is damaged (${r.reason})` +
            (after >= 0 ? ` and a valid record follows at offset ${after}` : ' in a segment that is not the newest') +
            ': refusing to replay past it',
          { path, offset: off },
        );
      }
      logger.warn('cutting torn WAL tail', { file: path, offset: off, bytes: buf.length - off, reason: r.reason });
      if (!readOnly) {
        const fd = await fileIO.open(path, 'r+');
        await fd.truncate(off);
        await fd.datasync();
        await fd.close();
      }
      break;
    }
  }
  return out;
}

function validRecordAfter(buf: Buffer, from: number, blockSize: number): number {
  for (let off = from + 1; off + RECORD_HEADER <= buf.length; off++) {
    if (checkRecord(buf, off, buf.length, blockSize).ok) return off;
  }
  return -1;
}
