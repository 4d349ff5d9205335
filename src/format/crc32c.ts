/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slice-by-8.
 * Chosen over CRC-32/IEEE because it is the checksum storage systems use (iSCSI,
 * ext4 metadata, etcd) and hardware implements it, so a native drop-in stays
 * format-compatible.
 */
const POLY = 0x82f63b78;
const T = new Int32Array(8 * 256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[n] = c;
}
for (let n = 0; n < 256; n++) {
  let c = T[n] as number;
  for (let s = 1; s < 8; s++) {
    c = (T[c & 0xff] as number) ^ (c >>> 8);
    T[s * 256 + n] = c;
  }
}

/**
 * An accelerated implementation handed in from outside (os/native-crc32c.ts loads
 * the hardware one): this module stays pure, without environment or module
 * loading. Same results as the table version, which is the fallback and the
 * reference the tests compare an accelerated one with.
 */
export type Crc32cAccelerator = (input: Buffer, initialState?: number) => number;
let native: Crc32cAccelerator | null = null;

/**
 * Use `fn` for inputs of NATIVE_MIN bytes and more (null: the table version only).
 * Refused (false, nothing changed) unless it gives the standard check value.
 */
export function setCrc32cAccelerator(fn: Crc32cAccelerator | null): boolean {
  if (fn !== null && fn(Buffer.from('123456789')) !== 0xe3069283) return false;
  native = fn;
  return true;
}

/** Which implementation crc32c() uses for large inputs. */
export function crc32cImplementation(): 'native' | 'js' {
  return native !== null ? 'native' : 'js';
}

/** Below this length the call overhead of the native version outweighs its speed. */
const NATIVE_MIN = 256;

/** Continue a CRC over buf[start, end). Pass the previous result as `crc` (0 to start). */
export function crc32c(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  if (native !== null && end - start >= NATIVE_MIN) {
    return native(Buffer.from(buf.buffer, buf.byteOffset + start, end - start), crc) >>> 0;
  }
  return crc32cJs(buf, crc, start, end);
}

/** The portable table-driven implementation (slice-by-8). */
export function crc32cJs(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  let c = ~crc;
  let i = start;
  const t = T;
  for (; i + 8 <= end; i += 8) {
    c ^= (buf[i] as number) | ((buf[i + 1] as number) << 8) | ((buf[i + 2] as number) << 16) | ((buf[i + 3] as number) << 24);
    c =
      (t[1792 + (c & 0xff)] as number) ^
      (t[1536 + ((c >>> 8) & 0xff)] as number) ^
      (t[1280 + ((c >>> 16) & 0xff)] as number) ^
      (t[1024 + (c >>> 24)] as number) ^
      (t[768 + (buf[i + 4] as number)] as number) ^
      (t[512 + (buf[i + 5] as number)] as number) ^
      (t[256 + (buf[i + 6] as number)] as number) ^
      (t[buf[i + 7] as number] as number);
  }
  for (; i < end; i++) c = (t[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return ~c >>> 0;
}
