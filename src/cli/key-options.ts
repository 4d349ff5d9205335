/**
 * `--key-file PATH` / `--key-env NAME`: where an encrypted volume's key comes from,
 * for create (with --encrypt), mount and fsck. The bytes are read here, handed to
 * the engine and never printed or logged: messages name the file or the variable.
 */
import * as path from 'node:path';
import { readKeyMaterial, type KeyMaterial } from '../crypto/key-source';
import { UsageError } from './exit-codes';

export interface KeyArgs {
  keyFile?: string;
  keyEnv?: string;
}

export const KEY_FILE_HELP = 'file with the volume key: 32 raw bytes, 64 hex digits, or a passphrase (stretched with scrypt); never copied anywhere';
export const KEY_ENV_HELP = 'environment variable holding the key (64 hex digits) or a passphrase';

/** True when a key source was given. */
export function hasKey(a: KeyArgs): boolean {
  return a.keyFile !== undefined || a.keyEnv !== undefined;
}

/** The key the arguments name, or undefined when none was given. */
export async function keyFromArgs(a: KeyArgs, env: NodeJS.ProcessEnv = process.env): Promise<KeyMaterial | undefined> {
  if (!hasKey(a)) return undefined;
  if (a.keyFile !== undefined && a.keyEnv !== undefined) throw new UsageError('give --key-file or --key-env, not both');
  if (a.keyFile === '') throw new UsageError('--key-file needs a path');
  if (a.keyEnv === '') throw new UsageError('--key-env needs a variable name');
  // Absolute, so a --daemon child (which leaves the working directory) reads the same file.
  return readKeyMaterial({ keyFile: a.keyFile === undefined ? undefined : path.resolve(a.keyFile), keyEnv: a.keyEnv }, env);
}
