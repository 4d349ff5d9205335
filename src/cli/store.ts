/**
 * Where the CLI meets the engine: the store directory, opening it, and the mount
 * pid file that lets `vbfs unmount`, `create` and `delete` find a running mount.
 */
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Store } from '../store/store';
import type { MountableStore } from '../store/ports';
import type { FsckOptions, FsckReport } from '../store/fsck';
import type { VolumeCreateOptions, VolumeOpenOptions, VolumeState } from '../store/types';
import type { Volume } from '../store/volume';
import type { Logger, VolumeInfo } from '../types';
import { pidAlive, processStartTime } from '../os/process';
import { mkdirPrivate, writeNewPrivateFile } from '../io/private-mode';
import { VbfsError } from '../errors';
import { backendFor, resolveBackendConfig, type BackendChoice } from './store-config';

/** What the CLI needs from the engine's Store, beyond what a mount needs (store/ports.ts). */
export interface CliStore extends MountableStore {
  createVolume(name: string, opts: VolumeCreateOptions): Promise<VolumeInfo>;
  volumeInfo(name: string): Promise<VolumeInfo>;
  volumeState(name: string): Promise<VolumeState>;
  listVolumeStates(): Promise<VolumeState[]>;
  isVolumeOpen(name: string): Promise<boolean>;
  deleteVolume(name: string): Promise<void>;
  fsckVolume(name: string, opts: FsckOptions): Promise<FsckReport>;
  /** The engine's volume (compact(), space()), not only what a mount serves. */
  openVolume(name: string, opts?: VolumeOpenOptions): Promise<Volume>;
}

export function defaultStoreDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['VBFS_STORE']) return path.resolve(env['VBFS_STORE']);
  return path.join(os.homedir(), '.local', 'share', 'vbfs');
}

/**
 * Open the store with its backend: the local directory, or the bucket that
 * `--backend` names or the store remembers (store-config.ts). `ensureBucket`
 * (`vbfs create`) makes the bucket if it is missing and checks that it honours
 * conditional creates, which keep two volumes from taking one name.
 */
export interface OpenStoreOptions {
  /** Memory budget of write buffers + read caches (`--memory`). */
  memoryBytes?: number;
  /** The backend named on the command line (or none: the store's remembered one, or local). */
  backend?: BackendChoice & { ensureBucket?: boolean };
  /** `--lease-ttl`: the lease a writer takes on a volume in a bucket. */
  leaseTtlSeconds?: number;
  /** `--disk-cache-bytes`: the local chunk cache in front of a bucket (default 1 GiB; 0 = off). */
  diskCacheBytes?: number;
}

export async function openStore(dir: string, logger: Logger, opts: OpenStoreOptions = {}): Promise<CliStore> {
  const { memoryBytes, backend = {} } = opts;
  const lease = opts.leaseTtlSeconds !== undefined ? { leaseTtlMs: Math.round(opts.leaseTtlSeconds * 1000) } : {};
  const cache = opts.diskCacheBytes !== undefined ? { diskCacheBytes: opts.diskCacheBytes } : {};
  const config = await resolveBackendConfig(dir, backend);
  if (!config) return Store.open(dir, { logger, memoryBytes, ...lease });
  const s3 = backendFor(config);
  try {
    if (backend.ensureBucket) {
      await s3.ensureBucket();
      if (!(await s3.supportsConditionalCreate())) {
        throw new VbfsError('VBFS_IO', `the object store behind ${config.backend} ignores If-None-Match: * (a conditional create); vbfs needs it`, {
          backend: config.backend,
        });
      }
    }
    return await Store.open(dir, { logger, memoryBytes, backend: s3, metadata: 'backend', ...lease, ...cache });
  } catch (err) {
    await s3.close();
    throw err;
  }
}

/**
 * A running mount, recorded twice, both written BEFORE the kernel mount (so nothing
 * that can fail is left for after it):
 *   - in the run directory (`/run/vbfs/mounts/<hash of the canonical mountpoint>.json`
 *     for root), keyed by the mountpoint: `vbfs unmount` finds the serving process
 *     there whatever the store path looks like (a space or comma in it leaves the
 *     mount table's source as just `vbfs`) and however the mountpoint was spelled;
 *   - as `<store>/mount.pid`, best effort (a read-only or full store disk must still
 *     mount `--read-only`): other commands (`delete`, a second mount) read it.
 * A record names a process by pid AND start time, so a reused pid is not taken for it.
 */
export interface MountRecord {
  pid: number;
  /** /proc/<pid>/stat start time; absent in records written by older versions. */
  startTime?: string | null;
  mountpoint: string;
  store?: string;
  started: string;
}

const PID_FILE = 'mount.pid';

function pidFilePath(storeDir: string): string {
  return path.join(storeDir, PID_FILE);
}

/** Where records of running mounts live: $VBFS_RUN_DIR, else /run/vbfs (root) or the user's runtime dir. */
function runDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['VBFS_RUN_DIR']) return path.resolve(env['VBFS_RUN_DIR']);
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  if (uid === 0) return '/run/vbfs';
  if (env['XDG_RUNTIME_DIR']) return path.join(env['XDG_RUNTIME_DIR'], 'vbfs');
  return path.join(os.tmpdir(), `vbfs-${uid}`);
}

export function runRecordPath(mountpoint: string, env: NodeJS.ProcessEnv = process.env): string {
  const key = createHash('sha256').update(mountpoint).digest('hex').slice(0, 32);
  return path.join(runDir(env), 'mounts', `${key}.json`);
}

function recordAlive(rec: MountRecord): boolean {
  if (!pidAlive(rec.pid)) return false;
  return rec.startTime == null || processStartTime(rec.pid) === rec.startTime;
}

async function readRecordFile(file: string): Promise<MountRecord | null> {
  try {
    const rec = JSON.parse(await fsp.readFile(file, 'utf8')) as MountRecord;
    if (typeof rec.pid !== 'number' || typeof rec.mountpoint !== 'string') return null;
    return recordAlive(rec) ? rec : null;
  } catch {
    return null;
  }
}

/** The live mount of this store, or null (a record of a dead process counts as none). */
export async function readMountRecord(storeDir: string): Promise<MountRecord | null> {
  const fromStore = await readRecordFile(pidFilePath(storeDir));
  if (fromStore) return fromStore;
  // The store may be read-only (no mount.pid): look through the run directory.
  const dir = path.join(runDir(), 'mounts');
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    if (!name.endsWith('.json')) continue;
    const rec = await readRecordFile(path.join(dir, name));
    if (rec && rec.store === storeDir) return rec;
  }
  return null;
}

/** The live process serving `mountpoint` (canonical), or null. */
export async function readMountRecordAt(mountpoint: string): Promise<MountRecord | null> {
  const rec = await readRecordFile(runRecordPath(mountpoint));
  return rec && rec.mountpoint === mountpoint ? rec : null;
}

async function writeAtomically(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    // A leftover temp of a crashed run with our pid would make the exclusive create fail.
    await fsp.unlink(tmp).catch(() => undefined);
    await writeNewPrivateFile(tmp, text);
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/**
 * Record this process as the server of `rec.mountpoint`. The run-directory record
 * must be written (it is how `vbfs unmount` waits for us); the store's mount.pid is
 * skipped with a debug line when the store cannot be written.
 */
export async function writeMountRecord(storeDir: string, rec: Omit<MountRecord, 'startTime' | 'store'>, logger?: Logger): Promise<void> {
  const full: MountRecord = { ...rec, startTime: processStartTime(rec.pid), store: storeDir };
  const text = JSON.stringify(full) + '\n';
  const runFile = runRecordPath(rec.mountpoint);
  // Private like the store: a record names the store path and the mountpoint.
  await mkdirPrivate(path.dirname(runFile));
  await writeAtomically(runFile, text);
  try {
    await writeAtomically(pidFilePath(storeDir), text);
  } catch (err) {
    logger?.debug(`not writing ${pidFilePath(storeDir)}: ${(err as Error).message}`);
  }
}

/** Remove the records if they are still ours. */
export async function removeMountRecord(storeDir: string, pid: number, mountpoint?: string): Promise<void> {
  const files = [pidFilePath(storeDir)];
  if (mountpoint) files.push(runRecordPath(mountpoint));
  for (const file of files) {
    try {
      const rec = JSON.parse(await fsp.readFile(file, 'utf8')) as MountRecord;
      if (rec.pid === pid) await fsp.unlink(file);
    } catch {
      // already gone, or a read-only store
    }
  }
}
