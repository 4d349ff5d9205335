import { VbfsError, isVbfsError } from '../errors';
import type { Backend } from '../backend/backend';
import { decodeVolumeMeta, encodeVolumeMeta } from '../format/volume-meta';
import type { VolumeInfo } from '../types';
import { checkVolumeInfo } from './volume-rules';

/** A backend that can create an object only if its key is free (S3: If-None-Match: *). */
interface ConditionalBackend extends Backend {
  createIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
}

const INDEX = 'index/';

/**
 * The volumes of a store whose metadata lives in the bucket (docs/FORMAT.md, "Bucket
 * layout"): `index/<name>` holds the volume id (32 hex + '\n'), `<id>/volume.json`
 * the same bytes as a local volume.json. The index entry is the volume: it is
 * created last (a crash before it leaves an unnamed volume.json nobody reads) and,
 * with a conditional create, by exactly one of two racing creators; it is deleted
 * first (then the volume's objects).
 */
export class BucketCatalog {
  constructor(private readonly backend: Backend) {}

  async create(info: VolumeInfo): Promise<void> {
    const metaKey = `${info.id}/volume.json`;
    await this.backend.put(metaKey, encodeVolumeMeta(info));
    const entry = Buffer.from(`${info.id}\n`);
    let created: boolean;
    const b = this.backend as Partial<ConditionalBackend>;
    if (typeof b.createIfAbsent === 'function') {
      created = await b.createIfAbsent.call(this.backend, this.indexKey(info.name), entry);
    } else {
      // A backend without conditional creates (memory, tests): check, then put.
      created = (await this.volumeId(info.name)) === null;
      if (created) await this.backend.put(this.indexKey(info.name), entry);
    }
    if (!created) {
      await this.backend.delete(metaKey).catch(() => undefined);
      throw new VbfsError('VBFS_EXISTS', `volume '${info.name}' already exists`, { name: info.name });
    }
  }

  /** The volume's id, or null if there is no such volume. */
  async volumeId(name: string): Promise<string | null> {
    let buf: Buffer;
    try {
      buf = await this.backend.get(this.indexKey(name));
    } catch (err) {
      if (isVbfsError(err, 'VBFS_NOT_FOUND')) return null;
      throw err;
    }
    const id = /^([0-9a-f]{32})\n$/.exec(buf.toString('latin1'))?.[1];
    if (!id) throw new VbfsError('VBFS_CORRUPT', `volume index entry ${this.describe(this.indexKey(name))} is damaged`, { path: this.indexKey(name) });
    return id;
  }

  async info(name: string): Promise<VolumeInfo> {
    const id = await this.volumeId(name);
    if (id === null) throw new VbfsError('VBFS_NOT_FOUND', `no volume named '${name}' in ${this.describe(INDEX)}`, { name });
    const key = `${id}/volume.json`;
    let buf: Buffer;
    try {
      buf = await this.backend.get(key);
    } catch (err) {
      if (isVbfsError(err, 'VBFS_NOT_FOUND')) throw new VbfsError('VBFS_CORRUPT', `${this.describe(key)} is missing`, { path: key }, { cause: err });
      throw err;
    }
    const where = this.describe(key);
    const info = checkVolumeInfo(decodeVolumeMeta(buf, where), where);
    if (info.id !== id || info.name !== name) throw new VbfsError('VBFS_CORRUPT', `${where} belongs to another volume`, { path: key });
    return info;
  }

  /** Every volume name, sorted. */
  async names(): Promise<string[]> {
    return (await this.backend.list(INDEX)).map((k) => k.slice(INDEX.length)).filter((n) => n.length > 0 && !n.includes('/'));
  }

  /** Forget the name (the volume is gone from then on); its objects are the caller's to delete. */
  async remove(name: string): Promise<void> {
    await this.backend.delete(this.indexKey(name));
  }

  private indexKey(name: string): string {
    return `${INDEX}${name}`;
  }

  private describe(key: string): string {
    return this.backend.describe?.(key) ?? key;
  }
}
