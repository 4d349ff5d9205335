/**
 * `npm run bench:engine`: the engine through the library API, no FUSE.
 *
 *  1. 4 KiB random writes/s and 1 MiB sequential MiB/s per durability mode (real disk).
 *  2. Slow-device simulation: every fdatasync/fsync takes an extra 2 ms (SD card) or
 *     10 ms (WSL); "ms per 4 KiB block" for strict, batched and relaxed, like the
 *     table in reference/viperblock-optimisations.md.
 *  3. WAL write calls and syncs per block, counted by the file layer (bench/slow-file-io.ts).
 *  4. Bytes allocated per block written in steady state (process.memoryUsage deltas).
 *  5. Peak RSS while writing 4 GiB (--rss-size), against the configured memory bound.
 *  6. Slow disk write latency: the whole store on a disk throttled to 4 MB/s
 *     (--slow-disk-mbps), async durability, sequential 128 KiB writes of 4x the
 *     write buffer; p50/p99/max of each write's latency (the steady state of a
 *     writer that outruns the disk: how long does one write wait for the flusher?).
 *  7. Index bytes per block (scattered over 16 TiB / sequential / mixed), checkpoint
 *     bytes per block and open time per million mapped blocks (bench/index-cost.ts).
 *  8. Encryption at rest: plain vs encrypted volume, 4 KiB random write, 1 MiB
 *     sequential write and read, alternating rounds, medians and ratios
 *     (bench/encryption-bench.ts; alone: --only-encryption).
 *
 * One writer awaits each write in turn (the shape of the reference's loop and of
 * the kernel's one-write-at-a-time FUSE requests).
 *
 *   npm run bench:engine                 (~3 min)
 *   npm run bench:engine -- --quick      (~1 min)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { Store } from '../src/store/store';
import { DEFAULT_TUNABLES, type Volume } from '../src/store/volume';
import type { Durability } from '../src/types';
import { type IoCounts, SlowFileIO, diffCounts } from './slow-file-io';
import { parseSize } from './null-fuse';
import { PATTERNS, indexCost, indexCostTable, type IndexCostRow } from './index-cost';
import { encryptionCost, encryptionTable } from './encryption-bench';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 4 * KiB;
const REPO = path.resolve(__dirname, '..', '..');

/** The commit the numbers belong to (and whether the tree had local changes). */
function gitDescribe(): string {
  const git = (args: string[]): string => {
    try {
      return execFileSync('git', args, { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return '';
    }
  };
  const head = git(['rev-parse', '--short', 'HEAD']) || 'unknown';
  return `${head}${git(['status', '--porcelain', '--untracked-files=no']) ? ' (with uncommitted changes)' : ''}`;
}

function log(msg: string): void {
  process.stderr.write(`[engine ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

interface Opened {
  store: Store;
  vol: Volume;
  io: SlowFileIO;
  dir: string;
}

async function openFresh(scratch: string, name: string, durability: Durability, size: number, delayMs = 0): Promise<Opened> {
  const dir = path.join(scratch, name);
  fs.rmSync(dir, { recursive: true, force: true });
  const io = new SlowFileIO(delayMs);
  const store = await Store.open(dir, { fileIO: io });
  await store.createVolume('v', { size, durability });
  const vol = await store.openVolume('v');
  return { store, vol, io, dir };
}

async function closeAll(o: Opened): Promise<void> {
  await o.vol.close();
  await o.store.close();
  fs.rmSync(o.dir, { recursive: true, force: true });
}

function randomBlockOffset(span: number): number {
  return Math.floor(Math.random() * (span / BS)) * BS;
}

interface Throughput {
  mode: Durability;
  writesPerSec4k: number;
  mibps4k: number;
  p50us4k: number;
  p99us4k: number;
  mibpsSeq1m: number;
  walWritesPerBlock: number;
  walSyncsPerBlock: number;
  walWrites: number;
  walSyncs: number;
  writes4k: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function throughput(scratch: string, mode: Durability, seconds: number): Promise<Throughput> {
  const o = await openFresh(scratch, `tp-${mode}`, mode, 4 * 1024 * MiB);
  try {
    const buf = Buffer.alloc(BS, 0x5a);
    const lat = new Float64Array(5_000_000);
    let n = 0;
    const c0 = o.io.snapshot();
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    for (let now = t0; now < end;) {
      buf.writeUInt32LE(n, 0);
      await o.vol.write(randomBlockOffset(256 * MiB), buf);
      const t = performance.now();
      if (n < lat.length) lat[n] = t - now;
      now = t;
      n++;
    }
    await o.vol.fsync();
    const secs = (performance.now() - t0) / 1000;
    const c = diffCounts(c0, o.io.snapshot());
    const sorted = lat.subarray(0, Math.min(n, lat.length)).sort();

    // 1 MiB sequential writes, from offset 512 MiB on (past the random area). Flush
    // the random phase's backlog first (untimed): otherwise the modes that wrote
    // most in the random phase (async) measure draining it, not sequential writes.
    await o.vol.flush();
    const big = Buffer.alloc(MiB, 0xa5);
    let bytes = 0;
    const s0 = performance.now();
    const sEnd = s0 + seconds * 1000;
    for (let off = 512 * MiB; performance.now() < sEnd && off + MiB <= o.vol.size; off += MiB) {
      big.writeUInt32LE(off / MiB, 0);
      await o.vol.write(off, big);
      bytes += MiB;
    }
    await o.vol.fsync();
    const sSecs = (performance.now() - s0) / 1000;
    return {
      mode,
      writesPerSec4k: n / secs,
      mibps4k: (n * BS) / MiB / secs,
      p50us4k: percentile(sorted, 50) * 1000,
      p99us4k: percentile(sorted, 99) * 1000,
      mibpsSeq1m: bytes / MiB / sSecs,
      walWritesPerBlock: c.walWrites / n,
      walSyncsPerBlock: c.walSyncs / n,
      walWrites: c.walWrites,
      walSyncs: c.walSyncs,
      writes4k: n,
    };
  } finally {
    await closeAll(o);
  }
}

interface SlowRow {
  delayMs: number;
  mode: Durability;
  /** the writer yields to the event loop (setImmediate) after every write */
  yields: boolean;
  walSyncs: number;
  blocks: number;
  msPerBlock: number;
  walWritesPerBlock: number;
  walSyncsPerBlock: number;
  blocksPerWalWrite: number;
  fsyncEvery?: number;
}

/** Sequential 4 KiB blocks (block++), like the reference's loop; ends with an fsync. */
async function slowDevice(
  scratch: string,
  mode: Durability,
  delayMs: number,
  seconds: number,
  maxBlocks: number,
  relaxedEvery: number,
  yields = false,
): Promise<SlowRow> {
  const o = await openFresh(scratch, `slow-${mode}-${delayMs}`, mode, 2 * 1024 * MiB, delayMs);
  try {
    const buf = Buffer.alloc(BS, 0x33);
    const c0 = o.io.snapshot();
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    let n = 0;
    while (n < maxBlocks && performance.now() < end) {
      buf.writeUInt32LE(n, 0);
      await o.vol.write(n * BS, buf);
      n++;
      if (mode === 'relaxed' && n % relaxedEvery === 0) await o.vol.fsync();
      // Requests from FUSE arrive as separate event-loop turns; a tight await loop
      // only runs microtasks, which can starve the engine's timers and I/O callbacks.
      if (yields) await new Promise((r) => setImmediate(r));
    }
    await o.vol.fsync();
    const ms = performance.now() - t0;
    const c: IoCounts = diffCounts(c0, o.io.snapshot());
    return {
      delayMs,
      mode,
      yields,
      walSyncs: c.walSyncs,
      blocks: n,
      msPerBlock: ms / n,
      walWritesPerBlock: c.walWrites / n,
      walSyncsPerBlock: c.walSyncs / n,
      blocksPerWalWrite: c.walWrites ? n / c.walWrites : NaN,
      fsyncEvery: mode === 'relaxed' ? relaxedEvery : undefined,
    };
  } finally {
    await closeAll(o);
  }
}

interface SlowDiskRow {
  mbps: number;
  writeBufferMiB: number;
  writeKiB: number;
  writtenMiB: number;
  seconds: number;
  mibps: number;
  p50ms: number;
  p99ms: number;
  maxMs: number;
  /** seconds the throttled disk needs to write the whole write buffer once */
  bufferAtDiskSpeedS: number;
}

/**
 * A writer that outruns a slow disk: the store's FileIO (WAL, chunk objects, map)
 * shares one throttled bandwidth, like a store on an SD card or a throttled loop
 * device. Every write is timed; what matters is the tail: a FUSE write that waits
 * for a whole write buffer to reach the disk hits the kernel's hung-task timer.
 */
async function slowDiskLatency(scratch: string, mbps: number, writeBufferBytes: number, writeSize: number): Promise<SlowDiskRow> {
  const dir = path.join(scratch, 'slow-disk');
  fs.rmSync(dir, { recursive: true, force: true });
  const io = new SlowFileIO(0);
  const store = await Store.open(dir, { fileIO: io });
  await store.createVolume('v', { size: 8 * writeBufferBytes, durability: 'async' });
  const vol = await store.openVolume('v', { writeBufferBytes });
  io.writeBytesPerSec = mbps * 1e6;
  const total = 4 * writeBufferBytes;
  const lat = new Float64Array(total / writeSize);
  try {
    const buf = Buffer.alloc(writeSize, 0x42);
    const t0 = performance.now();
    let lastLog = t0;
    for (let i = 0; i < lat.length; i++) {
      buf.writeUInt32LE(i, 0);
      const s = performance.now();
      await vol.write(i * writeSize, buf);
      const e = performance.now();
      lat[i] = e - s;
      if (e - lastLog > 10_000) {
        lastLog = e;
        log(`  slow disk: ${Math.round(((i + 1) * writeSize) / MiB)} of ${total / MiB} MiB written`);
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    const sorted = lat.slice().sort();
    return {
      mbps,
      writeBufferMiB: writeBufferBytes / MiB,
      writeKiB: writeSize / KiB,
      writtenMiB: total / MiB,
      seconds,
      mibps: total / MiB / seconds,
      p50ms: percentile(sorted, 50),
      p99ms: percentile(sorted, 99),
      maxMs: sorted[sorted.length - 1] as number,
      bufferAtDiskSpeedS: writeBufferBytes / (mbps * 1e6),
    };
  } finally {
    io.writeBytesPerSec = 0; // close flushes what is left at full speed: not measured
    await vol.close();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface AllocRow {
  blocks: number;
  /** Buffer.alloc/allocUnsafe/allocUnsafeSlow/concat/from calls and bytes, counted by wrapping them */
  bufferAllocsPerBlock: number;
  bufferBytesPerBlock: number;
  /** the most frequent allocation kinds: "alloc(4194304)": count */
  bufferAllocSizes: Record<string, number>;
  windows: number;
  windowsWithoutGc: number;
  heapBytesPerBlock: number;
  arrayBufferBytesPerBlock: number;
  externalBytesPerBlock: number;
  gcExposed: boolean;
}

function medianOf(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/**
 * Counts Buffer allocations made through the Buffer factory functions while
 * `fn` runs (independent of GC timing). Typed arrays made with `new` and native
 * buffers are not seen; the memoryUsage windows below cover those.
 */
async function countBufferAllocs(fn: () => Promise<void>): Promise<{ calls: number; bytes: number; sizes: Record<string, number> }> {
  const B = Buffer as unknown as Record<string, (...a: unknown[]) => Buffer>;
  const names = ['alloc', 'allocUnsafe', 'allocUnsafeSlow', 'concat', 'from'];
  const saved = names.map((n) => B[n] as (...a: unknown[]) => Buffer);
  let calls = 0;
  let bytes = 0;
  const sizes: Record<string, number> = {};
  names.forEach((n, i) => {
    const orig = saved[i] as (...a: unknown[]) => Buffer;
    B[n] = function (this: unknown, ...a: unknown[]): Buffer {
      const out = orig.apply(Buffer, a);
      // Buffer.from(arrayBuffer) is a view, not an allocation.
      if (!(n === 'from' && a[0] instanceof ArrayBuffer)) {
        calls++;
        bytes += out.length;
        const key = `${n}(${out.length})`;
        sizes[key] = (sizes[key] ?? 0) + 1;
      }
      return out;
    };
  });
  try {
    await fn();
  } finally {
    names.forEach((n, i) => (B[n] = saved[i] as (...a: unknown[]) => Buffer));
  }
  return { calls, bytes, sizes };
}

/**
 * Steady-state allocation: after a warm-up (WAL buffer pool, arena slabs, index
 * pages all exist), write in windows of `blocks / 20` blocks and read the growth
 * of the JS heap and of ArrayBuffer memory across each window. A GC inside a
 * window would hide allocations, so windows in which v8.GCProfiler saw a GC are
 * dropped, and the figure is the median of the clean windows (bytes per block).
 * Chunk flushes happen inside the windows too, so their buffers count.
 */
async function allocation(scratch: string, blocks: number): Promise<AllocRow> {
  const o = await openFresh(scratch, 'alloc', 'batched', 2 * 1024 * MiB);
  const gc = (globalThis as { gc?: () => void }).gc;
  try {
    const buf = Buffer.alloc(BS, 0x77);
    for (let i = 0; i < blocks; i++) await o.vol.write(randomBlockOffset(64 * MiB), buf);
    await o.vol.fsync();
    const counted = await countBufferAllocs(async () => {
      for (let i = 0; i < blocks; i++) await o.vol.write(randomBlockOffset(64 * MiB), buf);
    });
    const per = Math.max(100, Math.floor(blocks / 20));
    const heap: number[] = [];
    const ab: number[] = [];
    const ext: number[] = [];
    let windows = 0;
    for (let done = 0; done < blocks; done += per) {
      windows++;
      gc?.();
      const prof = new v8.GCProfiler();
      prof.start();
      const m0 = process.memoryUsage();
      for (let i = 0; i < per; i++) await o.vol.write(randomBlockOffset(64 * MiB), buf);
      const m1 = process.memoryUsage();
      const gcs = prof.stop().statistics.length;
      if (gcs > 0) continue;
      heap.push((m1.heapUsed - m0.heapUsed) / per);
      ab.push((m1.arrayBuffers - m0.arrayBuffers) / per);
      ext.push((m1.external - m0.external) / per);
    }
    return {
      blocks,
      windows,
      windowsWithoutGc: heap.length,
      bufferAllocsPerBlock: counted.calls / blocks,
      bufferBytesPerBlock: counted.bytes / blocks,
      bufferAllocSizes: Object.fromEntries(
        Object.entries(counted.sizes)
          .sort((a, b) => b[1] - a[1])
          .slice(0, 8),
      ),
      heapBytesPerBlock: medianOf(heap),
      arrayBufferBytesPerBlock: medianOf(ab),
      externalBytesPerBlock: medianOf(ext),
      gcExposed: gc !== undefined,
    };
  } finally {
    await closeAll(o);
  }
}

interface RssRow {
  bytesWritten: number;
  seconds: number;
  mibps: number;
  rssBeforeMiB: number;
  peakRssMiB: number;
  peakHeapMiB: number;
  peakArrayBuffersMiB: number;
  configuredBoundMiB: number;
}

async function peakRss(scratch: string, total: number): Promise<RssRow> {
  const o = await openFresh(scratch, 'rss', 'batched', Math.max(total * 2, 2 * 1024 * MiB));
  let peak = 0;
  let peakHeap = 0;
  let peakAb = 0;
  const sample = (): void => {
    const m = process.memoryUsage();
    peak = Math.max(peak, m.rss);
    peakHeap = Math.max(peakHeap, m.heapUsed);
    peakAb = Math.max(peakAb, m.arrayBuffers);
  };
  const timer = setInterval(sample, 50);
  try {
    (globalThis as { gc?: () => void }).gc?.();
    const before = process.memoryUsage().rss;
    const big = Buffer.alloc(MiB, 0x11);
    const t0 = performance.now();
    let lastLog = t0;
    for (let off = 0; off < total; off += MiB) {
      big.writeUInt32LE(off / MiB, 0);
      await o.vol.write(off, big);
      if (performance.now() - lastLog > 10_000) {
        lastLog = performance.now();
        log(`  rss: ${Math.round(off / MiB)} MiB written, rss ${Math.round(process.memoryUsage().rss / MiB)} MiB`);
      }
    }
    await o.vol.fsync();
    const seconds = (performance.now() - t0) / 1000;
    sample();
    return {
      bytesWritten: total,
      seconds,
      mibps: total / MiB / seconds,
      rssBeforeMiB: before / MiB,
      peakRssMiB: peak / MiB,
      peakHeapMiB: peakHeap / MiB,
      peakArrayBuffersMiB: peakAb / MiB,
      configuredBoundMiB: (DEFAULT_TUNABLES.writeBufferBytes + DEFAULT_TUNABLES.cacheBytes) / MiB,
    };
  } finally {
    clearInterval(timer);
    await closeAll(o);
  }
}

function table(header: string[], rows: (string | number)[][]): string {
  const s = rows.map((r) => r.map(String));
  const w = header.map((h, i) => Math.max(h.length, ...s.map((r) => (r[i] ?? '').length)));
  const line = (c: string[]): string => `| ${c.map((x, i) => (i === 0 ? x.padEnd(w[i] ?? 0) : x.padStart(w[i] ?? 0))).join(' | ')} |`;
  return [line(header), `|${w.map((x, i) => (i === 0 ? '-'.repeat(x + 2) : `${'-'.repeat(x + 1)}:`)).join('|')}|`, ...s.map(line)].join('\n');
}

const f1 = (x: number): string => (Number.isFinite(x) ? (x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(1)) : '-');
const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : '-');

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName('npm run bench:engine --')
    .option('quick', { type: 'boolean', default: false })
    .option('seconds', { type: 'number', describe: 'seconds per timed section (default 3, 1 with --quick)' })
    .option('delays', { type: 'string', default: '2,10', describe: 'extra ms per fdatasync to simulate' })
    .option('relaxed-every', { type: 'number', default: 1024, describe: "relaxed mode: fsync every N blocks (1024 x 4 KiB = the reference loop's 4 MB flush)" })
    .option('alloc-blocks', { type: 'number', default: 20_000 })
    .option('rss-size', { type: 'string', describe: 'bytes to write for the peak-RSS test (default 4G, 1G with --quick)' })
    .option('slow-disk-mbps', { type: 'number', default: 4, describe: 'slow disk write latency: disk bandwidth in MB/s' })
    .option('slow-disk-buffer', { type: 'string', describe: 'slow disk write latency: write buffer (default 32M, 16M with --quick); 4x this is written' })
    .option('only-slow-disk', { type: 'boolean', default: false, describe: 'run only the slow disk write latency section' })
    .option('only-slow-device', { type: 'boolean', default: false, describe: 'run only the slow-device simulation (+N ms per fdatasync, --delays)' })
    .option('index-blocks', { type: 'number', describe: 'mapped blocks per pattern in the index section (default 1000000, 200000 with --quick)' })
    .option('only-index', { type: 'boolean', default: false, describe: 'run only the index bytes per block / open time section' })
    .option('only-encryption', { type: 'boolean', default: false, describe: 'run only the encryption cost section (plain vs encrypted)' })
    .option('enc-rounds', { type: 'number', default: 3, describe: 'encryption cost: alternating rounds per side (medians)' })
    .option('dir', { type: 'string', default: path.join(REPO, 'bench', 'results', 'tmp', 'engine') })
    .option('out', { type: 'string', default: path.join(REPO, 'bench', 'results') })
    .strict()
    .help()
    .parseAsync();
  const seconds = argv.seconds ?? (argv.quick ? 1 : 3);
  const rssSize = parseSize(argv['rss-size'] ?? (argv.quick ? '1G' : '4G'));
  const delays = argv.delays.split(',').map(Number);
  fs.mkdirSync(argv.dir, { recursive: true });
  if (!(globalThis as { gc?: unknown }).gc) log('note: run with node --expose-gc for the allocation figures (npm run bench:engine does)');

  const started = new Date();
  const slowDiskBuffer = parseSize(argv['slow-disk-buffer'] ?? (argv.quick ? '16M' : '32M'));
  const slowDiskSection = async (): Promise<{ row: SlowDiskRow; md: string }> => {
    log(`slow disk write latency: ${argv['slow-disk-mbps']} MB/s, write buffer ${slowDiskBuffer / MiB} MiB`);
    const row = await slowDiskLatency(argv.dir, argv['slow-disk-mbps'], slowDiskBuffer, 128 * KiB);
    const md = [
      `\nSlow disk write latency: the whole store (WAL, chunks, map) on one disk throttled to ${row.mbps} MB/s, async durability, write buffer ${row.writeBufferMiB} MiB, one writer writing ${row.writtenMiB} MiB (4x the buffer) sequentially in ${row.writeKiB} KiB writes, each awaited. The disk needs ${f1(row.bufferAtDiskSpeedS)} s to write the whole buffer once.\n`,
      table(
        ['disk MB/s', 'write buffer MiB', 'written MiB', 'MiB/s', 'p50 ms', 'p99 ms', 'max ms', 'buffer at disk speed s'],
        [[row.mbps, row.writeBufferMiB, row.writtenMiB, f1(row.mibps), f3(row.p50ms), f1(row.p99ms), f1(row.maxMs), f1(row.bufferAtDiskSpeedS)]],
      ),
    ].join('\n');
    return { row, md };
  };
  const indexBlocks = argv['index-blocks'] ?? (argv.quick ? 200_000 : 1_000_000);
  const indexSection = async (): Promise<{ rows: IndexCostRow[]; md: string; checks: string[] }> => {
    const rows: IndexCostRow[] = [];
    for (const p of PATTERNS) {
      log(`index bytes per block: ${p}, ${indexBlocks} blocks`);
      rows.push(await indexCost(p, indexBlocks, argv.dir));
    }
    const md = [
      `\nIndex bytes per block: ${indexBlocks} mapped 4 KiB blocks per pattern on a 16 TiB volume (scattered: single blocks at random; sequential: blocks 0..n-1; mixed: half in random runs of 1..256 blocks, half scattered), placed as flushes place them (1024 per chunk). Index memory measured (heap + ArrayBuffers growth after GC, the index alive) and as the index reports it; checkpoint of 90% of the blocks, map log of the rest; open = checkpoint load + log replay into a fresh index (wall time on this machine, and CPU time).\n`,
      indexCostTable(rows),
    ].join('\n');
    const by = (p: string): IndexCostRow | undefined => rows.find((r) => r.pattern === p);
    const checks: string[] = [];
    const sc = by('scattered');
    const sq = by('sequential');
    const mx = by('mixed');
    if (sc && sq && mx) {
      const worst = Math.max(sc.measuredBytesPerBlock, sq.measuredBytesPerBlock, mx.measuredBytesPerBlock);
      checks.push(
        `index: ${worst.toFixed(1)} bytes per block at worst over scattered/sequential/mixed (target <= 32: ${worst <= 32 ? 'met' : 'NOT met'}); sequential ${sq.measuredBytesPerBlock.toFixed(2)} (target <= 8: ${sq.measuredBytesPerBlock <= 8 ? 'met' : 'NOT met'})`,
      );
      checks.push(
        `checkpoint: ${sc.checkpointBytesPerBlock.toFixed(1)} bytes per scattered block (target <= 40: ${sc.checkpointBytesPerBlock <= 40 ? 'met' : 'NOT met'}), ${sq.checkpointBytesPerBlock.toFixed(3)} per sequential block (target <= 2: ${sq.checkpointBytesPerBlock <= 2 ? 'met' : 'NOT met'})`,
      );
      const slowest = Math.max(sc.openSecondsPerMillion, sq.openSecondsPerMillion, mx.openSecondsPerMillion);
      const slowestCpu = Math.max(sc.openCpuSecondsPerMillion, sq.openCpuSecondsPerMillion, mx.openCpuSecondsPerMillion);
      checks.push(
        `open: ${slowest.toFixed(2)} s wall (${slowestCpu.toFixed(2)} s CPU) per million mapped blocks at worst (target <= 2 s: ${slowest <= 2 ? 'met' : slowestCpu <= 2 ? 'met in CPU time; wall time includes waiting for a core on this machine' : 'NOT met'}); ${Math.max(sc.openMeasuredBytesPerBlock, mx.openMeasuredBytesPerBlock).toFixed(1)} bytes per block held after the open`,
      );
    }
    return { rows, md, checks };
  };
  if (argv['only-index']) {
    const { rows, md, checks } = await indexSection();
    process.stdout.write(md + '\n\n' + checks.map((c) => `- ${c}`).join('\n') + '\n');
    process.stdout.write(JSON.stringify({ git: gitDescribe(), indexCost: rows }) + '\n');
    return;
  }
  const encryptionSection = async (): Promise<{ summary: Awaited<ReturnType<typeof encryptionCost>>; md: string; check: string }> => {
    const summary = await encryptionCost(argv.dir, argv['enc-rounds'], seconds, log);
    const r = summary.ratio;
    const worst = Math.min(r.writesPerSec4k, r.mibpsSeqWrite, r.mibpsSeqRead);
    const check = `encryption: ${r.writesPerSec4k.toFixed(2)}x 4K random write, ${r.mibpsSeqWrite.toFixed(2)}x 1M seq write, ${r.mibpsSeqRead.toFixed(2)}x 1M seq read of a plain volume through the engine (issue 13 wants >= 0.8x through the mount; engine level: ${worst >= 0.8 ? 'met' : 'NOT met'})`;
    return { summary, md: encryptionTable(summary, table), check };
  };
  if (argv['only-encryption']) {
    const { summary, md, check } = await encryptionSection();
    process.stdout.write(md + '\n\n- ' + check + '\n');
    process.stdout.write(JSON.stringify({ git: gitDescribe(), encryption: summary }) + '\n');
    return;
  }
  if (argv['only-slow-disk']) {
    const { row, md } = await slowDiskSection();
    process.stdout.write(md + '\n');
    process.stdout.write(JSON.stringify({ git: gitDescribe(), slowDisk: row }) + '\n');
    return;
  }
  if (argv['only-slow-device']) {
    for (const d of delays) {
      const rows: SlowRow[] = [];
      for (const m of ['strict', 'batched'] as Durability[]) {
        log(`slow device +${d} ms/sync: ${m}`);
        rows.push(await slowDevice(argv.dir, m, d, seconds, m === 'strict' ? 2000 : 65536, argv['relaxed-every']));
      }
      const [st, ba] = rows as [SlowRow, SlowRow];
      for (const r of rows) {
        process.stdout.write(
          `+${d} ms ${r.mode}: ${f3(r.msPerBlock)} ms/block, ${f3(r.walWritesPerBlock)} WAL writes/block, ${f1(r.blocksPerWalWrite)} blocks/WAL write\n`,
        );
      }
      process.stdout.write(`+${d} ms: batched ${f1(st.msPerBlock / ba.msPerBlock)}x strict\n`);
    }
    return;
  }
  const modes: Durability[] = ['strict', 'batched', 'relaxed', 'async'];
  // First, while the process is fresh: freed memory is not always returned to the
  // OS, so after the other sections RSS would show their high-water mark instead.
  log(`peak RSS writing ${Math.round(rssSize / MiB)} MiB`);
  const rss = await peakRss(argv.dir, rssSize);
  const tp: Throughput[] = [];
  for (const m of modes) {
    log(`throughput: ${m}`);
    tp.push(await throughput(argv.dir, m, seconds));
  }
  const slow: SlowRow[] = [];
  for (const d of delays) {
    for (const m of ['strict', 'batched', 'relaxed'] as Durability[]) {
      log(`slow device +${d} ms/sync: ${m}`);
      slow.push(await slowDevice(argv.dir, m, d, seconds, m === 'strict' ? 2000 : 65536, argv['relaxed-every']));
    }
    log(`slow device +${d} ms/sync: batched, writer yielding after each write`);
    slow.push(await slowDevice(argv.dir, 'batched', d, seconds, 65536, argv['relaxed-every'], true));
  }
  log('allocation per block');
  const alloc = await allocation(argv.dir, argv['alloc-blocks']);
  const slowDisk = await slowDiskSection();
  const index = await indexSection();
  const encryption = await encryptionSection();

  const md: string[] = [];
  md.push(`Engine benchmark, ${started.toISOString()}, ${os.cpus().length} cores, node ${process.version}. One writer, each write awaited.\n`);
  md.push(
    'Throughput per durability mode (real disk, library API, no FUSE; 4 KiB random writes over 256 MiB; then, after an untimed flush, 1 MiB sequential writes; each phase ends with an fsync):\n',
  );
  md.push(
    table(
      ['mode', '4K writes/s', '4K MiB/s', '4K p50 us', '4K p99 us', '1M seq MiB/s', '4K writes', 'WAL write calls', 'WAL syncs', 'WAL writes/block'],
      tp.map((r) => [
        r.mode,
        f1(r.writesPerSec4k),
        f1(r.mibps4k),
        f1(r.p50us4k),
        f1(r.p99us4k),
        f1(r.mibpsSeq1m),
        r.writes4k,
        r.walWrites,
        r.walSyncs,
        f3(r.walWritesPerBlock),
      ]),
    ),
  );
  md.push(
    `\nSlow-device simulation: +N ms on every fdatasync/fsync; sequential 4 KiB blocks, ms per block including a final fsync. relaxed: fsync every ${argv['relaxed-every']} blocks. The reference's Viperblock did 5 O_SYNC writes per block, i.e. about 5 x N ms per block.\n`,
  );
  const slowRows: (string | number)[][] = [];
  for (const d of delays) {
    const get = (m: Durability): SlowRow | undefined => slow.find((r) => r.delayMs === d && r.mode === m);
    const st = get('strict');
    for (const r of slow.filter((x) => x.delayMs === d)) {
      slowRows.push([
        `+${d} ms`,
        r.mode + (r.yields ? ' (yielding writer)' : ''),
        r.blocks,
        f3(r.msPerBlock),
        st ? `${f1(st.msPerBlock / r.msPerBlock)}x` : '-',
        `${5 * d}`,
        f3(r.walWritesPerBlock),
        r.walSyncs,
        f1(r.walSyncs ? r.blocks / r.walSyncs : NaN),
        f1(r.blocksPerWalWrite),
      ]);
    }
  }
  md.push(
    table(
      [
        'sync delay',
        'mode',
        'blocks',
        'ms/block',
        'vs strict',
        'Viperblock model ms/block',
        'WAL writes/block',
        'WAL syncs',
        'blocks/sync',
        'blocks/WAL write',
      ],
      slowRows,
    ),
  );
  md.push(
    `\nAllocation per 4 KiB block written (batched, 4 KiB random writes over 64 MiB, steady state after ${alloc.blocks} warm-up blocks, chunk flushes included). Buffer columns: every Buffer.alloc/allocUnsafe/allocUnsafeSlow/concat/from call during ${alloc.blocks} writes, counted by wrapping them. memoryUsage columns: growth across windows of ${Math.floor(alloc.blocks / alloc.windows)} blocks, median of the ${alloc.windowsWithoutGc} of ${alloc.windows} windows in which no GC ran (a GC hides allocations)${alloc.gcExposed ? '' : '; gc not exposed'}:\n`,
  );
  md.push(
    table(
      ['Buffer allocs/block', 'Buffer bytes/block', 'heapUsed bytes/block', 'arrayBuffers bytes/block'],
      [[f3(alloc.bufferAllocsPerBlock), f1(alloc.bufferBytesPerBlock), f1(alloc.heapBytesPerBlock), f1(alloc.arrayBufferBytesPerBlock)]],
    ),
  );
  md.push(
    `\nBuffer allocations during those ${alloc.blocks} writes, by call(size): ${
      Object.entries(alloc.bufferAllocSizes)
        .map(([k, v]) => `${k} x${v}`)
        .join(', ') || 'none'
    }`,
  );
  md.push(
    `\nPeak RSS writing ${Math.round(rss.bytesWritten / MiB)} MiB in 1 MiB writes (batched, default tunables: write buffer ${DEFAULT_TUNABLES.writeBufferBytes / MiB} MiB + read cache ${DEFAULT_TUNABLES.cacheBytes / MiB} MiB):\n`,
  );
  md.push(
    table(
      ['written MiB', 'MiB/s', 'RSS before MiB', 'peak RSS MiB', 'peak heap MiB', 'peak ArrayBuffers MiB', 'configured bound MiB'],
      [
        [
          Math.round(rss.bytesWritten / MiB),
          f1(rss.mibps),
          f1(rss.rssBeforeMiB),
          f1(rss.peakRssMiB),
          f1(rss.peakHeapMiB),
          f1(rss.peakArrayBuffersMiB),
          f1(rss.configuredBoundMiB),
        ],
      ],
    ),
  );
  md.push(slowDisk.md);
  md.push(index.md);
  md.push(encryption.md);
  const checks: string[] = [...index.checks, encryption.check];
  for (const d of delays) {
    const st = slow.find((r) => r.delayMs === d && r.mode === 'strict');
    const ba = slow.find((r) => r.delayMs === d && r.mode === 'batched' && !r.yields);
    if (st && ba)
      checks.push(
        `+${d} ms/sync: batched is ${f1(st.msPerBlock / ba.msPerBlock)}x faster per block than strict${d === 10 ? ` (issue 4 wants >= 20x: ${st.msPerBlock / ba.msPerBlock >= 20 ? 'met' : 'NOT met'})` : ''}`,
      );
  }
  const bt = tp.find((r) => r.mode === 'batched');
  if (bt) {
    checks.push(`batched: ${f3(bt.walWritesPerBlock)} WAL write calls per block (${f1(1 / bt.walWritesPerBlock)} blocks per write call)`);
    const want = bt.writes4k / DEFAULT_TUNABLES.batchBlocks;
    if (bt.walSyncs < want / 2) {
      checks.push(
        `WARNING batched: ${bt.walSyncs} WAL syncs for ${bt.writes4k} awaited writes (batchBlocks=${DEFAULT_TUNABLES.batchBlocks} implies ~${Math.round(want)}): fewer group commits than the batch size implies`,
      );
    }
  }
  checks.push(
    `steady state: ${f3(alloc.bufferAllocsPerBlock)} Buffer allocations and ${f1(alloc.bufferBytesPerBlock)} Buffer bytes per block written (a per-block copy would be >= 1 and 4096)`,
  );
  checks.push(
    `slow disk (${slowDisk.row.mbps} MB/s): worst write waited ${f1(slowDisk.row.maxMs / 1000)} s, p99 ${f1(slowDisk.row.p99ms)} ms (the whole ${slowDisk.row.writeBufferMiB} MiB buffer takes ${f1(slowDisk.row.bufferAtDiskSpeedS)} s at disk speed)`,
  );
  checks.push(
    `peak RSS ${f1(rss.peakRssMiB)} MiB while writing ${Math.round(rss.bytesWritten / MiB)} MiB (bound by configuration: ${f1(rss.configuredBoundMiB)} MiB of buffers + index + runtime)`,
  );
  md.push('\n' + checks.map((c) => `- ${c}`).join('\n'));
  const text = md.join('\n');
  process.stdout.write(text + '\n');

  const res = {
    meta: {
      git: gitDescribe(),
      date: started.toISOString(),
      command: ['npm run bench:engine', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
      cpus: os.cpus().length,
      kernel: os.release(),
      node: process.version,
      seconds,
      delays,
      relaxedEvery: argv['relaxed-every'],
      tunables: DEFAULT_TUNABLES,
    },
    throughput: tp,
    slowDevice: slow,
    allocation: alloc,
    peakRss: rss,
    slowDisk: slowDisk.row,
    indexCost: index.rows,
    encryption: encryption.summary,
    checks,
  };
  const stamp = started.toISOString().replace(/[:]/g, '-').replace(/\..*/, 'Z');
  fs.mkdirSync(argv.out, { recursive: true });
  fs.writeFileSync(path.join(argv.out, `engine-${stamp}.json`), JSON.stringify(res, null, 2) + '\n');
  fs.writeFileSync(path.join(argv.out, 'engine-latest.json'), JSON.stringify(res, null, 2) + '\n');
  fs.writeFileSync(path.join(argv.out, 'engine-latest.md'), text + '\n');
  process.stdout.write(`\nsaved ${path.join(argv.out, `engine-${stamp}.json`)}, engine-latest.json, engine-latest.md\n`);
}

main().catch((err: unknown) => {
  log(`engine bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
