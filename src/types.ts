/**
 * Types and mode lists every floor shares (the ground floor, beside errors.ts): the
 * on-disk formats, the WAL, the store, the FUSE layer and the CLI all speak of a
 * volume's durability, compression and metadata, and all take a logger. Nothing
 * here imports anything. Volume options and statistics stay in store/types.ts.
 */

/** See docs/FORMAT.md and README "Durability": what write()/fsync() wait for. */
export type Durability = 'strict' | 'batched' | 'relaxed' | 'async' | 'remote';
export const DURABILITY_MODES: readonly Durability[] = ['strict', 'batched', 'relaxed', 'async', 'remote'];
export type Compression = 'none' | 'lz4';
export const COMPRESSIONS: readonly Compression[] = ['none', 'lz4'];

/** Minimal logger interface (winston loggers satisfy it). Below the CLI the default is silent. */
export interface Logger {
  error(msg: string, meta?: Record<string, unknown>): void;
  warn(msg: string, meta?: Record<string, unknown>): void;
  info(msg: string, meta?: Record<string, unknown>): void;
  debug(msg: string, meta?: Record<string, unknown>): void;
}

export const silentLogger: Logger = { error() {}, warn() {}, info() {}, debug() {} };

/** A volume's metadata: the content of its volume.json (format/volume-meta.ts). */
export interface VolumeInfo {
  name: string;
  id: string; // 32 hex chars, unique per volume (a recreated name gets a new id)
  size: number;
  blockSize: number;
  durability: Durability;
  compression: Compression;
  createdAt: string; // ISO time
  formatVersion: number;
  /** True when every record payload is sealed with AES-256-GCM: opening it needs the key. */
  encrypted: boolean;
  /** volume.json's `encryption` object (no secret in it: a salt, scrypt parameters and a key check value). */
  encryption?: VolumeEncryption;
}

/** The `encryption` object of volume.json (crypto/volume-cipher.ts derives and checks it; docs/FORMAT.md). */
export interface VolumeEncryption {
  version: number;
  cipher: 'aes-256-gcm';
  /** 'none': the key file held the 32-byte key itself; 'scrypt': a passphrase. */
  kdf: 'none' | 'scrypt';
  scrypt?: { N: number; r: number; p: number; salt: string /* hex */ };
  /** hex HMAC-SHA256 of the check key (crypto/volume-cipher.ts). */
  keyCheck: string;
}
