import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { VbfsError, isVbfsError } from '../errors';
import type { Backend } from '../backend/backend';
import { checkLeaseTtl, planVolume, type Lease } from '../backend/lease';
import { leasePrefix } from '../backend/fencing';
import { FileBackend } from '../backend/file-backend';
import { BucketMapMedium } from '../map/bucket-map-medium';
import { acquireVolumeLease, canLease, takeVolumeLease, type VolumeLeaseSetup } from './volume-lease';
import { BucketCatalog } from './bucket-catalog';
import { DiskCacheBackend } from '../backend/disk-cache';
import { decodeVolumeMeta, encodeVolumeMeta, ENCRYPTED_FORMAT_VERSION, VOLUME_FORMAT_VERSION } from '../format/volume-meta';
import type { ScryptParams } from '../format/encryption-meta';
import { isKeyMaterial, type KeyMaterial } from '../crypto/key-source';
import { VolumeCipher } from '../crypto/volume-cipher';
import type { FileIO } from '../io/file-io';
import { NodeFileIO } from '../io/node-file-io';
import { findExposed, formatMode } from '../io/private-mode';
import { installCrc32c } from '../os/native-crc32c';
import { bootTimeMs } from '../os/process';
import { fsckVolume, type FsckOptions, type FsckReport } from './fsck';
import { currentOwner, isLockHeld, isOwnerAlive, readLock, VolumeLock } from './lock';
import { silentLogger, type Logger, type VolumeInfo } from '../types';
import type { StoreOptions, VolumeCreateOptions, VolumeOpenOptions, VolumeState } from './types';
import type { MountableStore } from './ports';
import { Volume } from './volume';
import { checkBlockSize, checkCompression, checkDurability, checkDurabilityOn, checkSize, checkVolumeInfo, checkVolumeName } from './volume-rules';

/**
 * A store is a directory of named volumes:
 *
 *   <dir>/volumes/<name>/volume.json   metadata (atomic create)
 *   <dir>/volumes/<name>/LOCK          single-writer lock while open
 *   <dir>/volumes/<name>/wal/          WAL segments
 *   <dir>/volumes/<name>/map/          map log segments + checkpoint
 *   <dir>/objects/<volume id>/chunks/  chunk objects (FileBackend; or any Backend)
 *   <dir>/volumes/.tmp-<pid>-<start>-<boot>-<rand>-<name>   a volume being created
 *
 * With `metadata: 'backend'` (an S3 bucket) the directory keeps only the WAL, the
 * LOCK and caches (`<dir>/volumes/<name>/`, made on first use); the volume index,
 * volume.json, the chunks and the map live in the backend (bucket-catalog.ts,
 * map/bucket-map-medium.ts), so another machine can open the volumes from the bucket.
 */
export class Store implements MountableStore {
  private readonly open = new Set<Volume>();
  private readonly warnedDamaged = new Set<string>();
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly fileIO: FileIO,
    readonly backend: Backend,
    private readonly logger: Logger,
    private readonly failpoint: (name: string) => void | Promise<void>,
    /** Write buffers + read caches of every open volume together (StoreOptions.memoryBytes). */
    readonly memoryBytes: number,
    /** Set when volume metadata and maps live in the backend (StoreOptions.metadata 'backend'). */
    private readonly catalog: BucketCatalog | null = null,
    /** TTL of the lease a writer takes on a bucket volume (undefined: the lease's default). */
    private readonly leaseTtlMs?: number,
  ) {}

  static async open(dir: string, opts: StoreOptions = {}): Promise<Store> {
    installCrc32c(); // every checksum below this store: hardware CRC-32C when the platform has it
    if (opts.leaseTtlMs !== undefined) checkLeaseTtl(opts.leaseTtlMs); // the lease of bucket-backed volumes (issue 11)
    const fileIO = opts.fileIO ?? new NodeFileIO();
    const abs = path.resolve(dir);
    const st = await fileIO.stat(abs);
    if (st && !st.isDirectory) throw new VbfsError('VBFS_INVALID_ARGUMENT', `store path ${abs} exists and is not a directory`, { path: abs });
    try {
      await ensureDurableDir(fileIO, `${abs}/volumes`);
    } catch (err) {
      // A store this process cannot write (read-only filesystem, another owner) can
      // still be listed and mounted read-only; a write says why when it is tried.
      if (!st || !isVbfsError(err, 'VBFS_IO') || !CANNOT_WRITE.has(err.details['errno'] as string)) throw err;
    }
    const backend = await withDiskCache(opts.backend ?? new FileBackend(`${abs}/objects`, fileIO), abs, fileIO, opts);
    const memory = opts.memoryBytes ?? defaultMemoryBytes();
    if (!Number.isSafeInteger(memory) || memory <= 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid memoryBytes: ${String(opts.memoryBytes)}`);
    if (opts.metadata === 'backend' && !opts.backend) throw new VbfsError('VBFS_INVALID_ARGUMENT', "metadata 'backend' needs a backend");
    const catalog = opts.metadata === 'backend' ? new BucketCatalog(backend) : null;
    const store = new Store(abs, fileIO, backend, opts.logger ?? silentLogger, opts.failpoint ?? (() => undefined), memory, catalog, opts.leaseTtlMs);
    await store.finishInterruptedDeletes();
    await store.warnIfExposed();
    return store;
  }

  /**
   * One warning, naming the first path, when other users can open files of this
   * store (one made by an older version, or opened up by hand). Stops at the first
   * hit: on a private store (0700 root) it costs one stat. Modes are never changed
   * here: sharing a store with a group may be deliberate.
   */
  private async warnIfExposed(): Promise<void> {
    try {
      const found = await findExposed(this.fileIO, this.dir, { limit: 1, stopAtLimit: true });
      const first = found.entries[0];
      if (!first) return;
      this.logger.warn(
        `store ${this.dir} is open to other users: ${first.path} is ${formatMode(first.mode)} (vbfs creates 0600/0700; fix with chmod -R go-rwx ${this.dir})`,
        { path: first.path, mode: formatMode(first.mode) },
      );
    } catch (err) {
      this.logger.debug(`could not check the permissions of ${this.dir}: ${(err as Error).message}`);
    }
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
      durability: checkDurabilityOn(checkDurability(opts.durability ?? 'batched'), this.backend),
      compression: checkCompression(opts.compression ?? 'none'),
      createdAt: new Date().toISOString(),
      formatVersion: VOLUME_FORMAT_VERSION,
      encrypted: false,
    };
    if (opts.encryption !== undefined) {
      const enc = opts.encryption as { key?: KeyMaterial; scrypt?: ScryptParams } | null;
      if (typeof enc !== 'object' || enc === null || !isKeyMaterial(enc.key)) {
        throw new VbfsError('VBFS_INVALID_ARGUMENT', 'createVolume: encryption needs a key (readKeyMaterial)');
      }
      // Only the salt, the scrypt parameters and the key check value are kept; the key is not.
      const { meta } = await VolumeCipher.create(enc.key, info.id, enc.scrypt !== undefined ? { scrypt: enc.scrypt } : {});
      info.formatVersion = ENCRYPTED_FORMAT_VERSION;
      info.encrypted = true;
      info.encryption = meta;
    }
    if (this.catalog) {
      await this.catalog.create(info);
      this.logger.info('created volume', { volume: name, size: info.size, durability: info.durability, backend: this.backend.describe?.('') });
      return info;
    }
    const final = this.volDir(name);
    if (await this.fileIO.stat(final)) throw new VbfsError('VBFS_EXISTS', `volume '${name}' already exists`, { name });
    // Build in a temp directory and rename, so a crash never leaves a half-made volume.
    // Its name says who builds it, so another process's Store.open leaves it alone
    // while we are alive (and removes it once we are provably gone).
    const tmp = `${this.dir}/volumes/${tmpDirName(name)}`;
    const building = buildingDirs(this.fileIO);
    building.add(tmp);
    try {
      await this.fileIO.mkdir(`${tmp}/wal`);
      await this.fileIO.mkdir(`${tmp}/map`);
      const fd = await this.fileIO.open(`${tmp}/volume.json`, 'wx');
      try {
        await fd.write(encodeVolumeMeta(info), 0);
        await fd.sync();
      } finally {
        await fd.close();
      }
      await this.fileIO.fsyncDir(`${tmp}/wal`);
      await this.fileIO.fsyncDir(`${tmp}/map`);
      await this.fileIO.fsyncDir(tmp);
      await this.failpoint('create:beforeRename');
      if (await this.fileIO.stat(final)) throw new VbfsError('VBFS_EXISTS', `volume '${name}' already exists`, { name });
      await this.fileIO.rename(tmp, final);
      await this.fileIO.fsyncDir(`${this.dir}/volumes`);
    } catch (err) {
      await this.fileIO.rmdir(tmp).catch(() => undefined);
      if (isVbfsError(err, 'VBFS_IO') && err.details['errno'] === 'EROFS') {
        throw new VbfsError(
          'VBFS_IO',
          `cannot create volume '${name}': the store ${this.dir} is on a read-only filesystem`,
          { name, errno: 'EROFS' },
          { cause: err },
        );
      }
      throw err;
    } finally {
      building.delete(tmp);
    }
    this.logger.info('created volume', { volume: name, size: info.size, durability: info.durability, encrypted: info.encrypted });
    return info;
  }

  async volumeInfo(name: string): Promise<VolumeInfo> {
    this.checkOpen();
    checkVolumeName(name);
    if (this.catalog) return this.catalog.info(name);
    const file = `${this.volDir(name)}/volume.json`;
    if (!(await this.fileIO.stat(file))) throw new VbfsError('VBFS_NOT_FOUND', `no volume named '${name}' in store ${this.dir}`, { name });
    return checkVolumeInfo(decodeVolumeMeta(await this.fileIO.readFile(file), file), file);
  }

  /**
   * One volume's metadata, or the reason it is damaged (volume.json missing or
   * unreadable). VBFS_NOT_FOUND only when there is no such volume at all.
   */
  async volumeState(name: string): Promise<VolumeState> {
    this.checkOpen();
    checkVolumeName(name);
    if (this.catalog) {
      try {
        // No index entry: no volume. A damaged entry or volume.json: listed as damaged.
        if ((await this.catalog.volumeId(name)) === null) throw new VbfsError('VBFS_NOT_FOUND', `no volume named '${name}' in store ${this.dir}`, { name });
        return { name, info: await this.catalog.info(name) };
      } catch (err) {
        if (isVbfsError(err, 'VBFS_CORRUPT') || isVbfsError(err, 'VBFS_UNSUPPORTED_VERSION')) return { name, damaged: err.message };
        throw err;
      }
    }
    const st = await this.fileIO.stat(this.volDir(name));
    if (!st?.isDirectory) throw new VbfsError('VBFS_NOT_FOUND', `no volume named '${name}' in store ${this.dir}`, { name });
    try {
      return { name, info: await this.volumeInfo(name) };
    } catch (err) {
      if (isVbfsError(err, 'VBFS_NOT_FOUND')) {
        if (!(await this.fileIO.stat(this.volDir(name)))) throw err; // deleted meanwhile
        return { name, damaged: `${this.volDir(name)}/volume.json is missing` };
      }
      if (isVbfsError(err, 'VBFS_CORRUPT') || isVbfsError(err, 'VBFS_UNSUPPORTED_VERSION') || isVbfsError(err, 'VBFS_IO')) {
        return { name, damaged: err.message };
      }
      throw err;
    }
  }

  /** Every volume, healthy or damaged, sorted by name (`vbfs list`). */
  async listVolumeStates(): Promise<VolumeState[]> {
    this.checkOpen();
    const names = this.catalog ? await this.catalog.names() : (await this.fileIO.readdir(`${this.dir}/volumes`)).filter((n) => !n.startsWith('.'));
    const out: VolumeState[] = [];
    for (const n of names) {
      try {
        out.push(await this.volumeState(n));
      } catch (err) {
        if (isVbfsError(err, 'VBFS_NOT_FOUND') || isVbfsError(err, 'VBFS_INVALID_NAME')) continue;
        throw err;
      }
    }
    return out;
  }

  /**
   * The healthy volumes, sorted by name. Works while volumes are open (reads metadata
   * only). A damaged one is left out, with a warning (once), so it cannot stop the
   * others from being listed or mounted.
   */
  async listVolumes(): Promise<VolumeInfo[]> {
    const out: VolumeInfo[] = [];
    for (const v of await this.listVolumeStates()) {
      if (v.info) {
        out.push(v.info);
      } else if (!this.warnedDamaged.has(`${v.name}\0${v.damaged}`)) {
        this.warnedDamaged.add(`${v.name}\0${v.damaged}`);
        this.logger.warn(`volume ${v.name} is damaged and left out: ${v.damaged}`, { volume: v.name });
      }
    }
    return out;
  }

  /** Is the volume open for writing (in this process or another)? Also for a damaged one. */
  async isVolumeOpen(name: string): Promise<boolean> {
    await this.volumeState(name);
    const lockPath = `${this.volDir(name)}/LOCK`;
    const holder = await readLock(this.fileIO, lockPath);
    return holder !== null && isLockHeld(this.fileIO, holder, lockPath);
  }

  async openVolume(name: string, opts: VolumeOpenOptions = {}): Promise<Volume> {
    this.checkOpen();
    const info = await this.volumeInfo(name);
    // The key is checked before anything else (lease, lock, recovery): a wrong key changes nothing.
    const cipher = await volumeCipherFor(info, opts.key, false);
    const dir = await this.localDir(name);
    // A writer of a bucket volume holds its lease (one writer across machines) and
    // writes only while it is live; a read-only open takes none. A backend that
    // cannot create conditionally (the in-memory one of tests) has no lease.
    const leased: VolumeLeaseSetup | null =
      this.catalog && !opts.readOnly && canLease(this.backend)
        ? await takeVolumeLease(this.backend, info.id, name, dir, this.fileIO, this.leaseTtlMs, this.logger)
        : null;
    let vol: Volume;
    try {
      vol = await Volume.open(
        info,
        {
          dir,
          fileIO: this.fileIO,
          backend: leased?.backend ?? this.backend,
          logger: this.logger,
          failpoint: this.failpoint,
          onClose: () => this.rebalance(),
          afterClose: leased ? () => leased.lease.release() : undefined,
          // Checked by every write and fsync: a lease that ran out fails the volume at once (onLost, below).
          beforeWrite: leased ? () => leased.lease.assertLive() : undefined,
          mapMedium: await this.mapMediumFor(info, leased),
          cipher,
        },
        opts,
      );
    } catch (err) {
      await leased?.lease.release().catch(() => undefined);
      throw err;
    }
    // Lost (expired unrenewed, or taken over): fenced, as on a fatal error; writes and fsyncs now fail.
    leased?.lease.onLost((err) => vol.failWith(err));
    this.open.add(vol);
    this.rebalance();
    return vol;
  }

  /**
   * The volume's local directory. A volume whose metadata is in the bucket gets it on
   * first use (a new machine starts with none): the WAL and the LOCK live there.
   */
  private async localDir(name: string): Promise<string> {
    const dir = this.volDir(name);
    if (this.catalog) await ensureDurableDir(this.fileIO, `${dir}/wal`);
    return dir;
  }

  /**
   * Where the volume's map lives: the bucket for a bucket store, else the local map/
   * directory (undefined). In a bucket that keeps leases, only what the epoch records
   * count is read (a writer's plan from beginEpoch; a reader makes its own).
   */
  private async mapMediumFor(info: VolumeInfo, leased: VolumeLeaseSetup | null = null): Promise<BucketMapMedium | undefined> {
    if (leased) return new BucketMapMedium(leased.backend, info.id, leased.lease.epoch, undefined, { plan: leased.plan, firstSeq: leased.firstSeq });
    if (!this.catalog) return undefined;
    if (!canLease(this.backend)) return new BucketMapMedium(this.backend, info.id);
    const plan = await planVolume(this.backend, info.id);
    return new BucketMapMedium(this.backend, info.id, plan.governing.epoch, undefined, { plan });
  }

  /**
   * One memory budget for all open volumes: each gets an equal share. A share that
   * shrinks applies to new allocations at once; memory already held above it is
   * given back as the volume's buffers empty (at the latest when it is idle).
   */
  private rebalance(): void {
    for (const v of this.open) if (v.isClosed) this.open.delete(v);
    if (this.open.size === 0) return;
    const share = Math.floor(this.memoryBytes / this.open.size);
    for (const v of this.open) v.setMemoryShare(share);
  }

  /** Bytes held by the write buffers and read caches of the open volumes. */
  get memoryInUse(): number {
    let n = 0;
    for (const v of this.open) if (!v.isClosed) n += v.memoryBytes;
    return n;
  }

  /**
   * Verify a volume end to end without opening it (see store/fsck.ts). Refused with
   * VBFS_LOCKED while it is open for writing; with `repair`, holds its lock meanwhile,
   * and for a bucket volume its lease (VBFS_LEASE_HELD while a writer anywhere holds it).
   */
  async fsckVolume(name: string, opts: FsckOptions = {}): Promise<FsckReport> {
    this.checkOpen();
    const info = await this.volumeInfo(name);
    const cipher = await volumeCipherFor(info, opts.key, true);
    // A repair changes the bucket: not under a writer on another machine (VBFS_LEASE_HELD).
    const lease = opts.repair ? await this.bucketLease(info.id, name) : null;
    try {
      return await fsckVolume(
        {
          info,
          dir: await this.localDir(name),
          fileIO: this.fileIO,
          backend: this.backend,
          logger: this.logger,
          storeDir: this.dir,
          mapMedium: await this.mapMediumFor(info),
          cipher,
        },
        opts,
      );
    } finally {
      await lease?.release().catch(() => undefined);
    }
  }

  /** The lease of a bucket volume, for work that must not run under a writer anywhere (null: no lease in this store). */
  private async bucketLease(id: string | null, name: string): Promise<Lease | null> {
    if (!this.catalog || id === null || !canLease(this.backend)) return null;
    return acquireVolumeLease(this.backend, id, name, this.leaseTtlMs, this.logger);
  }

  /**
   * Delete a volume and its chunk objects. Refused while it is open. The volume
   * directory is first renamed aside (atomic), so a crash mid-delete leaves either
   * the whole volume or a `.deleted-*` directory that the next open finishes off.
   * A damaged volume can be deleted too (its chunk objects as well, if its id can
   * still be read from what is left of volume.json).
   */
  async deleteVolume(name: string): Promise<void> {
    this.checkOpen();
    const state = await this.volumeState(name);
    const bucketId = this.catalog ? await this.catalog.volumeId(name) : null;
    if (this.catalog) await this.localDir(name);
    let lock: VolumeLock;
    try {
      lock = await VolumeLock.acquire(this.fileIO, `${this.volDir(name)}/LOCK`, `volume '${name}'`);
    } catch (err) {
      if (isVbfsError(err, 'VBFS_LOCKED'))
        throw new VbfsError('VBFS_BUSY', `volume '${name}' is open (mounted?); close or unmount it before deleting`, { name });
      throw err;
    }
    const aside = `${this.dir}/volumes/.deleted-${name}-${randomBytes(4).toString('hex')}`;
    let lease: Lease | null = null;
    try {
      // The local LOCK does not see a mount on another machine; its lease does
      // (VBFS_LEASE_HELD). Held until the volume's objects are gone.
      lease = await this.bucketLease(state.info?.id ?? bucketId, name);
      // A bucket volume is gone once its name is (then its objects go, below).
      if (this.catalog) await this.catalog.remove(name);
      // Renamed aside while still locked, so no opener can slip in between.
      await this.fileIO.rename(this.volDir(name), aside);
      await this.fileIO.fsyncDir(`${this.dir}/volumes`);
    } catch (err) {
      await lease?.release().catch(() => undefined);
      throw err;
    } finally {
      await lock.release();
    }
    try {
      await this.removeVolumeData(aside, state.info?.id ?? bucketId ?? (await this.volumeIdIn(aside)), lease);
    } catch (err) {
      await lease?.release().catch(() => undefined);
      throw err;
    }
    this.logger.info('deleted volume', { volume: name, damaged: state.damaged });
  }

  /** With `lease` (held while deleting): it is given up just before its own objects go, so no renewal writes one back. */
  private async removeVolumeData(dir: string, id: string | null, lease: Lease | null = null): Promise<void> {
    if (id) {
      const keys = await this.backend.list(`${id}/`);
      const ours = leasePrefix(id);
      for (const key of keys) if (!key.startsWith(ours)) await this.backend.delete(key);
      lease?.abandon();
      for (const key of keys) if (key.startsWith(ours)) await this.backend.delete(key);
      // A deleted volume's id is never used again: drop what the backend kept for it
      // (FileBackend: the now empty objects/<id>/chunks directories).
      await this.backend.removeEmpty?.(`${id}/`);
    }
    await this.fileIO.rmdir(dir);
    await this.fileIO.fsyncDir(`${this.dir}/volumes`);
  }

  /** The volume id in `dir`/volume.json, also from a damaged one if the id is still legible. */
  private async volumeIdIn(dir: string): Promise<string | null> {
    const meta = `${dir}/volume.json`;
    try {
      const text = (await this.fileIO.readFile(meta)).toString('utf8');
      return /"id"\s*:\s*"([0-9a-f]{32})"/.exec(text)?.[1] ?? null;
    } catch {
      return null;
    }
  }

  /**
   * Finish deletes a crash interrupted, and remove temp directories of creates whose
   * creator is provably gone (never one a running `create` is building). Best effort:
   * a store we cannot write (read-only) is still opened.
   */
  private async finishInterruptedDeletes(): Promise<void> {
    const building = buildingDirs(this.fileIO);
    for (const n of await this.fileIO.readdir(`${this.dir}/volumes`)) {
      const dir = `${this.dir}/volumes/${n}`;
      try {
        if (n.startsWith('.tmp-')) {
          if (tmpCreatorGone(n, (await this.fileIO.stat(dir))?.mtimeMs, building.has(dir))) await this.fileIO.rmdir(dir);
        } else if (n.startsWith('.deleted-')) {
          await this.removeVolumeData(dir, await this.volumeIdIn(dir));
        }
      } catch (err) {
        // Read-only store: leave it for a process that can write; anything else is a real error.
        if (!isVbfsError(err, 'VBFS_IO') || !CANNOT_WRITE.has(err.details['errno'] as string)) throw err;
        this.logger.warn(`could not clean up ${dir}: ${(err as Error).message}`, { path: dir });
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
 * The cipher of an encrypted volume from the key given, or null for a plain one.
 * No key for an encrypted volume: VBFS_KEY_REQUIRED (fsck, `optional`, then checks
 * CRCs only); a key for a plain one: VBFS_INVALID_ARGUMENT (the caller believes it
 * is encrypted: better to say so than to ignore it); a wrong key: VBFS_BAD_KEY.
 */
async function volumeCipherFor(info: VolumeInfo, key: KeyMaterial | undefined, optional: boolean): Promise<VolumeCipher | null> {
  if (key !== undefined && !isKeyMaterial(key)) throw new VbfsError('VBFS_INVALID_ARGUMENT', 'key: not a KeyMaterial (use readKeyMaterial)');
  if (!info.encryption) {
    if (key !== undefined) throw new VbfsError('VBFS_INVALID_ARGUMENT', `volume '${info.name}' is not encrypted, but a key was given`, { volume: info.name });
    return null;
  }
  if (key === undefined) {
    if (optional) return null;
    throw new VbfsError('VBFS_KEY_REQUIRED', `volume '${info.name}' is encrypted: give its key (--key-file PATH or --key-env NAME)`, { volume: info.name });
  }
  return VolumeCipher.open(info.encryption, key, info.id, `volume '${info.name}' volume.json`);
}

/** errno values that mean "this process cannot write here" rather than "the store is broken". */
const CANNOT_WRITE = new Set(['EROFS', 'EACCES', 'EPERM']);

/** Temp directories of creates running in this process, per file layer (like the lock's set). */
const building = new WeakMap<FileIO, Set<string>>();
function buildingDirs(fileIO: FileIO): Set<string> {
  let set = building.get(fileIO);
  if (!set) building.set(fileIO, (set = new Set()));
  return set;
}

const TMP_RE = /^\.tmp-(\d+)-(\d+)-([0-9a-f]{1,16})-[0-9a-f]{8}-/;

/** The first 16 hex digits of the boot id: enough to tell boots apart. */
function bootTag(): string {
  return (currentOwner().boot ?? '').replace(/[^0-9a-f]/g, '').slice(0, 16) || '0';
}

/** `.tmp-<pid>-<start ticks>-<boot tag>-<rand>-<name>`: the creator is in the name, set atomically by mkdir. */
function tmpDirName(name: string): string {
  const me = currentOwner();
  return `.tmp-${me.pid}-${me.start ?? 0}-${bootTag()}-${randomBytes(4).toString('hex')}-${name}`;
}

/**
 * Is the creator of this temp directory provably gone? A name of an older version
 * (no creator in it) counts as gone only if it is older than this boot.
 */
function tmpCreatorGone(n: string, mtimeMs: number | undefined, inThisProcess: boolean): boolean {
  const m = TMP_RE.exec(n);
  if (!m) {
    const boot = bootTimeMs();
    return mtimeMs !== undefined && boot !== null && mtimeMs < boot;
  }
  if (m[3] !== bootTag()) return true;
  const me = currentOwner();
  const start = Number(m[2]);
  return !isOwnerAlive({ pid: Number(m[1]), host: me.host, start: start > 0 ? start : undefined }, inThisProcess);
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

/** StoreOptions.diskCacheBytes when none is given, for a remote backend. */
export const DEFAULT_DISK_CACHE_BYTES = 1024 * 1024 * 1024;

/**
 * A remote backend (S3) gets the disk chunk cache in `<store>/cache` in front of it
 * (diskCacheBytes, default 1 GiB); the file backend none unless asked for. A store
 * where the cache directory cannot be made (read-only) runs without it.
 */
async function withDiskCache(backend: Backend, dir: string, fileIO: FileIO, opts: StoreOptions): Promise<Backend> {
  const bytes = opts.diskCacheBytes ?? (backend.remote === true ? DEFAULT_DISK_CACHE_BYTES : 0);
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid diskCacheBytes: ${String(opts.diskCacheBytes)}`);
  if (bytes === 0) return backend;
  try {
    return await DiskCacheBackend.open(backend, { dir: `${dir}/cache`, fileIO, maxBytes: bytes, logger: opts.logger });
  } catch (err) {
    if (!isVbfsError(err, 'VBFS_IO') || !CANNOT_WRITE.has(err.details['errno'] as string)) throw err;
    opts.logger?.warn(`no disk cache: ${(err as Error).message}`);
    return backend;
  }
}

/** A quarter of RAM, at least 256 MiB, at most 1 GiB: a small machine keeps room for the rest. */
function defaultMemoryBytes(): number {
  const MiB = 1024 * 1024;
  return Math.min(1024 * MiB, Math.max(256 * MiB, Math.floor(os.totalmem() / 4 / MiB) * MiB));
}
