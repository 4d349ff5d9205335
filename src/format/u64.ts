/**
 * 64-bit little-endian integers as JS numbers. Values are block numbers and
 * sequence numbers, always below 2^53, so a number is exact and avoids BigInt
 * allocation on the hot path.
 */
const TWO32 = 0x100000000;

export function writeU64(buf: Uint8Array, off: number, value: number): void {
  const lo = value % TWO32;
  const hi = (value - lo) / TWO32;
  buf[off] = lo;
  buf[off + 1] = lo >>> 8;
  buf[off + 2] = lo >>> 16;
  buf[off + 3] = lo >>> 24;
  buf[off + 4] = hi;
  buf[off + 5] = hi >>> 8;
  buf[off + 6] = hi >>> 16;
  buf[off + 7] = hi >>> 24;
}

export function readU64(buf: Uint8Array, off: number): number {
  const lo = readU32(buf, off);
  const hi = readU32(buf, off + 4);
  return hi * TWO32 + lo;
}

export function writeU32(buf: Uint8Array, off: number, value: number): void {
  buf[off] = value;
  buf[off + 1] = value >>> 8;
  buf[off + 2] = value >>> 16;
  buf[off + 3] = value >>> 24;
}

export function readU32(buf: Uint8Array, off: number): number {
  return ((buf[off] as number) | ((buf[off + 1] as number) << 8) | ((buf[off + 2] as number) << 16)) + (buf[off + 3] as number) * 0x1000000;
}

export function writeU16(buf: Uint8Array, off: number, value: number): void {
  buf[off] = value;
  buf[off + 1] = value >>> 8;
}

export function readU16(buf: Uint8Array, off: number): number {
  return (buf[off] as number) | ((buf[off + 1] as number) << 8);
}
