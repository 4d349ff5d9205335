import { crc32c } from './crc32c';
import { readU32, writeU32 } from './u64';

/**
 * Frames of the map log and the checkpoint:
 *
 *   off size field
 *     0    4 crc32c of bytes [4, 8 + len)
 *     4    4 len (payload length, >= 1)
 *     8  len payload; payload[0] is the frame type (one ASCII letter)
 */
export const FRAME_HEADER = 8;
export const MAX_FRAME = 64 * 1024 * 1024;

export function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER + payload.length);
  writeU32(out, 4, payload.length);
  out.set(payload, FRAME_HEADER);
  writeU32(out, 0, crc32c(out, 0, 4, out.length));
  return out;
}

export type FrameCheck = { ok: true; payload: Buffer; end: number } | { ok: false; reason: 'short' | 'zero' | 'bad-length' | 'bad-crc' };

export function checkFrame(buf: Buffer, off: number): FrameCheck {
  const limit = buf.length;
  if (off + FRAME_HEADER > limit) return { ok: false, reason: isZero(buf, off, limit) ? 'zero' : 'short' };
  const len = readU32(buf, off + 4);
  const crc = readU32(buf, off);
  if (len === 0 && crc === 0) return { ok: false, reason: 'zero' };
  if (len === 0 || len > MAX_FRAME) return { ok: false, reason: 'bad-length' };
  const end = off + FRAME_HEADER + len;
  if (end > limit) return { ok: false, reason: isZero(buf, off, limit) ? 'zero' : 'short' };
  if (crc32c(buf, 0, off + 4, end) !== crc) return { ok: false, reason: 'bad-crc' };
  return { ok: true, payload: buf.subarray(off + FRAME_HEADER, end), end };
}

function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/** True if some well-formed frame starts anywhere in (from, buf.length). Used to tell a torn tail from corruption. */
export function anyFrameAfter(buf: Buffer, from: number): boolean {
  for (let off = from + 1; off + FRAME_HEADER <= buf.length; off++) {
    const c = checkFrame(buf, off);
    if (c.ok) return true;
  }
  return false;
}
