import { VbfsError, isVbfsError } from '../errors';
import { isCompressed, uncompressBlock } from '../chunk/codec';
import { DOMAIN_RECORD, type VolumeCipher } from '../crypto/volume-cipher';
import { FLAG_SEALED, type RecordHeader } from '../format/block-record';

/** Where a record lies, for error messages: a chunk key or WAL path, and the record's offset in it. */
export interface RecordPlace {
  path: string;
  offset: number;
  /** How messages name the file (default: path), e.g. `chunk object <key>`. */
  label?: string;
}

/**
 * The raw block a checksummed record payload holds: opened (decrypted and
 * authenticated) when sealed, then uncompressed when LZ4 (the reverse of the
 * writer's compress, then seal). The one place readers, recovery and fsck turn
 * payloads into blocks, so the rules are the same everywhere:
 *
 *  - an encrypted volume takes sealed records only, a plain one unsealed only: a
 *    plaintext record slipped into an encrypted volume (CRC fixed up) is damage,
 *    not data;
 *  - a payload that fails authentication, does not decompress, or is not exactly
 *    one block is VBFS_CORRUPT, and no byte of it is returned.
 *
 * Returns the bytes as `data[base, base + blockSize)`: a raw unsealed payload is
 * used in place (no copy); otherwise `data` is a new buffer and base is 0.
 */
export function openRecordPayload(
  cipher: VolumeCipher | null,
  h: RecordHeader,
  buf: Buffer,
  payloadOff: number,
  blockSize: number,
  place: RecordPlace,
): { data: Buffer; base: number } {
  const what = `${place.label ?? place.path}: record at offset ${place.offset}`;
  const corrupt = (why: string, cause?: unknown): VbfsError =>
    new VbfsError('VBFS_CORRUPT', `${what} ${why}`, { path: place.path, offset: place.offset, block: h.block }, cause === undefined ? undefined : { cause });
  const sealed = (h.flags & FLAG_SEALED) !== 0;
  if (sealed !== (cipher !== null)) throw corrupt(sealed ? 'is sealed, but the volume is not encrypted' : 'is not sealed, but the volume is encrypted');
  let data: Buffer = buf;
  let base = payloadOff;
  let len = h.len;
  if (cipher) {
    try {
      data = cipher.open(DOMAIN_RECORD, h, buf.subarray(payloadOff, payloadOff + h.len));
    } catch (err) {
      throw isVbfsError(err, 'VBFS_CORRUPT')
        ? corrupt(`(block ${h.block}, seq ${h.seq}) fails authentication: damaged, or moved from another block or volume`)
        : err;
    }
    base = 0;
    len = data.length;
  }
  if (isCompressed(h.flags)) {
    try {
      data = uncompressBlock(data.subarray(base, base + len));
    } catch (err) {
      throw corrupt(`does not decompress: ${(err as Error)?.message ?? String(err)}`, err);
    }
    base = 0;
    len = data.length;
  }
  if (len !== blockSize) throw corrupt(`holds ${len} bytes, not one block`);
  return { data, base };
}

/**
 * Check a zero record (a trim, or a full-block zero write) as openRecordPayload
 * checks a block record: sealed exactly when the volume is encrypted, and when
 * sealed, its tag must authenticate the header (block, seq, flags). So a zero
 * record injected into an encrypted volume's WAL, or one moved to another block,
 * is VBFS_CORRUPT rather than a silent trim.
 */
export function checkZeroRecord(cipher: VolumeCipher | null, h: RecordHeader, buf: Buffer, payloadOff: number, place: RecordPlace): void {
  const what = `${place.label ?? place.path}: zero record at offset ${place.offset}`;
  const corrupt = (why: string): VbfsError => new VbfsError('VBFS_CORRUPT', `${what} ${why}`, { path: place.path, offset: place.offset, block: h.block });
  const sealed = (h.flags & FLAG_SEALED) !== 0;
  if (sealed !== (cipher !== null)) throw corrupt(sealed ? 'is sealed, but the volume is not encrypted' : 'is not sealed, but the volume is encrypted');
  if (!cipher) return;
  try {
    cipher.open(DOMAIN_RECORD, h, buf.subarray(payloadOff, payloadOff + h.len));
  } catch (err) {
    if (isVbfsError(err, 'VBFS_CORRUPT'))
      throw corrupt(`(block ${h.block}, seq ${h.seq}) fails authentication: damaged, forged, or moved from another block or volume`);
    throw err;
  }
}
