/**
 * Encryption at rest for one volume: AES-256-GCM over record payloads, with
 * Node's crypto only. The writer seals each block version once (store/writer.ts);
 * its WAL record and its chunk record carry the same sealed bytes. docs/FORMAT.md
 * "Encryption" is the specification.
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
 *   0  u8      domain (1 = block record; 2 is reserved, see below)
 *   1  3 bytes the volume id's first 3 bytes (the key is per volume already; this
 *              keeps a nonce unique even if a data key ever were not)
 *   4  u64 BE  the record's seq
 * A seq is given to one write only and never reused in a volume, so one seq is
 * sealed once: the writer seals the version when it logs it, and the chunk record
 * reuses the WAL record's sealed payload byte for byte (flags included), so the
 * flusher never seals. The engine therefore uses one domain (DOMAIN_RECORD); the
 * byte stays in the nonce and AAD so another kind of sealed object could get its
 * own nonce space later. A record rewritten with the same seq (compaction) must
 * keep its sealed bytes as they are, or be sealed under a new key (rekey). Why
 * seq never repeats across crashes: docs/FORMAT.md.
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
import { createCipheriv, createDecipheriv, createHmac, createSecretKey, hkdfSync, randomBytes, scrypt, timingSafeEqual, type KeyObject } from 'node:crypto';
import { VbfsError } from '../errors';
import type { VolumeEncryption } from '../types';
import { CIPHER, ENCRYPTION_VERSION, checkEncryptionMeta, checkScrypt, type ScryptParams } from '../format/encryption-meta';
import { KEY_BYTES, passphraseOf, rawKeyOf, type KeyMaterial } from './key-source';

export { CIPHER, ENCRYPTION_VERSION, checkEncryptionMeta, checkScrypt, type ScryptParams } from '../format/encryption-meta';
export const TAG_BYTES = 16;
export const NONCE_BYTES = 12;
export const AAD_BYTES = 37;
/** Bytes a sealed payload adds to its plaintext. */
export const SEAL_OVERHEAD = TAG_BYTES;

export const DOMAIN_WAL = 1;
export const DOMAIN_CHUNK = 2;
export type RecordDomain = typeof DOMAIN_WAL | typeof DOMAIN_CHUNK;
/** The one domain the engine seals block records in (WAL and chunk share the sealed bytes). */
export const DOMAIN_RECORD: RecordDomain = DOMAIN_WAL;

/**
 * Test hook: called with (nonce, aad, plaintext) before every seal, so a test can
 * check that no nonce is ever sealed twice with other AAD or plaintext. Null (no
 * cost) unless a test sets it; the arguments are only valid during the call.
 */
export const sealHook: { fn: ((nonce: Buffer, aad: Buffer, plaintext: Uint8Array) => void) | null } = { fn: null };

/** About 0.3 s and 128 MiB on a current CPU: the cost of one open, and of each guess. */
export const DEFAULT_SCRYPT: ScryptParams = { N: 2 ** 17, r: 8, p: 1 };
const SALT_BYTES = 16;

/** The `encryption` object of volume.json (declared on the ground floor, types.ts, beside VolumeInfo). */
export type EncryptionMeta = VolumeEncryption;

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
  /** Scratch nonce and AAD of seal/open: filled and consumed synchronously, no allocation per record. */
  private readonly n = Buffer.alloc(NONCE_BYTES);
  private readonly a = Buffer.alloc(AAD_BYTES);

  private constructor(
    /**
     * A KeyObject, not a Buffer: createCipheriv then skips preparing the key on each
     * call (a 4 KiB seal, A/B interleaved here: 11-13 vs 14 µs CPU on the loaded
     * machine), and the key bytes stay out of the JS heap.
     */
    private readonly dataKey: KeyObject,
    private readonly volumeId: Buffer,
  ) {
    this.idPrefix = volumeId.subarray(0, 3);
  }

  /**
   * The same cipher in another thread (cipher-pool.ts): the data key travels as a
   * KeyObject (cloned by postMessage, never as bytes in a message), the id as hex.
   */
  forWorker(): { dataKey: KeyObject; volumeId: string } {
    return { dataKey: this.dataKey, volumeId: this.volumeId.toString('hex') };
  }

  /** The receiving side of forWorker(). */
  static fromWorker(w: { dataKey: KeyObject; volumeId: string }): VolumeCipher {
    return new VolumeCipher(w.dataKey, volumeIdBytes(w.volumeId));
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
    return Buffer.from(this.nonceInto(Buffer.alloc(NONCE_BYTES), domain, seq));
  }

  aad(domain: RecordDomain, h: RecordHeader): Buffer {
    return Buffer.from(this.aadInto(Buffer.alloc(AAD_BYTES), domain, h));
  }

  /** A pure function of (volume, domain, seq): nothing else may ever go into a nonce. */
  private nonceInto(n: Buffer, domain: RecordDomain, seq: number): Buffer {
    checkU64(seq, 'seq');
    n[0] = domain;
    this.idPrefix.copy(n, 1);
    writeU64BE(n, 4, seq);
    return n;
  }

  private aadInto(a: Buffer, domain: RecordDomain, h: RecordHeader): Buffer {
    checkU64(h.block, 'block');
    checkU64(h.seq, 'seq');
    if (!Number.isInteger(h.flags) || h.flags < 0 || h.flags > 0xffffffff) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid record flags ${h.flags}`);
    a[0] = domain;
    this.volumeId.copy(a, 1);
    writeU64BE(a, 17, h.block);
    writeU64BE(a, 25, h.seq);
    a.writeUInt32BE(h.flags, 33);
    return a;
  }

  /**
   * seal() into dst[at ...): ciphertext || tag, plaintext.length + 16 bytes; returns
   * that length. The writer seals into its buffer's slot, so no sealed buffer per
   * block outlives the call.
   */
  sealInto(domain: RecordDomain, h: RecordHeader, plaintext: Uint8Array, dst: Buffer, at: number, announced = false): number {
    const nonce = this.nonceInto(this.n, domain, h.seq);
    const aad = this.aadInto(this.a, domain, h);
    if (!announced) sealHook.fn?.(nonce, aad, plaintext);
    const c = createCipheriv(CIPHER, this.dataKey, nonce, { authTagLength: TAG_BYTES });
    c.setAAD(aad);
    let n = at + c.update(plaintext).copy(dst, at);
    n += c.final().copy(dst, n);
    n += c.getAuthTag().copy(dst, n);
    return n - at;
  }

  /**
   * A seal that another thread will do (cipher-pool.ts, where sealHook is not
   * set): the hook sees it here, once, as if it were sealed inline. Also checks
   * the header, so a bad one fails here rather than in the worker. An inline
   * retry of the same seal passes `announced` to sealInto.
   */
  announceSeal(domain: RecordDomain, h: RecordHeader, plaintext: Uint8Array): void {
    const nonce = this.nonceInto(this.n, domain, h.seq);
    const aad = this.aadInto(this.a, domain, h);
    sealHook.fn?.(nonce, aad, plaintext);
  }

  /** Encrypt one record payload (already compressed): ciphertext || tag. */
  seal(domain: RecordDomain, h: RecordHeader, plaintext: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(plaintext.length + TAG_BYTES);
    this.sealInto(domain, h, plaintext, out, 0);
    return out;
  }

  /** Decrypt and authenticate one sealed payload; VBFS_CORRUPT if it fails (a flipped bit, another block, seq or volume). */
  open(domain: RecordDomain, h: RecordHeader, sealed: Uint8Array): Buffer {
    // Message and details only when it fails: this runs once per 4 KiB read.
    const corrupt = (why: string): VbfsError =>
      new VbfsError('VBFS_CORRUPT', `sealed record of block ${h.block} (seq ${h.seq})${why}`, {
        block: h.block,
        seq: h.seq,
        domain,
      });
    if (sealed.length < TAG_BYTES) throw corrupt(`: sealed payload of ${sealed.length} bytes is shorter than its tag`);
    const body = sealed.subarray(0, sealed.length - TAG_BYTES);
    const d = createDecipheriv(CIPHER, this.dataKey, this.nonceInto(this.n, domain, h.seq), { authTagLength: TAG_BYTES });
    d.setAAD(this.aadInto(this.a, domain, h));
    d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    // update()'s own buffer is the result: GCM is a stream mode, final() adds no
    // bytes (it only checks the tag), so no second buffer and copy per record (a
    // 1 MiB run of 4 KiB records: about 2.6 instead of 3.4 ms of CPU, interleaved A/B).
    let out: Buffer = Buffer.alloc(0);
    try {
      out = d.update(body);
      if (d.final().length !== 0) throw new Error('unexpected trailing bytes');
    } catch {
      out.fill(0); // unauthenticated plaintext never leaves
      throw corrupt(' fails authentication (damaged, or moved from another block, version or volume)');
    }
    return out;
  }
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

function dataKeyOf(master: Buffer, id: Buffer): KeyObject {
  const raw = Buffer.from(hkdfSync('sha256', master, id, DATA_KEY_INFO, KEY_BYTES));
  try {
    return createSecretKey(raw);
  } finally {
    raw.fill(0);
  }
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

/** A safe integer as u64 big endian, without a BigInt per call. */
function writeU64BE(b: Buffer, off: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / 2 ** 32), off);
  b.writeUInt32BE(v >>> 0, off + 4);
}

function checkU64(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid ${what} ${n}: a non-negative safe integer`);
}
