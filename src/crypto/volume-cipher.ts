/**
 * Encryption at rest for one volume: AES-256-GCM over record payloads, with
 * Node's crypto only. Standalone for now (not yet wired into the WAL and chunks);
 * docs/FORMAT.md "Encryption (planned format)" is the specification.
 *
 * Keys. The user's key is 32 raw bytes, or a passphrase stretched with scrypt
 * (parameters and a random salt stored in volume.json). From that master key,
 * HKDF-SHA256 with the volume id as salt derives two independent keys: the data
 * key (AES-256-GCM) and the check key. volume.json keeps
 * HMAC-SHA256(check key, "vbfs key check v1" || volume id), so a wrong key is
 * refused at open (VBFS_BAD_KEY) instead of turning into garbage or a storm of
 * authentication failures, and the value says nothing about the data key. Because
 * the data key depends on the volume id, two volumes under the same key never
 * share a (key, nonce) pair.
 *
 * Nonce (12 bytes), never repeated under one data key:
 *   0  u8      domain (1 = WAL record, 2 = chunk record)
 *   1  3 bytes the volume id's first 3 bytes (the key is per volume already; this
 *              keeps a nonce unique even if a data key ever were not)
 *   4  u64 BE  the record's seq
 * A seq is given to one write only and never reused in a volume, so one (domain,
 * seq) is sealed once. The same seq is sealed once as a WAL record and may be
 * sealed again in a chunk: the domain byte keeps those nonces apart, since flags
 * (the compression bit) may differ between the two. A record rewritten with the
 * same seq (compaction) must keep its sealed bytes as they are, or be sealed
 * under a new key (rekey). Why seq never repeats across crashes: docs/FORMAT.md.
 *
 * Additional authenticated data (37 bytes), so a record cannot be moved to another
 * block, version or volume, or have its flags changed, without detection:
 *   0  u8      domain
 *   1  16B     volume id
 *   17 u64 BE  block number
 *   25 u64 BE  seq
 *   33 u32 BE  record flags (e.g. LZ4: compression happens before encryption)
 *
 * Sealed payload = ciphertext (same length as the plaintext) || 16-byte tag.
 * A payload that fails authentication is VBFS_CORRUPT, never returned bytes.
 * No error or log message here contains key material.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { VbfsError } from '../errors';
import { KEY_BYTES, passphraseOf, rawKeyOf, type KeyMaterial } from './key-source';

export const CIPHER = 'aes-256-gcm';
export const ENCRYPTION_VERSION = 1;
export const TAG_BYTES = 16;
export const NONCE_BYTES = 12;
export const AAD_BYTES = 37;
/** Bytes a sealed payload adds to its plaintext. */
export const SEAL_OVERHEAD = TAG_BYTES;

export const DOMAIN_WAL = 1;
export const DOMAIN_CHUNK = 2;
export type RecordDomain = typeof DOMAIN_WAL | typeof DOMAIN_CHUNK;

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** About 0.3 s and 128 MiB on a current CPU: the cost of one open, and of each guess. */
export const DEFAULT_SCRYPT: ScryptParams = { N: 2 ** 17, r: 8, p: 1 };
const SALT_BYTES = 16;

/** The `encryption` object of volume.json. */
export interface EncryptionMeta {
  version: number; // ENCRYPTION_VERSION
  cipher: typeof CIPHER;
  /** 'none': the key file held the 32-byte key itself; 'scrypt': a passphrase. */
  kdf: 'none' | 'scrypt';
  scrypt?: ScryptParams & { salt: string /* hex */ };
  /** hex HMAC-SHA256, see the header. */
  keyCheck: string;
}

/** The record header fields the AAD binds. */
export interface RecordHeader {
  block: number;
  seq: number;
  flags: number;
}

const KEY_CHECK_LABEL = Buffer.from('vbfs key check v1');
const DATA_KEY_INFO = 'vbfs aes-256-gcm data key v1';
const CHECK_KEY_INFO = 'vbfs key check key v1';

export class VolumeCipher {
  private readonly idPrefix: Buffer;

  private constructor(
    private readonly dataKey: Buffer,
    private readonly volumeId: Buffer,
  ) {
    this.idPrefix = volumeId.subarray(0, 3);
  }

  /**
   * At volume create: derive the keys from `material` (raw key or passphrase) and
   * return the volume.json entry with fresh salt and key check value.
   */
  static async create(material: KeyMaterial, volumeId: string, opts: { scrypt?: ScryptParams } = {}): Promise<{ meta: EncryptionMeta; cipher: VolumeCipher }> {
    const id = volumeIdBytes(volumeId);
    const raw = rawKeyOf(material);
    let master: Buffer;
    let meta: Omit<EncryptionMeta, 'keyCheck'>;
    if (raw) {
      master = raw;
      meta = { version: ENCRYPTION_VERSION, cipher: CIPHER, kdf: 'none' };
    } else {
      const params = checkScrypt(opts.scrypt ?? DEFAULT_SCRYPT, 'scrypt parameters');
      const salt = randomBytes(SALT_BYTES);
      master = await stretch(material, params, salt);
      meta = { version: ENCRYPTION_VERSION, cipher: CIPHER, kdf: 'scrypt', scrypt: { ...params, salt: salt.toString('hex') } };
    }
    try {
      const keyCheck = keyCheckOf(master, id).toString('hex');
      return { meta: { ...meta, keyCheck }, cipher: new VolumeCipher(dataKeyOf(master, id), id) };
    } finally {
      master.fill(0);
    }
  }

  /** At open: VBFS_BAD_KEY unless `material` is the volume's key. `meta` as read from volume.json. */
  static async open(metaIn: unknown, material: KeyMaterial, volumeId: string, where = 'volume.json'): Promise<VolumeCipher> {
    const meta = checkEncryptionMeta(metaIn, where);
    const id = volumeIdBytes(volumeId);
    let master: Buffer;
    if (meta.kdf === 'none') {
      const raw = rawKeyOf(material);
      if (!raw)
        throw new VbfsError('VBFS_BAD_KEY', `volume ${volumeId} was created with a raw 32-byte key, and ${material.source} does not hold one`, {
          volume: volumeId,
        });
      master = raw;
    } else {
      const s = meta.scrypt!;
      master = await stretch(material, s, Buffer.from(s.salt, 'hex'));
    }
    try {
      const expected = Buffer.from(meta.keyCheck, 'hex');
      if (!timingSafeEqual(keyCheckOf(master, id), expected)) {
        throw new VbfsError('VBFS_BAD_KEY', `wrong key for volume ${volumeId}: ${material.source} does not match its key check value`, { volume: volumeId });
      }
      return new VolumeCipher(dataKeyOf(master, id), id);
    } finally {
      master.fill(0);
    }
  }

  /** See the header: domain | 3 bytes of the volume id | seq. */
  nonce(domain: RecordDomain, seq: number): Buffer {
    checkU64(seq, 'seq');
    const n = Buffer.alloc(NONCE_BYTES);
    n[0] = domain;
    this.idPrefix.copy(n, 1);
    n.writeBigUInt64BE(BigInt(seq), 4);
    return n;
  }

  aad(domain: RecordDomain, h: RecordHeader): Buffer {
    checkU64(h.block, 'block');
    checkU64(h.seq, 'seq');
    if (!Number.isInteger(h.flags) || h.flags < 0 || h.flags > 0xffffffff) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid record flags ${h.flags}`);
    const a = Buffer.alloc(AAD_BYTES);
    a[0] = domain;
    this.volumeId.copy(a, 1);
    a.writeBigUInt64BE(BigInt(h.block), 17);
    a.writeBigUInt64BE(BigInt(h.seq), 25);
    a.writeUInt32BE(h.flags, 33);
    return a;
  }

  /** Encrypt one record payload (already compressed): ciphertext || tag. */
  seal(domain: RecordDomain, h: RecordHeader, plaintext: Uint8Array): Buffer {
    const c = createCipheriv(CIPHER, this.dataKey, this.nonce(domain, h.seq), { authTagLength: TAG_BYTES });
    c.setAAD(this.aad(domain, h));
    const out = Buffer.allocUnsafe(plaintext.length + TAG_BYTES);
    let n = c.update(plaintext).copy(out, 0);
    n += c.final().copy(out, n);
    c.getAuthTag().copy(out, n);
    return out;
  }

  /** Decrypt and authenticate one sealed payload; VBFS_CORRUPT if it fails (a flipped bit, another block, seq or volume). */
  open(domain: RecordDomain, h: RecordHeader, sealed: Uint8Array): Buffer {
    const what = `${domain === DOMAIN_WAL ? 'WAL' : 'chunk'} record of block ${h.block} (seq ${h.seq})`;
    const details = { block: h.block, seq: h.seq, domain };
    if (sealed.length < TAG_BYTES) throw new VbfsError('VBFS_CORRUPT', `${what}: sealed payload of ${sealed.length} bytes is shorter than its tag`, details);
    const body = sealed.subarray(0, sealed.length - TAG_BYTES);
    const d = createDecipheriv(CIPHER, this.dataKey, this.nonce(domain, h.seq), { authTagLength: TAG_BYTES });
    d.setAAD(this.aad(domain, h));
    d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const out = Buffer.allocUnsafe(body.length);
    try {
      const n = d.update(body).copy(out, 0);
      d.final().copy(out, n);
    } catch {
      out.fill(0); // unauthenticated plaintext never leaves
      throw new VbfsError('VBFS_CORRUPT', `${what} fails authentication (damaged, or moved from another block, version or volume)`, details);
    }
    return out;
  }
}

/** Validate volume.json's `encryption` object (bounds scrypt, so a crafted file cannot demand gigabytes). */
export function checkEncryptionMeta(v: unknown, where: string): EncryptionMeta {
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

function checkScrypt(p: ScryptParams, what: string): ScryptParams {
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

/** scrypt on the thread pool (it takes a good fraction of a second on purpose). */
async function stretch(material: KeyMaterial, p: ScryptParams, salt: Buffer): Promise<Buffer> {
  const pass = passphraseOf(material);
  try {
    return await new Promise<Buffer>((resolve, reject) =>
      scrypt(pass, salt, KEY_BYTES, { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r + 1024 * 1024 }, (err, key) =>
        err ? reject(new VbfsError('VBFS_IO', `scrypt failed (${(err as NodeJS.ErrnoException).code ?? 'error'})`)) : resolve(key),
      ),
    );
  } finally {
    pass.fill(0);
  }
}

function dataKeyOf(master: Buffer, id: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', master, id, DATA_KEY_INFO, KEY_BYTES));
}

function keyCheckOf(master: Buffer, id: Buffer): Buffer {
  const k = Buffer.from(hkdfSync('sha256', master, id, CHECK_KEY_INFO, KEY_BYTES));
  try {
    return createHmac('sha256', k).update(KEY_CHECK_LABEL).update(id).digest();
  } finally {
    k.fill(0);
  }
}

function volumeIdBytes(id: string): Buffer {
  if (!/^[0-9a-f]{32}$/.test(id)) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid volume id ${JSON.stringify(id)}: 32 hex digits`);
  return Buffer.from(id, 'hex');
}

function checkU64(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid ${what} ${n}: a non-negative safe integer`);
}
