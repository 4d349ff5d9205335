import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import type { Backend, BackendCounters } from './backend';
import { VbfsError } from '../errors';
import { checkRange, validKey } from './backend';

/**
 * Objects in an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, R2), under a key
 * prefix: backend key `k` is object `<prefix>k` of `bucket`. Tested against Ceph RGW 16
 * (Debian 12) with the same conformance suite as the file backend.
 *
 * Credentials, region and endpoint come from the SDK's standard sources
 * (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 or
 * AWS_ENDPOINT_URL, AWS_PROFILE with ~/.aws/config and credentials) unless the
 * options name them. Nothing here ever writes a secret anywhere.
 *
 * Retries are ours, not the SDK's (its retry strategy is switched off), so that every
 * retry is counted in `stats` and an operation has one deadline over all its attempts:
 * a bucket that stops answering fails the operation with VBFS_IO after
 * `operationTimeoutMs` instead of hanging.
 *
 * RGW 16 quirks this code stays clear of:
 *  - the SDK's default request checksums (CRC32 trailers on streamed uploads) get 411:
 *    checksums are only computed where the API requires them;
 *  - If-Match with a quoted ETag is refused with 412 even when it matches: not used
 *    (objects are never updated in place; the lease uses If-None-Match: *);
 *  - CompleteMultipartUpload returns an empty ETag: not used (a chunk is one PUT).
 */
export interface S3BackendOptions {
  bucket: string;
  /** Key prefix inside the bucket, '' or ending in '/' (parseS3Url gives it so). */
  prefix?: string;
  /** Overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. */
  endpoint?: string;
  /** Overrides AWS_REGION / the profile; 'us-east-1' when none is set and the endpoint is custom. */
  region?: string;
  /** Overrides the SDK's credential chain (env, profile, ...). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Default: true when a custom endpoint is set (RGW, MinIO), false for AWS. */
  forcePathStyle?: boolean;
  /** One HTTP attempt (connect, request, whole response body). Default 30 s. */
  attemptTimeoutMs?: number;
  /** All attempts of one operation, backoff included. Default 60 s. */
  operationTimeoutMs?: number;
  /** Attempts per operation (the deadline may end it first). Default 12. */
  maxAttempts?: number;
  /** Backoff before retry n (1-based): random in [0, min(max, base * 2^(n-1))]. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Parallel connections to the endpoint. Default 64. */
  maxSockets?: number;
  /** Keys per ListObjectsV2 page (S3's default and maximum: 1000); small in tests. */
  listPageSize?: number;
  /**
   * Retry attempts in flight at once over the whole backend (default 8). When the
   * store is in trouble every operation wants to retry at once; past this cap,
   * retries queue (within their own deadline) instead of piling on: no retry storm.
   */
  maxConcurrentRetries?: number;
}

export interface S3Stats {
  /** HTTP attempts made, first tries and retries. */
  requests: number;
  /** Attempts that were retries, and why the attempt before each failed. */
  retries: number;
  retryReasons: { serverError: number; slowDown: number; timeout: number; connection: number };
  /** Operations that failed for good after retrying (outage, deadline). */
  gaveUp: number;
  /** Operations that failed for good, retried or not (gaveUp included; a missing object is not a failure). */
  failed: number;
  /** Retries that had to wait for one of the maxConcurrentRetries places. */
  retriesQueued: number;
  /** Most retry attempts in flight at once (at most maxConcurrentRetries). */
  retryPeak: number;
  bytesPut: number;
  bytesGot: number;
}

const DEFAULTS = {
  attemptTimeoutMs: 30_000,
  operationTimeoutMs: 60_000,
  maxAttempts: 12,
  backoffBaseMs: 100,
  backoffMaxMs: 5_000,
  maxSockets: 64,
  listPageSize: 1000,
  maxConcurrentRetries: 8,
};

export class S3Backend implements Backend {
  readonly kind = 's3';
  readonly remote = true;
  readonly bucket: string;
  readonly prefix: string;
  readonly stats: S3Stats = {
    requests: 0,
    retries: 0,
    retryReasons: { serverError: 0, slowDown: 0, timeout: 0, connection: 0 },
    gaveUp: 0,
    failed: 0,
    retriesQueued: 0,
    retryPeak: 0,
    bytesPut: 0,
    bytesGot: 0,
  };
  private readonly client: S3Client;
  private readonly opts: typeof DEFAULTS;
  private closed = false;
  /** Retries in flight, and the ones waiting for a place (FIFO). */
  private retriesRunning = 0;
  private readonly retryWaiters: (() => void)[] = [];

  constructor(private readonly options: S3BackendOptions) {
    checkBucket(options.bucket);
    this.bucket = options.bucket;
    this.prefix = normalizePrefix(options.prefix ?? '');
    this.opts = {
      attemptTimeoutMs: options.attemptTimeoutMs ?? DEFAULTS.attemptTimeoutMs,
      operationTimeoutMs: options.operationTimeoutMs ?? DEFAULTS.operationTimeoutMs,
      maxAttempts: options.maxAttempts ?? DEFAULTS.maxAttempts,
      backoffBaseMs: options.backoffBaseMs ?? DEFAULTS.backoffBaseMs,
      backoffMaxMs: options.backoffMaxMs ?? DEFAULTS.backoffMaxMs,
      maxSockets: options.maxSockets ?? DEFAULTS.maxSockets,
      listPageSize: options.listPageSize ?? DEFAULTS.listPageSize,
      maxConcurrentRetries: Math.max(1, options.maxConcurrentRetries ?? DEFAULTS.maxConcurrentRetries),
    };
    const env = process.env;
    const customEndpoint = options.endpoint ?? env['AWS_ENDPOINT_URL_S3'] ?? env['AWS_ENDPOINT_URL'];
    const config: S3ClientConfig = {
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      forcePathStyle: options.forcePathStyle ?? customEndpoint !== undefined,
      maxAttempts: 1, // retries are ours (counted, one deadline)
      requestHandler: { httpAgent: { keepAlive: true, maxSockets: this.opts.maxSockets }, connectionTimeout: this.opts.attemptTimeoutMs },
    };
    if (options.endpoint !== undefined) config.endpoint = options.endpoint;
    if (options.credentials !== undefined) config.credentials = options.credentials;
    if (options.region !== undefined) config.region = options.region;
    else if (env['AWS_REGION'] === undefined && env['AWS_PROFILE'] === undefined && customEndpoint !== undefined) {
      // RGW and MinIO accept any region in the signature; the SDK refuses to sign without one.
      config.region = 'us-east-1';
    }
    this.client = new S3Client(config);
  }

  describe(key: string): string {
    return `s3://${this.bucket}/${this.prefix}${key}`;
  }

  counters(): BackendCounters {
    return { requests: this.stats.requests, retries: this.stats.retries, errors: this.stats.failed };
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    const Key = this.objectKey(key);
    await this.retrying(`put '${key}'`, key, async (signal) => {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.byteLength }), { abortSignal: signal });
    });
    this.stats.bytesPut += data.byteLength;
  }

  /**
   * Create `key` only if no object has that name (PUT with If-None-Match: *): true if
   * this call created it, false if it already existed. For the lease, which must be
   * taken by exactly one writer. When an attempt failed with an unknown outcome (no
   * answer, a 500) and a retry then finds the object, that attempt may have created
   * it: the object is read back and counts as ours if it holds exactly `data`
   * (callers make `data` unique, e.g. with a holder id and a nonce). AWS answers 409
   * ConditionalRequestConflict to a create racing another: retried, like a 5xx.
   */
  async createIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const Key = this.objectKey(key);
    let unanswered = false; // an attempt may have created it without our knowing
    const created = await this.retrying(
      `create '${key}'`,
      key,
      async (signal) => {
        try {
          await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.byteLength, IfNoneMatch: '*' }), {
            abortSignal: signal,
          });
          return true;
        } catch (err) {
          if (statusOf(err) === 412) return false;
          throw err;
        }
      },
      (reason) => {
        // Only a SlowDown says for sure that the PUT was turned away; after a lost
        // answer or a 500 it may have taken effect.
        if (reason !== 'slowDown') unanswered = true;
      },
    );
    if (created) {
      this.stats.bytesPut += data.byteLength;
      return true;
    }
    if (!unanswered) return false;
    try {
      return Buffer.from(data).equals(await this.get(key));
    } catch (err) {
      // Deleted in between: it was not ours to keep either way; the caller retries.
      if (err instanceof VbfsError && err.code === 'VBFS_NOT_FOUND') return false;
      throw err;
    }
  }

  async get(key: string, offset = 0, length?: number): Promise<Buffer> {
    const Key = this.objectKey(key);
    checkRange(offset, length);
    if (length === 0) {
      // Nothing to read, but a missing object must still be VBFS_NOT_FOUND.
      await this.retrying(`head '${key}'`, key, (signal) => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }), { abortSignal: signal }));
      return Buffer.alloc(0);
    }
    // Range end is inclusive; S3 cuts a range that runs past the end to the bytes that exist.
    const Range = length !== undefined ? `bytes=${offset}-${offset + length - 1}` : offset > 0 ? `bytes=${offset}-` : undefined;
    const got = await this.retrying(`get '${key}'`, key, async (signal, attemptDeadline) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, Range }), { abortSignal: signal });
        return await readBody(res.Body as Readable | undefined, attemptDeadline);
      } catch (err) {
        // A range that starts at or past the end: no bytes, as for a file.
        if (statusOf(err) === 416 && Range !== undefined) return Buffer.alloc(0);
        throw err;
      }
    });
    this.stats.bytesGot += got.length;
    return got;
  }

  /**
   * The whole object with two times from the server's clock: when it was last written
   * (Last-Modified) and the server's time of this answer (the HTTP Date header), both
   * in whole seconds. The lease judges expiry by their difference, so neither the
   * client's clock nor its skew against the writer's enters (src/backend/lease.ts).
   * `serverNowMs` falls back to the client's clock if a server sends no Date.
   */
  async getStamped(key: string): Promise<{ data: Buffer; modifiedMs: number; serverNowMs: number }> {
    const Key = this.objectKey(key);
    const got = await this.retrying(`get '${key}'`, key, async (signal, attemptDeadline) => {
      let date: string | undefined;
      const cmd = new GetObjectCommand({ Bucket: this.bucket, Key });
      cmd.middlewareStack.add(
        (next) => async (args) => {
          const out = await next(args);
          date = (out.response as { headers?: Record<string, string> }).headers?.['date'];
          return out;
        },
        { step: 'deserialize', name: 'vbfsServerDate' },
      );
      const res = await this.client.send(cmd, { abortSignal: signal });
      const data = await readBody(res.Body as Readable | undefined, attemptDeadline);
      const serverNow = date !== undefined ? Date.parse(date) : NaN;
      return { data, modifiedMs: res.LastModified?.getTime() ?? NaN, serverNowMs: Number.isFinite(serverNow) ? serverNow : Date.now() };
    });
    if (!Number.isFinite(got.modifiedMs)) throw new VbfsError('VBFS_IO', `S3 get '${key}': no Last-Modified in the answer`, { key });
    this.stats.bytesGot += got.data.length;
    return got;
  }

  async delete(key: string): Promise<void> {
    const Key = this.objectKey(key);
    await this.retrying(`delete '${key}'`, key, (signal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }), { abortSignal: signal }));
  }

  async list(prefix: string): Promise<string[]> {
    this.checkOpen();
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.retrying(`list '${prefix}'`, prefix, (signal) =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ContinuationToken: token, MaxKeys: this.opts.listPageSize }),
          { abortSignal: signal },
        ),
      );
      for (const o of page.Contents ?? []) if (o.Key !== undefined) out.push(o.Key.slice(this.prefix.length));
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return out.sort();
  }

  /** Create the bucket if it does not exist (tests, and later `vbfs create`). */
  async ensureBucket(): Promise<void> {
    this.checkOpen();
    try {
      await this.retrying('head bucket', '', (signal) => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal }));
      return;
    } catch (err) {
      if (!(err instanceof VbfsError && err.code === 'VBFS_NOT_FOUND')) throw err;
    }
    try {
      await this.retrying('create bucket', '', (signal) => this.client.send(new CreateBucketCommand({ Bucket: this.bucket }), { abortSignal: signal }));
    } catch (err) {
      // Created by someone else in between: fine.
      if (!(err instanceof VbfsError && ['BucketAlreadyOwnedByYou', 'BucketAlreadyExists'].includes(String(err.details['s3Code'])))) throw err;
    }
  }

  /**
   * Startup probe: does this store honour If-None-Match: * on PUT? A store that
   * silently overwrites (s3rver, old MinIO) would let two writers both "take" a lease.
   */
  async supportsConditionalCreate(): Promise<boolean> {
    const key = `.vbfs-probe-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    try {
      if (!(await this.createIfAbsent(key, Buffer.from('1')))) return false;
      return !(await this.createIfAbsent(key, Buffer.from('2'))) && (await this.get(key)).toString() === '1';
    } finally {
      await this.delete(key).catch(() => {});
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
    for (const b of this.leaseClients.values()) await b.close();
  }

  /** The lease clients made so far, by TTL (leaseBackend). */
  private readonly leaseClients = new Map<number, S3Backend>();

  /**
   * The same bucket through its own S3 client, for a lease of `ttlMs`: its own
   * sockets and retry places, so a renewal never queues behind chunk PUTs or their
   * retries, and attempt and operation deadlines within the TTL, so that one stuck
   * request cannot use it up (a renewal that fails is tried again while the lease lives).
   */
  leaseBackend(ttlMs: number): S3Backend {
    let b = this.leaseClients.get(ttlMs);
    if (!b) {
      const clamp = (v: number, lo: number, hi: number): number => Math.round(Math.min(hi, Math.max(lo, v)));
      b = new S3Backend({
        ...this.options,
        maxSockets: 4,
        maxConcurrentRetries: 4,
        // Long enough for a loaded server (a renewal that ends before the TTL still counts), short enough to retry within it.
        attemptTimeoutMs: clamp(ttlMs / 2, 1_000, 10_000),
        operationTimeoutMs: clamp((ttlMs * 2) / 3, 1_000, 20_000),
        backoffMaxMs: clamp(ttlMs / 20, 50, 1_000),
      });
      this.leaseClients.set(ttlMs, b);
    }
    return b;
  }

  /**
   * Run one S3 call with our retry policy: retry on 5xx, SlowDown, timeouts and
   * connection errors with full-jitter exponential backoff, until maxAttempts or the
   * operation deadline; everything else (404, 403, 412, ...) fails at once.
   * `fn` gets an abort signal that fires at the attempt's own deadline.
   */
  private async retrying<T>(
    what: string,
    key: string,
    fn: (signal: AbortSignal, attemptDeadline: number) => Promise<T>,
    onRetry?: (reason: RetryReason) => void,
  ): Promise<T> {
    this.checkOpen();
    const start = Date.now();
    const deadline = start + this.opts.operationTimeoutMs;
    try {
      for (let attempt = 1; ; attempt++) {
        // A retry waits for one of maxConcurrentRetries places, held for the attempt only.
        if (attempt > 1 && !(await this.takeRetryPlace(deadline)))
          throw this.gaveUp(what, key, new Error('no place for a retry before the deadline (maxConcurrentRetries)'), attempt - 1, start);
        let r: Awaited<ReturnType<typeof this.attempt<T>>>;
        try {
          r = await this.attempt(what, key, fn, attempt, start, deadline);
        } finally {
          if (attempt > 1) this.releaseRetryPlace();
        }
        if (r.done) return r.value;
        const { reason, lastErr } = r;
        const delay = Math.random() * Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** (attempt - 1));
        if (attempt >= this.opts.maxAttempts || Date.now() + delay >= deadline) throw this.gaveUp(what, key, lastErr, attempt, start);
        this.stats.retries++;
        this.stats.retryReasons[reason]++;
        onRetry?.(reason);
        await new Promise((res) => setTimeout(res, delay));
        this.checkOpen();
      }
    } catch (err) {
      if (!(err instanceof VbfsError && (err.code === 'VBFS_NOT_FOUND' || err.code === 'VBFS_CLOSED'))) this.stats.failed++;
      throw err;
    }
  }

  private gaveUp(what: string, key: string, lastErr: unknown, attempts: number, start: number): VbfsError {
    this.stats.gaveUp++;
    return this.s3Error(what, key, lastErr, attempts, start, true);
  }

  /**
   * One of maxConcurrentRetries places for a retry attempt. False if the deadline
   * passed while waiting. First attempts never wait: only retries are capped, so a
   * store that stops answering sees at most that many retries at once, whatever
   * the number of operations that want one.
   */
  private async takeRetryPlace(deadline: number): Promise<boolean> {
    if (this.retriesRunning < this.opts.maxConcurrentRetries) {
      this.retriesRunning++;
      this.stats.retryPeak = Math.max(this.stats.retryPeak, this.retriesRunning);
      return true;
    }
    this.stats.retriesQueued++;
    return new Promise<boolean>((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.retriesRunning++;
        this.stats.retryPeak = Math.max(this.stats.retryPeak, this.retriesRunning);
        resolve(true);
      };
      const timer = setTimeout(
        () => {
          const i = this.retryWaiters.indexOf(wake);
          if (i >= 0) this.retryWaiters.splice(i, 1);
          resolve(false);
        },
        Math.max(0, deadline - Date.now()),
      );
      this.retryWaiters.push(wake);
    });
  }

  private releaseRetryPlace(): void {
    this.retriesRunning--;
    this.retryWaiters.shift()?.();
  }

  /** One HTTP attempt with its own timeout: its value, or why it failed (retryable), or a throw (not retryable). */
  private async attempt<T>(
    what: string,
    key: string,
    fn: (signal: AbortSignal, attemptDeadline: number) => Promise<T>,
    attempt: number,
    start: number,
    deadline: number,
  ): Promise<{ done: true; value: T } | { done: false; reason: RetryReason; lastErr: unknown }> {
    const attemptDeadline = Math.min(deadline, Date.now() + this.opts.attemptTimeoutMs);
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new AttemptTimeout()), Math.max(0, attemptDeadline - Date.now()));
    this.stats.requests++;
    try {
      return { done: true, value: await fn(ac.signal, attemptDeadline) };
    } catch (err) {
      if (this.closed) throw new VbfsError('VBFS_CLOSED', 'backend is closed', { key }, { cause: err });
      const lastErr = ac.signal.aborted ? new AttemptTimeout() : err;
      const reason = retryReason(lastErr);
      if (reason === null) throw this.s3Error(what, key, lastErr, attempt, start);
      return { done: false, reason, lastErr };
    } finally {
      clearTimeout(timer);
    }
  }

  private s3Error(what: string, key: string, err: unknown, attempts: number, start: number, gaveUp = false): VbfsError {
    const status = statusOf(err);
    const s3Code = codeOf(err);
    const where = this.describe(key);
    const details = { key, url: where, bucket: this.bucket, status, s3Code, attempts, elapsedMs: Date.now() - start };
    const why = err instanceof Error ? err.message || err.name : String(err);
    if (s3Code === 'NoSuchBucket') {
      return new VbfsError('VBFS_IO', `S3 ${what}: bucket '${this.bucket}' does not exist`, details, { cause: err });
    }
    if (status === 404 || s3Code === 'NoSuchKey' || s3Code === 'NotFound') {
      return new VbfsError('VBFS_NOT_FOUND', `backend object '${key}' not found (${where})`, details, { cause: err });
    }
    if (gaveUp) {
      return new VbfsError(
        'VBFS_IO',
        `S3 ${what} (${where}) failed after ${attempts} attempts in ${details.elapsedMs} ms: ${why}`,
        { ...details, timedOut: err instanceof AttemptTimeout, gaveUp: true },
        { cause: err },
      );
    }
    return new VbfsError('VBFS_IO', `S3 ${what} (${where}): ${status !== undefined ? `HTTP ${status} ` : ''}${why}`, details, { cause: err });
  }

  private objectKey(key: string): string {
    this.checkOpen();
    validKey(key);
    return this.prefix + key;
  }

  private checkOpen(): void {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'backend is closed');
  }
}

type RetryReason = keyof S3Stats['retryReasons'];

class AttemptTimeout extends Error {
  constructor() {
    super('no answer within the attempt timeout');
    this.name = 'AttemptTimeout';
  }
}

const CONNECTION_ERRNOS = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

function retryReason(err: unknown): RetryReason | null {
  if (err instanceof AttemptTimeout) return 'timeout';
  const code = codeOf(err);
  if (code === 'SlowDown' || code === 'ThrottlingException' || code === 'RequestLimitExceeded' || statusOf(err) === 429 || statusOf(err) === 503) {
    return 'slowDown';
  }
  const status = statusOf(err);
  if ((status !== undefined && status >= 500) || code === 'ConditionalRequestConflict') return 'serverError';
  // Network failures carry no HTTP status; look through the cause chain for an errno.
  // (Before the name check: the SDK renames a reset connection to 'TimeoutError'.)
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 5; depth++) {
    const errno = (e as NodeJS.ErrnoException).code;
    if (typeof errno === 'string' && CONNECTION_ERRNOS.has(errno)) return errno === 'ETIMEDOUT' ? 'timeout' : 'connection';
    if (e instanceof Error && /socket hang up|premature close/i.test(e.message)) return 'connection';
    e = (e as { cause?: unknown }).cause;
  }
  if (code === 'RequestTimeout' || (err instanceof Error && err.name === 'TimeoutError')) return 'timeout';
  return null;
}

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

function codeOf(err: unknown): string | undefined {
  const e = err as { name?: string; Code?: string } | undefined;
  if (e === undefined || e === null) return undefined;
  if (statusOf(err) === undefined) return undefined; // not an answer from the server
  return e.Code ?? e.name;
}

/** The whole body, or a rejection if it has not arrived by `deadline`. */
async function readBody(body: Readable | undefined, deadline: number): Promise<Buffer> {
  if (body === undefined) return Buffer.alloc(0);
  return new Promise<Buffer>((resolve, reject) => {
    const parts: Buffer[] = [];
    const timer = setTimeout(() => body.destroy(new AttemptTimeout()), Math.max(0, deadline - Date.now()));
    body.on('data', (c: Buffer) => parts.push(c));
    body.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    body.once('end', () => {
      clearTimeout(timer);
      resolve(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts));
    });
  });
}

/** `s3://BUCKET/PREFIX` (prefix optional) into bucket and normalized prefix ('' or 'a/b/'). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (m === null) throw new VbfsError('VBFS_INVALID_ARGUMENT', `not an s3:// URL: '${url}' (expected s3://BUCKET/PREFIX)`, { url });
  const bucket = m[1] as string;
  checkBucket(bucket);
  return { bucket, prefix: normalizePrefix(m[2] ?? '') };
}

function checkBucket(bucket: string): void {
  // S3's naming rules; RGW and MinIO accept these too.
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes('..')) {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid bucket name '${bucket}' (3-63 of a-z 0-9 . -)`, { bucket });
  }
}

function normalizePrefix(prefix: string): string {
  const trimmed = prefix.replace(/\/+$/, '');
  if (trimmed === '') return '';
  try {
    validKey(trimmed);
  } catch {
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid S3 key prefix '${prefix}'`, { prefix });
  }
  return `${trimmed}/`;
}
