import { VbfsError, isVbfsError } from '../errors';
import type { Backend, BackendCounters } from '../backend/backend';
import { DiskCacheBackend } from '../backend/disk-cache';
import { S3Backend } from '../backend/s3-backend';
import { DEFAULT_LEASE_TTL_MS, acquireLease, beginEpoch, createFenced, type Lease, type LeaseBackend } from '../backend/lease';
import type { ReplayPlan } from '../backend/fencing';
import { chunkPrefix } from '../chunk/chunk';
import type { FileIO } from '../io/file-io';
import type { Logger } from '../types';

/**
 * One writer per bucket volume across machines (issue 11): the volume's lease
 * (backend/lease.ts) wired into its writes. The writer of a volume whose state is in
 * a bucket takes the lease, begins its epoch, and writes through a FencedBackend, so
 * no object that commits state is written, and none deleted, once the lease is lost.
 */

/** A backend that can hold a lease (S3Backend): conditional create and the server's clock. */
export function canLease(b: Backend): b is Backend & LeaseBackend {
  const o = b as Partial<LeaseBackend>;
  return typeof o.createIfAbsent === 'function' && typeof o.getStamped === 'function';
}

/**
 * Every write and delete checks the lease first. Chunks are created with
 * If-None-Match: * (createFenced), so a fenced writer whose check passed just before it
 * stalled can never replace a chunk the new epoch wrote under the same id. When the
 * create finds the key taken while our lease is still the newest, the object is a
 * fenced writer's orphan that no counted delta refers to: ours replaces it.
 */
export class FencedBackend implements Backend {
  readonly kind: string;
  /** The inner backend's: a leased S3 volume is as remote as an unleased one (reader fan-out, outages, `remote` durability). */
  readonly remote: boolean | undefined;
  /** Only where the inner backend has one (the reader re-reads only when there is a copy to drop). */
  readonly invalidate?: (key: string) => Promise<void>;

  constructor(
    private readonly inner: Backend & LeaseBackend,
    private readonly lease: Lease,
    private readonly volumeId: string,
  ) {
    this.kind = inner.kind;
    this.remote = inner.remote;
    if (inner.invalidate) this.invalidate = (key) => inner.invalidate?.(key) ?? Promise.resolve();
  }

  counters(): BackendCounters {
    return this.inner.counters?.() ?? {};
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    if (key.startsWith(chunkPrefix(this.volumeId))) {
      if (await createFenced(this.inner, this.lease, key, data)) return;
      this.lease.assertLive();
    } else {
      this.lease.assertLive();
    }
    await this.inner.put(key, data);
  }

  get(key: string, offset?: number, length?: number): Promise<Buffer> {
    return this.inner.get(key, offset, length);
  }

  async delete(key: string): Promise<void> {
    this.lease.assertLive();
    await this.inner.delete(key);
  }

  list(prefix: string): Promise<string[]> {
    return this.inner.list(prefix);
  }

  close(): Promise<void> {
    // The store owns the inner backend and closes it.
    return Promise.resolve();
  }

  describe(key: string): string {
    return this.inner.describe?.(key) ?? key;
  }
}

export interface VolumeLeaseSetup {
  lease: Lease;
  plan: ReplayPlan;
  firstSeq: number;
  backend: FencedBackend;
}

/**
 * What a lease renews through: the S3 backend's dedicated lease client
 * (S3Backend.leaseBackend), looked for under the disk cache that wraps it in a store;
 * a backend without one (tests' wrappers) renews through itself.
 */
function leaseClientOf(backend: LeaseBackend, ttlMs: number): LeaseBackend {
  // Only through the store's own cache wrapper: another wrapper (a test's cut network) must stay in the path.
  const b: unknown = backend instanceof DiskCacheBackend ? backend.inner : backend;
  return b instanceof S3Backend ? b.leaseBackend(ttlMs) : backend;
}

/**
 * Take the lease of volume `id` (no epoch begun): VBFS_LEASE_HELD, naming the volume
 * as the user knows it and the holder, while a writer anywhere holds it. Also what
 * `vbfs delete` and `vbfs fsck --repair` of a bucket volume hold while they work, so
 * neither runs under a mount on another machine (the local LOCK cannot see that one).
 */
export async function acquireVolumeLease(backend: LeaseBackend, id: string, name: string, ttlMs: number | undefined, logger: Logger): Promise<Lease> {
  try {
    return await acquireLease(leaseClientOf(backend, ttlMs ?? DEFAULT_LEASE_TTL_MS), id, { ttlMs, logger });
  } catch (err) {
    // Name the volume as the user knows it, not by its id in the bucket.
    if (isVbfsError(err, 'VBFS_LEASE_HELD') && typeof err.details['host'] === 'string') {
      const d = err.details;
      throw new VbfsError(
        'VBFS_LEASE_HELD',
        `volume '${name}' is in use by ${String(d['host'])} pid ${String(d['pid'])} since ${String(d['since'])} (lease epoch ${String(d['epoch'])}, TTL ${Math.round(Number(d['ttlMs']) / 1000)} s)`,
        { ...d, name },
        { cause: err },
      );
    }
    throw err;
  }
}

/** Take the lease of volume `id`, begin its epoch and decide about the local WAL in `dir`. */
export async function takeVolumeLease(
  backend: Backend & LeaseBackend,
  id: string,
  name: string,
  dir: string,
  fileIO: FileIO,
  ttlMs: number | undefined,
  logger: Logger,
): Promise<VolumeLeaseSetup> {
  const lease = await acquireVolumeLease(backend, id, name, ttlMs, logger);
  try {
    const { plan, record } = await beginEpoch(backend, lease);
    await fenceLocalWal(plan, lease.epoch, name, dir, fileIO, logger);
    // A volume written before leases has epoch-1 deltas and no record: epoch 1 (the
    // record it gets says firstSeq 1) continues that run, so its next delta follows it.
    const firstSeq = lease.epoch === plan.governing.epoch ? plan.governingLastSeq + 1 : record.firstSeq;
    return { lease, plan, firstSeq, backend: new FencedBackend(backend, lease, id) };
  } catch (err) {
    await lease.release().catch(() => undefined);
    throw err;
  }
}

const EPOCH_FILE = 'EPOCH';

/**
 * The local WAL was written under the epoch in `<dir>/EPOCH`. If a newer epoch (a
 * writer on another machine, or from another store directory) has since changed the
 * volume's map, replaying this WAL would lay data over what that writer wrote: the
 * WAL is moved aside (`wal.fenced-<epoch>-<time>`, kept for inspection) with a loud
 * warning. Otherwise (we were the last to change the map) it is replayed as usual.
 * Then `<dir>/EPOCH` names the new epoch, before the WAL takes any record under it.
 */
async function fenceLocalWal(plan: ReplayPlan, epoch: number, name: string, dir: string, fileIO: FileIO, logger: Logger): Promise<void> {
  const file = `${dir}/${EPOCH_FILE}`;
  let walEpoch = 1; // a WAL from before leases was written as epoch 1
  if (await fileIO.stat(file)) {
    const n = Number((await fileIO.readFile(file)).toString('utf8').trim());
    if (!Number.isSafeInteger(n) || n < 1) throw new VbfsError('VBFS_CORRUPT', `${file} does not hold an epoch`, { path: file });
    walEpoch = n;
  }
  const changed = [...plan.replay, ...plan.covered, ...(plan.checkpoint ? [plan.checkpoint] : [])].some((p) => p.epoch > walEpoch);
  const walDir = `${dir}/wal`;
  if (changed && (await fileIO.readdir(walDir)).length > 0) {
    const aside = `${dir}/wal.fenced-${walEpoch}-${Date.now()}`;
    await fileIO.rename(walDir, aside);
    await fileIO.mkdir(walDir);
    await fileIO.fsyncDir(dir);
    logger.error(
      `volume ${name}: the local WAL was written under lease epoch ${walEpoch}, but a later writer has changed the volume in the bucket since; ` +
        `its records are NOT replayed (kept in ${aside})`,
      { volume: name, walEpoch, epoch, path: aside },
    );
  }
  const tmp = `${file}.tmp`;
  await fileIO.unlink(tmp).catch(() => undefined);
  const fd = await fileIO.open(tmp, 'wx');
  try {
    await fd.write(Buffer.from(`${epoch}\n`), 0);
    await fd.sync();
  } finally {
    await fd.close();
  }
  await fileIO.rename(tmp, file);
  await fileIO.fsyncDir(dir);
}
