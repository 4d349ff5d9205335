import * as os from 'node:os';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { VbfsError, isVbfsError } from '../errors';
import type { Logger } from '../types';
import {
  decodeEpochRecord,
  encodeEpochRecord,
  epochRecordKey,
  leaseKey,
  leasePrefix,
  nextEpochRecord,
  parseEpochKey,
  planReplay,
  sortListing,
  type EpochRecord,
  type ReplayPlan,
} from './fencing';

/**
 * One writer per volume across machines: a lease in the bucket, one object per epoch
 * (docs/FORMAT.md, "Lease"). No compare-and-swap is needed, only If-None-Match: *,
 * which every store vbfs accepts honours (RGW 16 refuses If-Match with a quoted ETag):
 *
 *  - acquire: list `<volume>/lease/`, read the newest epoch E's object; if it is live
 *    (renewed within its TTL by the SERVER's clock: the answer's Date minus the
 *    object's Last-Modified), refuse with VBFS_LEASE_HELD naming the holder; otherwise
 *    create E+1 with If-None-Match: *. Of any number of racing takers exactly one
 *    creates E+1; the others find it live and are refused.
 *  - renew: overwrite our own object (nobody else ever writes it), then list the
 *    lease objects: a newer epoch means we were taken over.
 *  - fenced: the holder's own clock says when it stops. The lease is live until
 *    (send time of the last renewal that succeeded) + TTL - margin. The object's
 *    Last-Modified is after that send, so a taker, who needs Date - Last-Modified >
 *    TTL, acts only after the holder has stopped. Lost is final: a renewal that comes
 *    back late never revives the lease (it may have landed after a taker looked).
 *
 * The holder's elapsed time is the larger of the monotonic and the wall clock, so
 * neither a wall clock stepped back nor a suspended machine (monotonic clocks stop
 * during suspend) makes it think it still holds the lease.
 */

/** What acquire() needs of a backend; S3Backend has all of it. */
export interface LeaseBackend {
  createIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
  put(key: string, data: Uint8Array): Promise<void>;
  getStamped(key: string): Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }>;
  list(prefix: string): Promise<string[]>;
  delete(key: string): Promise<void>;
}

export interface LeaseHolder {
  host: string;
  pid: number;
  /** When the holder took the lease (ISO 8601). */
  since: string;
}

/** The body of a lease object, one line of JSON. */
export interface LeaseRecord extends LeaseHolder {
  version: 1;
  epoch: number;
  ttlMs: number;
  /** Random per acquire: makes our create's body unique (S3Backend.createIfAbsent reads it back after a lost answer). */
  token: string;
  renewals: number;
  released: boolean;
}

export interface LeaseOptions {
  /** How long a lease lives without renewal. Default 30 s. */
  ttlMs?: number;
  /** Who we are, in the lease (default: this host, this pid, now). */
  holder?: Partial<LeaseHolder>;
  /** Renew this often. Default ttlMs / 3. */
  renewIntervalMs?: number;
  /** The holder stops this long before its TTL runs out (clock rate, scheduling). Default max(ttlMs / 10, 250 ms). */
  marginMs?: number;
  /** While the lease is held by another, keep trying for this long (default 0: refuse at once). */
  waitMs?: number;
  logger?: Logger;
}

export const DEFAULT_LEASE_TTL_MS = 30_000;
/** Last-Modified and Date are whole seconds: a taker adds this much before it believes an age. */
export const SERVER_CLOCK_GRANULARITY_MS = 1000;
const MAX_RACES = 20;

type Stamp = { mono: number; wall: number };
const stamp = (): Stamp => ({ mono: performance.now(), wall: Date.now() });
const elapsedSince = (s: Stamp): number => Math.max(performance.now() - s.mono, Date.now() - s.wall);

export class Lease {
  readonly key: string;
  private record: LeaseRecord;
  private renewedAt: Stamp;
  private lost: VbfsError | null = null;
  private readonly lostListeners: Array<(err: VbfsError) => void> = [];
  private renewTimer: NodeJS.Timeout | null = null;
  private expiryTimer: NodeJS.Timeout | null = null;
  private renewing: Promise<void> | null = null;
  private released = false;

  private constructor(
    private readonly backend: LeaseBackend,
    readonly volumeKey: string,
    record: LeaseRecord,
    renewedAt: Stamp,
    private readonly renewIntervalMs: number,
    private readonly marginMs: number,
    private readonly logger: Logger | undefined,
  ) {
    this.key = leaseKey(volumeKey, record.epoch);
    this.record = record;
    this.renewedAt = renewedAt;
  }

  get epoch(): number {
    return this.record.epoch;
  }

  get ttlMs(): number {
    return this.record.ttlMs;
  }

  get holder(): LeaseHolder {
    return { host: this.record.host, pid: this.record.pid, since: this.record.since };
  }

  /** How many renewals have reached the bucket. */
  get renewals(): number {
    return this.record.renewals;
  }

  /** True while this writer may write: not released, not expired, not taken over. */
  get live(): boolean {
    if (this.lost) return false;
    if (elapsedSince(this.renewedAt) >= this.limitMs) {
      this.lose('expired');
      return false;
    }
    return true;
  }

  /** Throw VBFS_LEASE_LOST unless live. Call before every object write that commits state. */
  assertLive(): void {
    if (!this.live) throw this.lost as VbfsError;
  }

  /**
   * Ask the bucket: is there a newer epoch? If so the lease is lost (VBFS_LEASE_LOST).
   * For a writer whose create of an epoch-less key (a chunk) met an existing object.
   */
  async verify(): Promise<void> {
    this.assertLive();
    const newer = await this.newerEpoch();
    if (newer !== null) this.lose('superseded', newer);
    this.assertLive();
  }

  /** Called once, when the lease is lost (not on release). Returns an unsubscribe function. */
  onLost(fn: (err: VbfsError) => void): () => void {
    if (this.lost && !this.released) {
      const err = this.lost;
      queueMicrotask(() => fn(err));
      return () => undefined;
    }
    this.lostListeners.push(fn);
    return () => {
      const i = this.lostListeners.indexOf(fn);
      if (i >= 0) this.lostListeners.splice(i, 1);
    };
  }

  /**
   * Stop renewing and mark the lease released in the bucket, so the next acquire
   * need not wait for the TTL. Call only after every write of this epoch has
   * completed. A lost lease is left alone (a newer epoch may exist).
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.stopTimers();
    await this.renewing?.catch(() => undefined);
    const wasLive = this.live;
    this.released = true;
    if (!this.lost) this.lost = new VbfsError('VBFS_LEASE_LOST', `lease of ${this.volumeKey} (epoch ${this.epoch}) was released`, this.details('released'));
    if (!wasLive) return;
    this.record = { ...this.record, released: true };
    await this.backend.put(this.key, encodeLease(this.record));
  }

  /**
   * Stop renewing without telling the bucket, as a crash would: the lease stays
   * held until its TTL runs out. For a process that must stop writing but cannot
   * vouch that all its writes have completed (release() would let a taker in at once).
   */
  abandon(): void {
    if (this.released) return;
    this.released = true;
    this.stopTimers();
    if (!this.lost) this.lost = new VbfsError('VBFS_LEASE_LOST', `lease of ${this.volumeKey} (epoch ${this.epoch}) was abandoned`, this.details('abandoned'));
  }

  private get limitMs(): number {
    return this.record.ttlMs - this.marginMs;
  }

  private details(reason: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { volumeKey: this.volumeKey, epoch: this.epoch, reason, ...extra };
  }

  private lose(reason: 'expired' | 'superseded', newerEpoch?: number): void {
    if (this.lost) return;
    const why =
      reason === 'expired'
        ? `not renewed for ${Math.round(elapsedSince(this.renewedAt))} ms (TTL ${this.ttlMs} ms)`
        : `taken over: epoch ${newerEpoch ?? '?'} exists`;
    this.lost = new VbfsError(
      'VBFS_LEASE_LOST',
      `lease of ${this.volumeKey} (epoch ${this.epoch}) lost: ${why}; this writer is fenced`,
      this.details(reason, { newerEpoch }),
    );
    this.stopTimers();
    this.logger?.error(this.lost.message);
    for (const fn of this.lostListeners.splice(0)) {
      try {
        fn(this.lost);
      } catch (err) {
        this.logger?.error(`lease onLost listener failed: ${String(err)}`);
      }
    }
  }

  private stopTimers(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.renewTimer = this.expiryTimer = null;
  }

  /** @internal Start renewing (acquire calls it). */
  start(): void {
    this.armExpiry();
    this.scheduleRenew(this.renewIntervalMs);
  }

  private armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    const left = this.limitMs - elapsedSince(this.renewedAt);
    // The timer only makes onLost timely; assertLive() reads the clocks itself.
    this.expiryTimer = setTimeout(() => void this.live, Math.max(0, left) + 1);
    this.expiryTimer.unref();
  }

  private scheduleRenew(ms: number): void {
    if (this.lost || this.released) return;
    this.renewTimer = setTimeout(() => {
      // The listing of one renewal may still run when the next one starts: only the newest clears the slot.
      const run: Promise<void> = this.renewOnce().finally(() => {
        if (this.renewing === run) this.renewing = null;
      });
      this.renewing = run;
    }, ms);
    this.renewTimer.unref();
  }

  private async renewOnce(): Promise<void> {
    if (!this.live) return;
    const sent = stamp();
    const next = { ...this.record, renewals: this.record.renewals + 1 };
    try {
      await this.backend.put(this.key, encodeLease(next));
    } catch (err) {
      // The backend retried already; try again soon, until the lease runs out.
      this.logger?.warn(`lease ${this.key}: renewal failed, retrying: ${err instanceof Error ? err.message : String(err)}`);
      this.scheduleRenew(Math.min(this.renewIntervalMs, 250));
      return;
    }
    // Checked against the renewal before this one: once lost, never live again.
    if (!this.live || this.released) return;
    this.record = next;
    this.renewedAt = sent;
    this.armExpiry();
    // The next renewal is due renewIntervalMs after this one was SENT. Counting from
    // when the PUT and the listing below came back let their latencies add up: with a
    // loaded server (PUT + LIST over TTL/3 or so) a holder whose every renewal
    // succeeded still ran out of its TTL, failed its volume, and a clean close left
    // acknowledged writes in the local WAL only.
    this.scheduleRenew(Math.max(0, this.renewIntervalMs - elapsedSince(sent)));
    try {
      const newer = await this.newerEpoch();
      if (newer !== null) this.lose('superseded', newer);
    } catch (err) {
      this.logger?.warn(`lease ${this.key}: listing lease epochs failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private async newerEpoch(): Promise<number | null> {
    let top: number | null = null;
    for (const k of await this.backend.list(leasePrefix(this.volumeKey))) {
      const p = parseEpochKey(this.volumeKey, k);
      if (p?.kind === 'lease' && p.epoch > this.epoch && (top === null || p.epoch > top)) top = p.epoch;
    }
    return top;
  }

  /** @internal */
  static create(
    backend: LeaseBackend,
    volumeKey: string,
    record: LeaseRecord,
    renewedAt: Stamp,
    renewIntervalMs: number,
    marginMs: number,
    logger: Logger | undefined,
  ): Lease {
    return new Lease(backend, volumeKey, record, renewedAt, renewIntervalMs, marginMs, logger);
  }
}

export function encodeLease(r: LeaseRecord): Buffer {
  return Buffer.from(`${JSON.stringify(r)}\n`);
}

export function decodeLease(data: Uint8Array, key: string): LeaseRecord {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(Buffer.from(data).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new VbfsError('VBFS_CORRUPT', `lease object ${key} is not JSON`, { key });
  }
  if (typeof o !== 'object' || o === null) throw new VbfsError('VBFS_CORRUPT', `lease object ${key} is not an object`, { key });
  if (o['version'] !== 1) throw new VbfsError('VBFS_UNSUPPORTED_VERSION', `lease object ${key}: version ${String(o['version'])} (this build reads 1)`, { key });
  const ok =
    Number.isSafeInteger(o['epoch']) &&
    Number.isSafeInteger(o['ttlMs']) &&
    (o['ttlMs'] as number) > 0 &&
    typeof o['host'] === 'string' &&
    Number.isSafeInteger(o['pid']) &&
    typeof o['since'] === 'string' &&
    typeof o['token'] === 'string' &&
    Number.isSafeInteger(o['renewals']) &&
    typeof o['released'] === 'boolean';
  if (!ok) throw new VbfsError('VBFS_CORRUPT', `lease object ${key} lacks a field or has one of the wrong type`, { key });
  return o as unknown as LeaseRecord;
}

/** A TTL in ms: a whole number, 1 s .. 1 h (a shorter one cannot survive a slow PUT, a longer one blocks takeover). */
export function checkLeaseTtl(ttlMs: number): number {
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1000 || ttlMs > 3_600_000) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid lease TTL ${ttlMs} ms (1 s .. 1 h)`, { ttlMs });
  }
  return ttlMs;
}

/**
 * Take the lease of `volumeKey` (the key prefix of the volume's objects): the next
 * epoch, renewed in the background until release() or loss. VBFS_LEASE_HELD when a
 * live lease is held by another (details: host, pid, since, epoch, expiresInMs).
 */
export async function acquireLease(backend: LeaseBackend, volumeKey: string, opts: LeaseOptions = {}): Promise<Lease> {
  const ttlMs = checkLeaseTtl(opts.ttlMs ?? DEFAULT_LEASE_TTL_MS);
  const marginMs = opts.marginMs ?? Math.max(Math.floor(ttlMs / 10), 250);
  const renewIntervalMs = opts.renewIntervalMs ?? Math.floor(ttlMs / 3);
  if (!(marginMs >= 0 && marginMs < ttlMs) || !(renewIntervalMs > 0 && renewIntervalMs < ttlMs - marginMs)) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `lease timing: need 0 <= margin < TTL and 0 < renew interval < TTL - margin`, {
      ttlMs,
      marginMs,
      renewIntervalMs,
    });
  }
  const deadline = Date.now() + (opts.waitMs ?? 0);
  const holder: LeaseHolder = {
    host: opts.holder?.host ?? os.hostname(),
    pid: opts.holder?.pid ?? process.pid,
    since: opts.holder?.since ?? new Date().toISOString(),
  };
  for (let race = 0; race < MAX_RACES;) {
    let top = 0;
    for (const k of await backend.list(leasePrefix(volumeKey))) {
      const p = parseEpochKey(volumeKey, k);
      if (p?.kind === 'lease' && p.epoch > top) top = p.epoch;
    }
    if (top > 0) {
      const key = leaseKey(volumeKey, top);
      let got: { data: Buffer; modifiedMs: number; serverNowMs: number };
      try {
        got = await backend.getStamped(key);
      } catch (err) {
        if (isVbfsError(err, 'VBFS_NOT_FOUND')) {
          race++; // cleaned up in between: look again
          continue;
        }
        throw err;
      }
      const cur = decodeLease(got.data, key);
      const ageMs = got.serverNowMs - got.modifiedMs;
      const leftMs = cur.ttlMs + SERVER_CLOCK_GRANULARITY_MS - ageMs;
      if (!cur.released && leftMs > 0) {
        if (Date.now() < deadline) {
          await sleep(Math.min(leftMs + 50, Math.max(0, deadline - Date.now()), 1000));
          continue;
        }
        throw new VbfsError(
          'VBFS_LEASE_HELD',
          `volume ${volumeKey} is in use by ${cur.host} pid ${cur.pid} since ${cur.since} (lease epoch ${cur.epoch}, renewed ${Math.max(0, Math.round(ageMs / 1000))} s ago, TTL ${Math.round(cur.ttlMs / 1000)} s)`,
          { volumeKey, host: cur.host, pid: cur.pid, since: cur.since, epoch: cur.epoch, ttlMs: cur.ttlMs, expiresInMs: leftMs },
        );
      }
    }
    const record: LeaseRecord = { version: 1, epoch: top + 1, ttlMs, ...holder, token: randomBytes(8).toString('hex'), renewals: 0, released: false };
    const key = leaseKey(volumeKey, record.epoch);
    const sent = stamp();
    if (!(await backend.createIfAbsent(key, encodeLease(record)))) {
      race++; // another taker created this epoch first: look at it
      continue;
    }
    const lease = Lease.create(backend, volumeKey, record, sent, renewIntervalMs, marginMs, opts.logger);
    if (!lease.live) {
      // The create took longer than the TTL allows: never write under it; give it back and try the next epoch.
      await backend.put(key, encodeLease({ ...record, released: true })).catch(() => undefined);
      race++;
      continue;
    }
    lease.start();
    // Older lease objects only tell history; the newest must stay (epochs never repeat).
    if (top > 1) void dropOldLeases(backend, volumeKey, record.epoch).catch(() => undefined);
    return lease;
  }
  throw new VbfsError('VBFS_LEASE_HELD', `volume ${volumeKey}: lost ${MAX_RACES} races for its lease in a row`, { volumeKey });
}

async function dropOldLeases(backend: LeaseBackend, volumeKey: string, epoch: number): Promise<void> {
  for (const k of await backend.list(leasePrefix(volumeKey))) {
    const p = parseEpochKey(volumeKey, k);
    // Keep the one before ours too: a loser of our race may still be reading it.
    if (p?.kind === 'lease' && p.epoch < epoch - 1) await backend.delete(k);
  }
}

/**
 * Create an object that commits state under a lease: check the lease, then create
 * with If-None-Match: * (never overwrite). True if created. False if the key existed
 * while we still hold the lease (e.g. a chunk id a fenced writer used after the
 * takeover: take another id). VBFS_LEASE_LOST if the lease is gone, before or after.
 */
export async function createFenced(backend: Pick<LeaseBackend, 'createIfAbsent'>, lease: Lease, key: string, data: Uint8Array): Promise<boolean> {
  lease.assertLive();
  if (await backend.createIfAbsent(key, data)) return true;
  await lease.verify();
  return false;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * What counts of the map of `volumeKey` now (planReplay over a listing and the newest
 * epoch record): for a writer that just took the lease, and for a reader, which
 * takes none but must not see a fenced writer's late objects either.
 */
export async function planVolume(backend: Pick<LeaseBackend, 'list'> & { get(key: string): Promise<Buffer> }, vol: string): Promise<ReplayPlan> {
  const listing = sortListing(vol, [...(await backend.list(`${vol}/map/`)), ...(await backend.list(`${vol}/checkpoint/`))]);
  const newest = listing.recordEpochs[listing.recordEpochs.length - 1];
  const records = newest === undefined ? [] : [decodeEpochRecord(await backend.get(epochRecordKey(vol, newest)), epochRecordKey(vol, newest))];
  return planReplay({ ...listing, records });
}

/**
 * Step 1 of the fencing rule (docs/FORMAT.md, "Epochs and fencing"), for a writer
 * that has just taken `lease`: list the map and checkpoints (after the lease object
 * exists, so after the old holder's deadline), read the newest epoch record, plan
 * the replay, and create this epoch's record adopting everything the plan counts.
 * Returns the plan to build the map from and the record (its firstSeq is the seq of
 * this epoch's first delta). VBFS_LEASE_LOST if a newer epoch already wrote a record.
 */
export async function beginEpoch(
  backend: Pick<LeaseBackend, 'createIfAbsent' | 'list'> & { get(key: string): Promise<Buffer> },
  lease: Lease,
  opts: { firstSeq?: number } = {},
): Promise<{ plan: ReplayPlan; record: EpochRecord }> {
  lease.assertLive();
  const vol = lease.volumeKey;
  const plan = await planVolume(backend, vol);
  const record = nextEpochRecord(plan, lease.epoch, { ...opts, holder: lease.holder });
  const key = epochRecordKey(vol, lease.epoch);
  if (!(await createFenced(backend, lease, key, encodeEpochRecord(record)))) {
    // Only the holder of this epoch writes this key, and a create whose answer was lost is recognised by its content.
    throw new VbfsError('VBFS_CORRUPT', `epoch record ${key} exists already, with other content`, { key });
  }
  return { plan, record };
}
