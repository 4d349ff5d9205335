import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { VbfsError } from '../errors';
import type { OpenReply, OpenRequest, SealReply, SealRequest } from './cipher-worker';
import type { VolumeCipher } from './volume-cipher';

/**
 * Opening (authenticating and decrypting) sealed records off the event loop. One
 * AES-256-GCM open of a 4 KiB record costs about 5-10 µs of CPU in Node (most of it
 * per-call overhead, not AES), so a 1 MiB run is 256 of them: 1.5-2.5 ms during which
 * the event loop would serve no FUSE request. Readahead runs (and very large runs)
 * go to one worker thread instead, as one message with the run's buffer
 * transferred, and the main thread serves requests meanwhile (the next window is
 * opened while the reads before it are answered). See reader.ts for which runs.
 *
 * Sealing: a large buffered write's records are sealed here too (seal()), as one
 * batch, in place in the write buffer's shared memory; the write is acknowledged once its plaintext is in the write buffer and
 * the writer appends the sealed records to the WAL, in seq order, when the batch
 * comes back (writer.ts). Small writes are sealed inline: a trip to the worker
 * costs more than sealing one record.
 *
 * The worker starts on first use and keeps the process alive only while a run is
 * in it. close() ends it. A worker that dies fails its runs with VBFS_IO and is
 * started again on the next run.
 */
/** Run buffers kept for reuse: the readaheads in flight, and a read's own run. */
const SPARE_RUN_BUFFERS = 8;
const RUN_BUFFER_ROUND = 64 * 1024;

export class CipherPool {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (r: OpenReply & SealReply) => void; reject: (e: Error) => void }>();
  private closed = false;
  /** Runs opened in the worker so far (tests and benches look). */
  runsOpened = 0;
  /** Batches sealed in the worker so far (tests and benches look). */
  batchesSealed = 0;
  /** Run buffers allocated so far (the others were reused; tests look). */
  runBuffersAllocated = 0;
  /** Run buffers back from the worker, for the next open() (giveBack). */
  private readonly spareRuns: ArrayBuffer[] = [];

  constructor(private readonly cipher: VolumeCipher) {}

  /**
   * Open `count` sealed records of `run` in a worker. Returns a new buffer with each
   * plaintext at its record's payload offset, and per record 1 (opened) or 0 (failed
   * authentication: its bytes zeroed). `run` itself is left untouched (it is copied:
   * a backend may hand out buffers it still holds).
   */
  async open(run: Buffer, meta: Float64Array, offs: Uint32Array, lens: Uint32Array): Promise<{ buf: Buffer; ok: Uint8Array }> {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'cipher pool is closed');
    const own = this.takeRunBuffer(run.length);
    run.copy(Buffer.from(own), 0, 0, run.length);
    const reply = await this.request<OpenReply>({ op: 'open', id: 0, meta, offs, lens, buf: own });
    this.runsOpened++;
    return { buf: Buffer.from(reply.buf, 0, run.length), ok: reply.ok };
  }

  /**
   * The caller is done with a buffer open() returned (no view of it is used any
   * more): a later run reuses it. A fresh 1 MiB buffer per run costs a page fault
   * per 4 KiB page on its first touch, measured at more than the copy into it.
   */
  giveBack(buf: Buffer): void {
    const ab = buf.buffer;
    if (this.spareRuns.length >= SPARE_RUN_BUFFERS || !(ab instanceof ArrayBuffer)) return;
    this.spareRuns.push(ab);
  }

  /** A run buffer (its own ArrayBuffer, so it can be transferred) of at least `n` bytes. */
  private takeRunBuffer(n: number): ArrayBuffer {
    for (let i = this.spareRuns.length - 1; i >= 0; i--) {
      const ab = this.spareRuns[i] as ArrayBuffer;
      if (ab.byteLength >= n) {
        this.spareRuns.splice(i, 1);
        return ab;
      }
    }
    // Rounded up, so runs of slightly different lengths share buffers.
    this.runBuffersAllocated++;
    return new ArrayBuffer(Math.max(1, Math.ceil(n / RUN_BUFFER_ROUND)) * RUN_BUFFER_ROUND);
  }

  /**
   * Seal records in the worker, in place in shared memory (the write buffer):
   * see SealRequest (cipher-worker.ts) for where each payload is and where its
   * sealed payload goes; `meta` holds their block, seq and flags. The nonces are
   * the records' own, exactly as an inline seal. Resolves when every sealed
   * payload is in place; until then the caller must neither read the sealed
   * rooms nor change the payloads.
   */
  async seal(mem: SharedArrayBuffer[], meta: Float64Array, lens: Uint32Array, src: Uint32Array, dst: Uint32Array): Promise<void> {
    if (this.closed) throw new VbfsError('VBFS_CLOSED', 'cipher pool is closed');
    await this.request<SealReply>({ op: 'seal', id: 0, meta, lens, mem, src, dst });
    this.batchesSealed++;
  }

  private request<R>(req: OpenRequest | SealRequest): Promise<R> {
    const id = this.nextId++;
    const w = this.ensure();
    return new Promise<R>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (r: OpenReply & SealReply) => void, reject });
      if (this.waiting.size === 1) w.ref();
      req.id = id;
      w.postMessage(req, req.op === 'seal' ? [] : [req.buf]);
    });
  }

  private ensure(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(path.join(__dirname, 'cipher-worker.js'));
    w.unref();
    w.postMessage({ init: this.cipher.forWorker() });
    w.on('message', (r: OpenReply & SealReply) => {
      const p = this.waiting.get(r.id);
      if (!p) return;
      this.waiting.delete(r.id);
      if (this.waiting.size === 0) w.unref();
      p.resolve(r);
    });
    const fail = (why: string): void => {
      if (this.worker === w) this.worker = null;
      const err = new VbfsError('VBFS_IO', `crypto worker ${why}`);
      for (const p of this.waiting.values()) p.reject(err);
      this.waiting.clear();
    };
    w.on('error', (e: Error) => fail(`failed: ${e.message}`));
    w.on('exit', (code) => fail(`exited (code ${code})`));
    this.worker = w;
    return w;
  }

  /** End the worker (runs still in it fail). */
  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}
