/**
 * Where the CLI meets the engine: the store directory, opening it, and the mount
 * pid file that lets `vbfs unmount`, `create` and `delete` find a running mount.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../store/store';
import type { MountableStore } from '../fuse/types';
import type { Logger, VolumeCreateOptions, VolumeInfo, VolumeState } from '../store/types';
import { pidAlive } from '../fuse/system';

/** What the CLI needs from the engine's Store (see /tmp/api-contract.md). */
export interface CliStore extends MountableStore {
  createVolume(name: string, opts: VolumeCreateOptions): Promise<VolumeInfo>;
  volumeInfo(name: string): Promise<VolumeInfo>;
  volumeState(name: string): Promise<VolumeState>;
  listVolumeStates(): Promise<VolumeState[]>;
  isVolumeOpen(name: string): Promise<boolean>;
  deleteVolume(name: string): Promise<void>;
}

export function defaultStoreDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['VBFS_STORE']) return path.resolve(env['VBFS_STORE']);
  return path.join(os.homedir(), '.local', 'share', 'vbfs');
}

export async function openStore(dir: string, logger: Logger): Promise<CliStore> {
  return Store.open(dir, { logger });
}

export interface MountRecord {
  pid: number;
  mountpoint: string;
  started: string;
}

const PID_FILE = 'mount.pid';

export function pidFilePath(storeDir: string): string {
  return path.join(storeDir, PID_FILE);
}

/** The live mount of this store, or null (a pid file of a dead process counts as none). */
export async function readMountRecord(storeDir: string): Promise<MountRecord | null> {
  let text: string;
  try {
    text = await fsp.readFile(pidFilePath(storeDir), 'utf8');
  } catch {
    return null;
  }
  try {
    const rec = JSON.parse(text) as MountRecord;
    if (typeof rec.pid !== 'number' || typeof rec.mountpoint !== 'string') return null;
    return pidAlive(rec.pid) ? rec : null;
  } catch {
    return null;
  }
}

export async function writeMountRecord(storeDir: string, rec: MountRecord): Promise<void> {
  const file = pidFilePath(storeDir);
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(rec) + '\n');
  await fsp.rename(tmp, file);
}

/** Remove the pid file if it is still ours. */
export async function removeMountRecord(storeDir: string, pid: number): Promise<void> {
  try {
    const rec = JSON.parse(await fsp.readFile(pidFilePath(storeDir), 'utf8')) as MountRecord;
    if (rec.pid === pid) await fsp.unlink(pidFilePath(storeDir));
  } catch {
    // already gone
  }
}
