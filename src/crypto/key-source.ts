/**
 * Where a volume key comes from: `--key-file PATH` or `--key-env NAME` (and the
 * matching library options). Only the bytes are returned; nothing here logs them,
 * and no error message ever contains them (paths and variable names only).
 *
 * What the bytes mean:
 *  - exactly 32 bytes, or 64 hex digits (a trailing newline allowed): a raw key;
 *  - anything else: a passphrase (one trailing newline dropped, as `echo` adds it),
 *    stretched with scrypt (volume-cipher.ts).
 * At open, volume.json decides (kdf "none" needs a raw key, "scrypt" takes the
 * bytes as a passphrase), so a 32-byte passphrase can never be misread later.
 * An environment variable cannot carry arbitrary bytes: there a raw key must be hex.
 */
import * as fsp from 'node:fs/promises';
import { VbfsError } from '../errors';

export interface KeySourceOptions {
  /** A file holding 32 raw bytes, 64 hex digits, or a passphrase. */
  keyFile?: string;
  /** The name of an environment variable holding 64 hex digits or a passphrase. */
  keyEnv?: string;
}

/** The secret as given, before any derivation. `bytes` is the caller's to wipe (fill(0)). */
export interface KeyMaterial {
  /** Where it came from, for messages: `key file /path` or `$NAME`. Never the secret. */
  source: string;
  bytes: Buffer;
}

export const KEY_BYTES = 32;

/** A KeyMaterial as the library API takes it (a plain object: callers may build one themselves). */
export function isKeyMaterial(v: unknown): v is KeyMaterial {
  const m = v as KeyMaterial | null | undefined;
  return typeof m === 'object' && m !== null && typeof m.source === 'string' && Buffer.isBuffer(m.bytes) && m.bytes.length > 0;
}
/** Refuse bigger key files: a passphrase is short, and this is not the place to read a disk image by mistake. */
const MAX_KEY_FILE = 4096;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export async function readKeyMaterial(opts: KeySourceOptions, env: NodeJS.ProcessEnv = process.env): Promise<KeyMaterial> {
  if (opts.keyFile !== undefined && opts.keyEnv !== undefined) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', 'give either a key file or a key environment variable, not both');
  }
  if (opts.keyFile !== undefined) return readKeyFile(opts.keyFile);
  if (opts.keyEnv !== undefined) return readKeyEnv(opts.keyEnv, env);
  throw new VbfsError('VBFS_INVALID_ARGUMENT', 'an encrypted volume needs a key: --key-file PATH or --key-env NAME');
}

async function readKeyFile(file: string): Promise<KeyMaterial> {
  let bytes: Buffer;
  try {
    const fh = await fsp.open(file, 'r');
    try {
      const size = (await fh.stat()).size;
      if (size > MAX_KEY_FILE)
        throw new VbfsError('VBFS_INVALID_ARGUMENT', `key file ${file} is ${size} bytes: a key is 32 bytes and a passphrase at most ${MAX_KEY_FILE}`, {
          path: file,
        });
      bytes = Buffer.alloc(size);
      const { bytesRead } = await fh.read(bytes, 0, size, 0);
      bytes = bytes.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof VbfsError) throw err;
    const errno = (err as NodeJS.ErrnoException).code;
    // The fs error's message names only the path; keep just its errno anyway.
    throw new VbfsError(errno === 'ENOENT' ? 'VBFS_NOT_FOUND' : 'VBFS_IO', `cannot read key file ${file} (${errno ?? 'error'})`, { path: file, errno });
  }
  if (bytes.length === 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `key file ${file} is empty`, { path: file });
  return { source: `key file ${file}`, bytes };
}

function readKeyEnv(name: string, env: NodeJS.ProcessEnv): KeyMaterial {
  if (!ENV_NAME_RE.test(name)) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid environment variable name ${JSON.stringify(name)}`);
  const value = env[name];
  if (value === undefined || value === '')
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `environment variable ${name} (the key) is not set or empty`, { env: name });
  return { source: `$${name}`, bytes: Buffer.from(value, 'utf8') };
}

const HEX_KEY_RE = /^[0-9a-fA-F]{64}\r?\n?$/;

/** A raw 32-byte key in `m`, or null if it is a passphrase (see the header). */
export function rawKeyOf(m: KeyMaterial): Buffer | null {
  if (m.source.startsWith('key file ') && m.bytes.length === KEY_BYTES) return Buffer.from(m.bytes);
  if (m.bytes.length >= 64 && m.bytes.length <= 66) {
    const text = m.bytes.toString('latin1');
    if (HEX_KEY_RE.test(text)) return Buffer.from(text.slice(0, 64), 'hex');
  }
  return null;
}

/** The passphrase bytes: one trailing newline (`\n` or `\r\n`) dropped. A copy; wipe it after use. */
export function passphraseOf(m: KeyMaterial): Buffer {
  let end = m.bytes.length;
  if (end > 0 && m.bytes[end - 1] === 0x0a) end--;
  if (end > 0 && m.bytes[end - 1] === 0x0d) end--;
  if (end === 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `the passphrase in ${m.source} is empty`);
  return Buffer.from(m.bytes.subarray(0, end));
}
