/**
 * The crypto core (src/crypto): key loading, key check value, nonces, and
 * AES-256-GCM seal/open of record payloads with the record header as AAD.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVbfsError, type VbfsErrorCode } from '../src/errors';
import { readKeyMaterial, type KeyMaterial } from '../src/crypto/key-source';
import { DOMAIN_CHUNK, DOMAIN_WAL, NONCE_BYTES, SEAL_OVERHEAD, VolumeCipher, type EncryptionMeta } from '../src/crypto/volume-cipher';

// Small scrypt parameters: the tests check the logic, not the cost.
const FAST = { scrypt: { N: 2 ** 10, r: 8, p: 1 } };
const VOL_A = 'a'.repeat(32);
const VOL_B = 'b'.repeat(32);

function errorText(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, d = 0; e && d < 10; e = (e as { cause?: unknown }).cause, d++) {
    parts.push(String((e as Error).message), String((e as Error).stack), JSON.stringify((e as { details?: unknown }).details ?? {}));
  }
  return parts.join('\n');
}

async function rejectsWith(p: Promise<unknown>, code: VbfsErrorCode): Promise<unknown> {
  let caught: unknown;
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isVbfsError(err), `expected a VbfsError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    caught = err;
    return true;
  });
  return caught;
}

function throwsWith(f: () => unknown, code: VbfsErrorCode): unknown {
  let caught: unknown;
  assert.throws(f, (err: unknown) => {
    assert.ok(isVbfsError(err), `expected a VbfsError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    caught = err;
    return true;
  });
  return caught;
}

const raw = (bytes: Buffer): KeyMaterial => ({ source: 'key file /k', bytes });
const pass = (text: string): KeyMaterial => ({ source: '$VBFS_KEY', bytes: Buffer.from(text) });

describe('crypto core: VolumeCipher and key sources', () => {
  let dir = '';
  before(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vbfs-crypto-'));
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('round trip with a raw key and with a passphrase, reopened from the stored meta', async () => {
    const key = randomBytes(32);
    for (const material of [raw(key), pass('correct horse battery staple')]) {
      const { meta, cipher } = await VolumeCipher.create(material, VOL_A, FAST);
      const stored = JSON.parse(JSON.stringify(meta)) as EncryptionMeta; // as volume.json keeps it
      const again = await VolumeCipher.open(stored, material, VOL_A);
      for (const size of [0, 1, 4096, 128 * 1024]) {
        const data = randomBytes(size);
        const h = { block: 123456789, seq: 2 ** 40 + 7, flags: 1 };
        const sealed = cipher.seal(DOMAIN_WAL, h, data);
        assert.equal(sealed.length, size + SEAL_OVERHEAD);
        if (size >= 16) assert.notDeepEqual(sealed.subarray(0, 16), data.subarray(0, 16));
        assert.deepEqual(again.open(DOMAIN_WAL, h, sealed), data);
      }
    }
  });

  it('stores the kdf, its parameters and salt, and a key check value in the meta; never the key', async () => {
    const { meta } = await VolumeCipher.create(pass('pw'), VOL_A, FAST);
    assert.equal(meta.kdf, 'scrypt');
    assert.equal(meta.cipher, 'aes-256-gcm');
    assert.deepEqual({ N: meta.scrypt!.N, r: meta.scrypt!.r, p: meta.scrypt!.p }, FAST.scrypt);
    assert.match(meta.scrypt!.salt, /^[0-9a-f]{32}$/);
    assert.match(meta.keyCheck, /^[0-9a-f]{64}$/);
    const other = await VolumeCipher.create(pass('pw'), VOL_A, FAST);
    assert.notEqual(other.meta.scrypt!.salt, meta.scrypt!.salt, 'a fresh salt per create');
    const key = randomBytes(32);
    const r = await VolumeCipher.create(raw(key), VOL_A);
    assert.equal(r.meta.kdf, 'none');
    assert.ok(!JSON.stringify(r.meta).includes(key.toString('hex')));
    assert.ok(!JSON.stringify(r.meta).includes(key.toString('base64')));
  });

  it('a wrong key, a wrong passphrase, or a passphrase for a raw-key volume is refused with VBFS_BAD_KEY', async () => {
    const key = randomBytes(32);
    const a = await VolumeCipher.create(raw(key), VOL_A);
    await rejectsWith(VolumeCipher.open(a.meta, raw(randomBytes(32)), VOL_A), 'VBFS_BAD_KEY');
    await rejectsWith(VolumeCipher.open(a.meta, pass('not a key'), VOL_A), 'VBFS_BAD_KEY');
    // The key check value is bound to the volume: copying it to another volume does not help.
    await rejectsWith(VolumeCipher.open(a.meta, raw(key), VOL_B), 'VBFS_BAD_KEY');
    const p = await VolumeCipher.create(pass('secret one'), VOL_A, FAST);
    await rejectsWith(VolumeCipher.open(p.meta, pass('secret two'), VOL_A), 'VBFS_BAD_KEY');
    // One trailing newline is not part of the passphrase (echo adds it).
    await VolumeCipher.open(p.meta, pass('secret one\n'), VOL_A);
  });

  it('a damaged or hostile meta is refused, and scrypt parameters are bounded', async () => {
    const p = await VolumeCipher.create(pass('pw'), VOL_A, FAST);
    await rejectsWith(VolumeCipher.open({ ...p.meta, keyCheck: 'zz' }, pass('pw'), VOL_A), 'VBFS_CORRUPT');
    await rejectsWith(VolumeCipher.open({ ...p.meta, scrypt: { ...p.meta.scrypt!, N: 2 ** 30 } }, pass('pw'), VOL_A), 'VBFS_CORRUPT');
    await rejectsWith(VolumeCipher.open({ ...p.meta, version: 9 }, pass('pw'), VOL_A), 'VBFS_UNSUPPORTED_VERSION');
    await rejectsWith(VolumeCipher.open(null, pass('pw'), VOL_A), 'VBFS_CORRUPT');
    await rejectsWith(VolumeCipher.create(pass('pw'), VOL_A, { scrypt: { N: 1000, r: 8, p: 1 } }), 'VBFS_INVALID_ARGUMENT');
  });

  it('a record moved to another block, seq, volume, domain or with other flags fails with VBFS_CORRUPT', async () => {
    const key = randomBytes(32);
    const a = (await VolumeCipher.create(raw(key), VOL_A)).cipher;
    const b = (await VolumeCipher.create(raw(key), VOL_B)).cipher; // same key, other volume
    const h = { block: 42, seq: 1000, flags: 0 };
    const sealed = a.seal(DOMAIN_CHUNK, h, randomBytes(4096));
    assert.equal(a.open(DOMAIN_CHUNK, h, sealed).length, 4096);
    throwsWith(() => a.open(DOMAIN_CHUNK, { ...h, block: 43 }, sealed), 'VBFS_CORRUPT');
    throwsWith(() => a.open(DOMAIN_CHUNK, { ...h, seq: 1001 }, sealed), 'VBFS_CORRUPT');
    throwsWith(() => a.open(DOMAIN_CHUNK, { ...h, flags: 1 }, sealed), 'VBFS_CORRUPT');
    throwsWith(() => a.open(DOMAIN_WAL, h, sealed), 'VBFS_CORRUPT');
    throwsWith(() => b.open(DOMAIN_CHUNK, h, sealed), 'VBFS_CORRUPT');
  });

  it('any flipped bit (ciphertext or tag) and any truncation fail with VBFS_CORRUPT, never with bytes', async () => {
    const c = (await VolumeCipher.create(raw(randomBytes(32)), VOL_A)).cipher;
    const h = { block: 7, seq: 9, flags: 0 };
    const data = Buffer.alloc(512, 0x5a);
    const sealed = c.seal(DOMAIN_WAL, h, data);
    for (let bit = 0; bit < sealed.length * 8; bit += 7) {
      const bad = Buffer.from(sealed);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      throwsWith(() => c.open(DOMAIN_WAL, h, bad), 'VBFS_CORRUPT');
    }
    throwsWith(() => c.open(DOMAIN_WAL, h, sealed.subarray(0, sealed.length - 1)), 'VBFS_CORRUPT');
    throwsWith(() => c.open(DOMAIN_WAL, h, sealed.subarray(0, 10)), 'VBFS_CORRUPT');
  });

  it('nonces never repeat across many seqs, both domains and volumes, and do not depend on the data', async () => {
    const key = randomBytes(32);
    const ciphers = [(await VolumeCipher.create(raw(key), VOL_A)).cipher, (await VolumeCipher.create(raw(key), VOL_B)).cipher];
    const seen = new Set<string>();
    const seqs: number[] = [];
    for (let s = 0; s < 100_000; s++) seqs.push(s);
    for (let k = 0; k < 64; k++) seqs.push(2 ** 32 - 1 + k, 2 ** 40 + k, Number.MAX_SAFE_INTEGER - k);
    for (const c of ciphers) {
      for (const d of [DOMAIN_WAL, DOMAIN_CHUNK] as const) {
        for (const s of seqs) {
          const n = c.nonce(d, s);
          assert.equal(n.length, NONCE_BYTES);
          seen.add(n.toString('hex'));
        }
      }
    }
    assert.equal(seen.size, ciphers.length * 2 * seqs.length);
    // The same seq and domain always give the same nonce: it is derived, not random.
    assert.deepEqual(ciphers[0]!.nonce(DOMAIN_WAL, 5), ciphers[0]!.nonce(DOMAIN_WAL, 5));
    throwsWith(() => ciphers[0]!.nonce(DOMAIN_WAL, -1), 'VBFS_INVALID_ARGUMENT');
    throwsWith(() => ciphers[0]!.nonce(DOMAIN_WAL, 2 ** 53), 'VBFS_INVALID_ARGUMENT');
  });

  it('reads keys from a file (raw, hex, passphrase) and from an environment variable', async () => {
    const key = randomBytes(32);
    const rawFile = path.join(dir, 'raw.key');
    const hexFile = path.join(dir, 'hex.key');
    const passFile = path.join(dir, 'pass.key');
    await fsp.writeFile(rawFile, key, { mode: 0o600 });
    await fsp.writeFile(hexFile, key.toString('hex') + '\n', { mode: 0o600 });
    await fsp.writeFile(passFile, 'a long passphrase\n', { mode: 0o600 });

    const fromRaw = await VolumeCipher.create(await readKeyMaterial({ keyFile: rawFile }), VOL_A);
    assert.equal(fromRaw.meta.kdf, 'none');
    // The hex form and $NAME with the hex form are the same key.
    await VolumeCipher.open(fromRaw.meta, await readKeyMaterial({ keyFile: hexFile }), VOL_A);
    await VolumeCipher.open(fromRaw.meta, await readKeyMaterial({ keyEnv: 'K' }, { K: key.toString('hex') }), VOL_A);

    const fromPass = await VolumeCipher.create(await readKeyMaterial({ keyFile: passFile }), VOL_A, FAST);
    assert.equal(fromPass.meta.kdf, 'scrypt');
    await VolumeCipher.open(fromPass.meta, await readKeyMaterial({ keyEnv: 'P' }, { P: 'a long passphrase' }), VOL_A);

    await rejectsWith(readKeyMaterial({}), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(readKeyMaterial({ keyFile: rawFile, keyEnv: 'K' }, { K: 'x' }), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(readKeyMaterial({ keyEnv: 'UNSET_VAR' }, {}), 'VBFS_INVALID_ARGUMENT');
    await rejectsWith(readKeyMaterial({ keyFile: path.join(dir, 'missing') }), 'VBFS_NOT_FOUND');
    await fsp.writeFile(path.join(dir, 'empty'), '');
    await rejectsWith(readKeyMaterial({ keyFile: path.join(dir, 'empty') }), 'VBFS_INVALID_ARGUMENT');
  });

  it('no error message, stack or detail contains the key or the passphrase', async () => {
    const key = randomBytes(32);
    const phrase = 'hunter2-very-secret-passphrase';
    const secrets = [key.toString('hex'), key.toString('base64'), key.toString('latin1'), phrase];
    const keyFile = path.join(dir, 'secret.key');
    await fsp.writeFile(keyFile, key, { mode: 0o600 });
    const errors: unknown[] = [];
    const collect = async (p: Promise<unknown> | (() => unknown)): Promise<void> => {
      try {
        await (typeof p === 'function' ? p() : p);
      } catch (err) {
        errors.push(err);
        return;
      }
      assert.fail('expected an error');
    };
    const r = await VolumeCipher.create(raw(key), VOL_A);
    const p = await VolumeCipher.create(pass(phrase), VOL_A, FAST);
    // A wrong key is a secret too (it may be another volume's key).
    const wrong = randomBytes(32);
    secrets.push(wrong.toString('hex'), wrong.toString('base64'));
    await collect(VolumeCipher.open(r.meta, pass(phrase), VOL_A));
    await collect(VolumeCipher.open(r.meta, raw(wrong), VOL_A));
    await collect(VolumeCipher.open(p.meta, raw(key), VOL_A));
    await collect(VolumeCipher.open(p.meta, pass(phrase + 'x'), VOL_A));
    await collect(VolumeCipher.open({ ...p.meta, scrypt: { ...p.meta.scrypt!, r: 0 } }, pass(phrase), VOL_A));
    await collect(readKeyMaterial({ keyEnv: 'K', keyFile }, { K: phrase }));
    await collect(readKeyMaterial({ keyEnv: 'bad name' }, { 'bad name': phrase }));
    await collect(() => r.cipher.open(DOMAIN_WAL, { block: 1, seq: 1, flags: 0 }, Buffer.alloc(40)));
    await collect(() => r.cipher.seal(DOMAIN_WAL, { block: 1, seq: -1, flags: 0 }, Buffer.alloc(4)));
    assert.ok(errors.length >= 9);
    for (const err of errors) {
      const text = errorText(err);
      for (const s of secrets) assert.ok(!text.includes(s), `a secret leaked into: ${(err as Error).message}`);
    }
  });
});
