import type { FileHandle, FileIO, OpenMode } from '../../src/io/file-io';
import { PassThroughFileIO } from '../../src/io/pass-through-file-io';
import { checkRecord, isSyncMarker } from '../../src/format/block-record';
import { crc32c } from '../../src/format/crc32c';
import { checkFrame } from '../../src/format/frame';
import { decodeReservation } from '../../src/format/map-records';
import { CHUNK_MAGIC, SEGMENT_HEADER, WAL_MAGIC } from '../../src/format/segment-header';

/**
 * Records every block record the file layer is ever handed, before the (simulated)
 * disk decides what survives: WAL records (domain 1) and chunk records (domain 2),
 * including writes a power cut drops or tears. Encryption derives a record's nonce
 * from (domain, seq), so one (domain, seq) written with two contents (block, flags
 * or payload) would be a repeated nonce: `conflicts` lists each one.
 *
 * It also follows the seq reservations ('Q' frames) of map log writes, counting one
 * as durable once an fdatasync of its file has returned, and lists every WAL record
 * written with a seq above the highest durable reservation at that moment
 * (`unreserved`): the writer must never hand out such a seq.
 *
 * One recorder wraps the SimFS of each boot in turn (wrap()), so what it saw spans
 * every crash and reopen of a run.
 */
export class SeqRecorder {
  /** `${domain}:${seq}` -> what was first written under it, and when. */
  private readonly seen = new Map<string, { what: string; when: string }>();
  readonly conflicts: string[] = [];
  readonly unreserved: string[] = [];
  /** Writes to a WAL segment or chunk object that did not parse as whole records (a bug in this helper or the engine). */
  readonly unparsed: string[] = [];
  /** Highest reservation covered by a completed fdatasync. */
  durableReserved = 0;
  walRecords = 0;
  chunkRecords = 0;
  /** Labels the records written from now on (e.g. "cycle 3"), for the failure message. */
  phase = '';

  constructor(private readonly blockSize: number) {}

  wrap(inner: FileIO): FileIO {
    return new RecordingFileIO(inner, this);
  }

  /** A write to `path` at `pos` is about to be handed to the file layer. */
  noteWrite(path: string, buf: Uint8Array, pos: number): number {
    const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    if (path.includes('/wal/') && path.endsWith('.wal')) return this.records(path, b, pos, 1, WAL_MAGIC);
    if (path.includes('/chunks/') && pos === 0 && b.length >= SEGMENT_HEADER && b.toString('latin1', 0, 8) === CHUNK_MAGIC) {
      return this.records(path, b, pos, 2, CHUNK_MAGIC);
    }
    if (path.includes('/map/') && path.endsWith('.log')) return this.reservations(b);
    return 0;
  }

  noteSynced(reserved: number): void {
    if (reserved > this.durableReserved) this.durableReserved = reserved;
  }

  private records(path: string, b: Buffer, pos: number, domain: 1 | 2, magic: string): number {
    let off = 0;
    if (pos === 0 && b.length >= 8 && b.toString('latin1', 0, 8) === magic) off = SEGMENT_HEADER;
    while (off < b.length) {
      const r = checkRecord(b, off, b.length, this.blockSize);
      if (!r.ok) {
        this.unparsed.push(`${path} at ${pos + off}: ${r.reason} (${this.phase})`);
        return 0;
      }
      const h = r.header;
      if (!isSyncMarker(h)) {
        const payload = b.subarray(off + 32, r.end);
        const what = `block ${h.block}, flags ${h.flags}, payload crc ${crc32c(payload).toString(16)}`;
        const key = `${domain}:${h.seq}`;
        const first = this.seen.get(key);
        if (first === undefined) this.seen.set(key, { what, when: this.phase });
        else if (first.what !== what) {
          this.conflicts.push(`${domain === 1 ? 'WAL' : 'chunk'} seq ${h.seq}: ${first.what} (${first.when}), then ${what} (${this.phase}, ${path})`);
        }
        if (domain === 1) {
          this.walRecords++;
          if (h.seq > this.durableReserved) this.unreserved.push(`WAL seq ${h.seq} written with reservation ${this.durableReserved} (${this.phase})`);
        } else this.chunkRecords++;
      }
      off = r.end;
    }
    return 0;
  }

  /** The highest reservation in a map log write (0 if none). */
  private reservations(b: Buffer): number {
    let best = 0;
    for (let off = 0; off < b.length;) {
      const f = checkFrame(b, off);
      if (!f.ok) break;
      const r = decodeReservation(f.payload);
      if (r !== null && r > best) best = r;
      off = f.end;
    }
    return best;
  }
}

class RecordingFileIO extends PassThroughFileIO {
  constructor(
    inner: FileIO,
    private readonly rec: SeqRecorder,
  ) {
    super(inner);
  }

  override async open(path: string, mode: OpenMode): Promise<FileHandle> {
    const fh = await this.inner.open(path, mode);
    const rec = this.rec;
    let pending = 0; // highest reservation written to this handle since its last completed sync
    const note = (buf: Uint8Array, pos: number): void => {
      const r = rec.noteWrite(path, buf, pos);
      if (r > pending) pending = r;
    };
    const synced = (): void => {
      rec.noteSynced(pending);
      pending = 0;
    };
    return {
      path: fh.path,
      write: (buf, pos) => (note(buf, pos), fh.write(buf, pos)),
      writev: (bufs, pos) => (note(Buffer.concat(bufs), pos), fh.writev(bufs, pos)),
      read: (buf, pos) => fh.read(buf, pos),
      datasync: () => fh.datasync().then(synced),
      sync: () => fh.sync().then(synced),
      truncate: (n) => fh.truncate(n),
      size: () => fh.size(),
      close: () => fh.close(),
    };
  }
}
