import { DIRECT_ALIGN, type FileHandle } from './file-io';
import { isVbfsError } from '../errors';

/**
 * Bytes a buffer for readDirect() needs beyond the range it reads: the range widened
 * to DIRECT_ALIGN at both ends, plus an aligned address somewhere in its first
 * DIRECT_ALIGN bytes.
 */
export const DIRECT_SLACK = 3 * DIRECT_ALIGN;

/** Node's allocator hands out 16-byte aligned memory: only these offsets can be aligned. */
const PROBE_STEP = 16;
/** Offsets tried first: glibc's mmap'd blocks start 16 bytes into a page, so page-aligned is 16 before a page end. */
const LIKELY = [DIRECT_ALIGN - PROBE_STEP, 0];

/** What probing a buffer found: the offset of an aligned address, or why there is none. */
export type Alignment = number | 'refused' | 'unknown';

/**
 * Where in a buffer O_DIRECT reads work. Node does not expose a buffer's address,
 * so it is probed once per buffer: a DIRECT_ALIGN read at position 0 of a file into
 * the buffer at offset 0, 16, 32 ... until the kernel accepts one (a misaligned
 * address fails with EINVAL before any I/O). Buffers are reused (run-buffers.ts),
 * so the probe is paid once per buffer, usually in one or two reads. An accepted
 * read proves the address meets whatever alignment the device needs, so nothing
 * is assumed about it. 'refused': no offset works (the filesystem refuses direct
 * reads); 'unknown': the file was empty, the kernel checked nothing.
 */
export class DirectAlignment {
  /** Per ArrayBuffer: the offset from its start that is aligned (modulo DIRECT_ALIGN). */
  private readonly known = new WeakMap<ArrayBufferLike, number>();
  private last: number | undefined;
  probes = 0;

  async of(fh: FileHandle, buf: Buffer): Promise<Alignment> {
    const r = this.known.get(buf.buffer);
    if (r !== undefined) return mod(r - buf.byteOffset);
    if (buf.length < 2 * DIRECT_ALIGN) return 'unknown';
    // The residue that worked last first: buffers from the same allocator path share it.
    const order = this.last !== undefined ? [this.last, ...LIKELY.filter((r) => r !== this.last)] : [...LIKELY];
    for (let k = PROBE_STEP; k < DIRECT_ALIGN - PROBE_STEP; k += PROBE_STEP) if (k !== this.last) order.push(k);
    for (const residue of order) {
      const at = mod(residue - buf.byteOffset);
      let n: number;
      this.probes++;
      try {
        n = await fh.read(buf.subarray(at, at + DIRECT_ALIGN), 0);
      } catch (err) {
        if (isVbfsError(err) && err.details['errno'] === 'EINVAL') continue;
        throw err;
      }
      if (n === 0) return 'unknown';
      this.known.set(buf.buffer, residue);
      this.last = residue;
      return at;
    }
    return 'refused';
  }
}

function mod(x: number): number {
  return ((x % DIRECT_ALIGN) + DIRECT_ALIGN) % DIRECT_ALIGN;
}

/**
 * Read [position, position + length) of a file opened with O_DIRECT into `buf`,
 * whose offset `at` is aligned (DirectAlignment): the read is widened to DIRECT_ALIGN
 * boundaries, and the view of the bytes asked for is returned, short if the file
 * ends first (never padded: the caller checks what it got). Null if `buf` is too
 * small for the widened read.
 */
export async function readDirect(fh: FileHandle, buf: Buffer, at: number, position: number, length: number): Promise<Buffer | null> {
  const a0 = position - (position % DIRECT_ALIGN);
  const a1 = Math.ceil((position + length) / DIRECT_ALIGN) * DIRECT_ALIGN;
  if (at + (a1 - a0) > buf.length) return null;
  const n = await fh.read(buf.subarray(at, at + (a1 - a0)), a0);
  const head = position - a0;
  return buf.subarray(at + head, at + head + Math.max(0, Math.min(length, n - head)));
}
