import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { VbfsError, isVbfsError } from '../errors';
import type { Backend } from '../backend/backend';
import { FileBackend } from '../backend/file-backend';
import {
  checkBlockSize,
  checkCompression,
  checkDurability,
  checkSize,
  checkVolumeName,
  decodeVolumeMeta,
  encodeVolumeMeta,
  VOLUME_FORMAT_VERSION,
} from '../format/volume-meta';
import type { FileIO } from '../io/file-io';
import { NodeFileIO } from '../io/node-file-io';
import { fsckVolume, type FsckOptions, type FsckReport } from './fsck';
import { isLockHeld, readLock, VolumeLock } from './lock';
import { silentLogger, type Logger, type StoreOptions, type VolumeCreateOptions, type VolumeInfo, type VolumeOpenOptions } from './types';
import { Volume } from './volume';

/**
 * A store is a directory of named volumes:
 *
 *   <dir>/volumes/<name>/volume.json   metadata (atomic create)
 *   <dir>/volumes/<name>/LOCK          single-writer lock while open
 *   <dir>/volumes/<name>/wal/          WAL segments
 *   <dir>/volumes/<name>/map/          map log segments + checkpoint
 *   <dir>/objects/<volume id>/chunks/  chunk objects (FileBackend; or any Backend)
 */
export class Store {
  private readonly open = new Set<Volume>();
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly fileIO: FileIO,
    readonly backend: Backend,
    private readonly logger: Logger,
    private readonly failpoint: (name: string) => void | Promise<void>,
  ) {}

  static async open(dir: string, opts: StoreOptions = {}): Promise<Store> {
    const fileIO = opts.fileIO ?? new NodeFileIO();
    const abs = path.resolve(dir);
    const st = await fileIO.stat(abs);
    if (st && !st.isDirectory) throw new VbfsError('VBFS_INVALID_ARGUMENT', `store path ${abs} exists and is not a directory`, { path: abs });
    await ensureDurableDir(fileIO, `${abs}/volumes`);
    const backend = opts.backend ?? new FileBackend(`${abs}/objects`, fileIO);
    const store = new Store(abs, fileIO, backend, opts.logger ?? silentLogger, opts.failpoint ?? (() => undefined));
    await store.finishInterruptedDeletes();
    return store;
  }

  private volDir(name: string): string {
    return `${this.dir}/volumes/${name}`;
  }

  async createVolume(name: string, opts: VolumeCreateOptions): Promise<VolumeInfo> {
    this.checkOpen();
    checkVolumeName(name);
    if (typeof opts !== 'object' || opts === null) throw new VbfsError('VBFS_INVALID_ARGUMENT', 'createVolume needs options with a size');
    const blockSize = checkBlockSize(opts.blockSize ?? 4096);
    const info: VolumeInfo = {
      name,
      id: randomBytes(16).toString('hex'),
      size: checkSize(opts.size, blockSize),
      blockSize,
      durability: checkDurability(opts.durability ?? 'batched'),
      compression: checkCompression(opts.compression ?? 'none'),
      createdAt: new Date().toISOString(),
      formatVersion: VOLUME_FORMAT_VERSION,
    };
    const final = this.volDir(name);
    if (await this.fileIO.stat(final)) throw new VbfsError('VBFS_EXISTS', `volume '${name}' already exists`, { name });
    // Build in a temp directory and rename, so a crash never leaves a half-made volume.
    const tmp = `${this.dir}/volumes/.tmp-${name}-${randomBytes(4).toString('hex')}`;
    await this.fileIO.mkdir(`${tmp}/wal`);
    await this.fileIO.mkdir(`${tmp}/map`);
    const fd = await this.fileIO.open(`${tmp}/volume.json`, 'wx');
    await fd.write(encodeVolumeMeta(info), 0);
    await fd.sync();
    await fd.close();
    await this.fileIO.fsyncDir(`${tmp}/wal`);
    await this.fileIO.fsyncDir(`${tmp}/map`);
    await this.fileIO.fsyncDir(tmp);
    if (await this.fileIO.stat(final)) {
      await this.fileIO.rmdir(tmp);
      throw new VbfsError('VBFS_EXISTS', `volume '${name}' already exists`, { name });
    }
    await this.fileIO.rename(tmp, final);
    await this.fileIO.fsyncDir(`${this.dir}/volumes`);
    this.logger.info('created volume', { volume: name, size: info.size, durability: info.durability });
    return info;
  }

  async volumeInfo(name: string): Promise<VolumeInfo> {
    this.checkOpen();
    checkVolumeName(name);
    const file = `${this.volDir(name)}/volume.json`;
    if (!(await this.fileIO.stat(file))) throw new VbfsError('VBFS_NOT_FOUND', `no volume named '${name}' in store ${this.dir}`, { name });
    return decodeVolumeMeta(await this.fileIO.readFile(file), file);
  }

  /** All volumes, sorted by name. Works while volumes are open (reads metadata only). */
  async listVolumes(): Promise<VolumeInfo[]> {
    this.checkOpen();
    const names = (await this.fileIO.readdir(`${this.dir}/volumes`)).filter((n) => !n.startsWith('.'));
    const out: VolumeInfo[] = [];
    for (const n of names) {
      try {
        out.push(await this.volumeInfo(n));
      } catch (err) {
        if (isVbfsError(err, 'VBFS_NOT_FOUND') || isVbfsError(err, 'VBFS_INVALID_NAME')) continue;
        throw err;
      }
    }
    return out;
  }

  /** Is the volume open for writing (in this process or another)? */
  async isVolumeOpen(name: string): Promise<boolean> {
    await this.volumeInfo(name);
    const lockPath = `${this.volDir(name)}/LOCK`;
    const holder = await readLock(this.fileIO, lockPath);
    return holder !== null && isLockHeld(this.fileIO, holder, lockPath);
  }

  async openVolume(name: string, opts: VolumeOpenOptions = {}): Promise<Volume> {
    this.checkOpen();
    const info = await this.volumeInfo(name);
    const vol = await Volume.open(info, { dir: this.volDir(name), fileIO: this.fileIO, backend: this.backend, logger: this.logger, failpoint: this.failpoint }, opts);
    this.open.add(vol);
    return vol;
  }

  /**
   * Verify a volume end to end without opening it (see store/fsck.ts). Refused with
   * VBFS_LOCKED while it is open for writing; with `repair`, holds its lock meanwhile.
   */
  async fsckVolume(name: string, opts: FsckOptions = {}): Promise<FsckReport> {
    this.checkOpen();
    const info = await this.volumeInfo(name);
    return fsckVolume({ info, dir: this.volDir(name), fileIO: this.fileIO, backend: this.backend, logger: this.logger }, opts);
  }

  /**
   * Delete a volume and its chunk objects. Refused while it is open. The volume
   * directory is first renamed aside (atomic), so a crash mid-delete leaves either
   * the whole volume or a `.deleted-*` directory that the next open finishes off.
   */
  async deleteVolume(name: string): Promise<void> {
    this.checkOpen();
    const info = await this.volumeInfo(name);
    let lock: VolumeLock;
    try {
      lock = await VolumeLock.acquire(this.fileIO, `${this.volDir(name)}/LOCK`, `volume '${name}'`);
    } catch (err) {
      if (isVbfsError(err, 'VBFS_LOCKED')) throw new VbfsError('VBFS_BUSY', `volume '${name}' is open (mounted?); close or unmount it before deleting`, { name });
      throw err;
    }
    const aside = `${this.dir}/volumes/.deleted-${name}-${randomBytes(4).toString('hex')}`;
    try {
      // Renamed aside while still locked, so no opener can slip in between.
      await this.fileIO.rename(this.volDir(name), aside);
      await this.fileIO.fsyncDir(`${this.dir}/volumes`);
    } finally {
      await lock.release();
    }
    await this.removeVolumeData(aside, info.id);
    this.logger.info('deleted volume', { volume: name });
  }

  private async removeVolumeData(dir: string, id: string): Promise<void> {
    for (const key of await this.backend.list(`${id}/`)) await this.backend.delete(key);
    await this.fileIO.rmdir(dir);
    await this.fileIO.fsyncDir(`${this.dir}/volumes`);
  }

  private async finishInterruptedDeletes(): Promise<void> {
    for (const n of await this.fileIO.readdir(`${this.dir}/volumes`)) {
      const dir = `${this.dir}/volumes/${n}`;
      if (n.startsWith('.tmp-')) {
        await this.fileIO.rmdir(dir);
      } else if (n.startsWith('.deleted-')) {
        const meta = `${dir}/volume.json`;
        let id: string | null = null;
        if (await this.fileIO.stat(meta)) id = decodeVolumeMeta(await this.fileIO.readFile(meta), meta).id;
        if (id) await this.removeVolumeData(dir, id);
        else await this.fileIO.rmdir(dir);
      }
    }
  }

  /** Close every volume this store opened. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const errors: unknown[] = [];
    for (const v of this.open) await v.close().catch((e) => errors.push(e));
    this.open.clear();
    await this.backend.close();
    if (errors.length > 0) throw errors[0];
  }

  private checkOpen(): void {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'store is closed');
  }
}

/**
 * mkdir -p, made durable: every directory created is fsynced into its parent, or a
 * power loss could take a freshly created store (and the volumes in it) away.
 */
async function ensureDurableDir(fileIO: FileIO, dir: string): Promise<void> {
  const missing: string[] = [];
  for (let d = dir; !(await fileIO.stat(d)); d = path.dirname(d)) {
    missing.push(d);
    if (d === path.dirname(d)) break;
  }
  if (missing.length === 0) return;
  await fileIO.mkdir(dir);
  for (const d of missing.reverse()) await fileIO.fsyncDir(path.dirname(d));
}
