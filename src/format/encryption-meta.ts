import { VbfsError } from '../errors';
import type { VolumeEncryption } from '../types';

/**
 * The `encryption` object of volume.json, checked for shape and bounds only (pure:
 * crypto/volume-cipher.ts derives keys and checks the key check value). Bounding
 * scrypt here means a crafted volume.json cannot demand gigabytes at open.
 * docs/FORMAT.md "Encryption" describes every field.
 */
export const CIPHER = 'aes-256-gcm';
export const ENCRYPTION_VERSION = 1;

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** Validate volume.json's `encryption` object (bounds scrypt, so a crafted file cannot demand gigabytes). */
export function checkEncryptionMeta(v: unknown, where: string): VolumeEncryption {
  const bad = (why: string): VbfsError => new VbfsError('VBFS_CORRUPT', `${where}: encryption settings ${why}`, { path: where });
  if (typeof v !== 'object' || v === null) throw bad('are missing or not an object');
  const m = v as Record<string, unknown>;
  if (m['version'] !== ENCRYPTION_VERSION || m['cipher'] !== CIPHER) {
    throw new VbfsError(
      'VBFS_UNSUPPORTED_VERSION',
      `${where}: encryption ${String(m['cipher'])} version ${String(m['version'])} is not supported (this build knows ${CIPHER} version ${ENCRYPTION_VERSION})`,
      { path: where },
    );
  }
  if (typeof m['keyCheck'] !== 'string' || !/^[0-9a-f]{64}$/.test(m['keyCheck'])) throw bad('have no valid key check value');
  if (m['kdf'] === 'none') return { version: ENCRYPTION_VERSION, cipher: CIPHER, kdf: 'none', keyCheck: m['keyCheck'] };
  if (m['kdf'] !== 'scrypt') throw bad(`name an unknown kdf ${JSON.stringify(m['kdf'])}`);
  const s = m['scrypt'] as Record<string, unknown> | undefined;
  if (typeof s !== 'object' || s === null) throw bad('lack the scrypt parameters');
  if (typeof s['salt'] !== 'string' || !/^([0-9a-f]{2}){16,64}$/.test(s['salt'])) throw bad('have no valid scrypt salt');
  let params: ScryptParams;
  try {
    params = checkScrypt({ N: s['N'] as number, r: s['r'] as number, p: s['p'] as number }, 'scrypt parameters');
  } catch (err) {
    throw bad((err as Error).message);
  }
  return { version: ENCRYPTION_VERSION, cipher: CIPHER, kdf: 'scrypt', scrypt: { ...params, salt: s['salt'] }, keyCheck: m['keyCheck'] };
}

export function checkScrypt(p: ScryptParams, what: string): ScryptParams {
  const { N, r, p: par } = p;
  const pow2 = Number.isInteger(N) && N >= 2 ** 10 && N <= 2 ** 20 && (N & (N - 1)) === 0;
  if (!pow2 || !Number.isInteger(r) || r < 1 || r > 32 || !Number.isInteger(par) || par < 1 || par > 16 || 128 * N * r > 1024 ** 3) {
    throw new VbfsError(
      'VBFS_INVALID_ARGUMENT',
      `${what} out of range: N a power of two from 2^10 to 2^20, r 1..32, p 1..16, 128*N*r at most 1 GiB (got N=${N}, r=${r}, p=${par})`,
    );
  }
  return { N, r, p: par };
}
