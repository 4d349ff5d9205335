const KiB = 1024;
/** Smallest buffer handed out: a lone 4 KiB record shares the class of a 64 KiB run. */
const MIN_CLASS = 64 * KiB;
/** Runs longer than this are read into a buffer of their own (rare: a run is at most MAX_RUN_BYTES of blocks). */
const MAX_CLASS = 4096 * KiB;

/**
 * Buffers for backend reads of chunk runs, reused from read to read. A fresh
 * Buffer per read costs more than the read: its pages are faulted in and zeroed
 * by the kernel on the first copy into them, and the garbage collector runs
 * after every few MiB of them (measured through a mount: 245 us of CPU per
 * 128 KiB read into a fresh buffer, 57 us into a reused one). Buffers come in
 * power-of-two size classes, and at most `perClass` of each are kept (what is
 * handed out beyond that is simply dropped when given back), so what is kept is
 * bounded (about 8 x 4 MiB with the defaults, usually far less: what the reads in
 * flight at once needed).
 */
export class RunBuffers {
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;

  constructor(private readonly perClass = 4) {}

  /** A buffer of at least `length` bytes (use its first `length`); give() it back when no view of it is used any more. */
  take(length: number): Buffer {
    const cls = RunBuffers.classOf(length);
    if (cls === 0) return Buffer.allocUnsafeSlow(length);
    const list = this.free.get(cls);
    const b = list?.pop();
    if (b) {
      this.kept -= b.length;
      return b;
    }
    return Buffer.allocUnsafeSlow(cls);
  }

  /**
   * Keep `buf` (from take()) for a later read. Never give back a buffer that a read
   * may still write into (a read given up on after a timeout), nor one whose memory
   * was transferred to a worker (it is detached: length 0).
   */
  give(buf: Buffer): void {
    const cls = buf.length;
    if (cls === 0 || RunBuffers.classOf(cls) !== cls) return;
    let list = this.free.get(cls);
    if (!list) this.free.set(cls, (list = []));
    if (list.length >= this.perClass) return;
    list.push(buf);
    this.kept += cls;
  }

  /** Bytes kept for reuse. */
  get bytes(): number {
    return this.kept;
  }

  /** Drop what is kept (an idle volume holds no buffers). */
  trim(): void {
    this.free.clear();
    this.kept = 0;
  }

  /** The power-of-two class for `length` bytes, 0 above MAX_CLASS. */
  private static classOf(length: number): number {
    if (length > MAX_CLASS) return 0;
    let c = MIN_CLASS;
    while (c < length) c *= 2;
    return c;
  }
}
