/**
 * Index bytes per block, checkpoint bytes per block and open time per million
 * mapped blocks, for three write patterns (a section of `npm run bench:engine`,
 * or alone: `node --expose-gc dist/bench/index-cost.js [blocks] [patterns]`).
 *
 *  - scattered: single blocks at random over a 16 TiB volume (2^32 blocks of 4 KiB);
 *  - sequential: blocks 0..n-1, as a flush packs them (1024 per 4 MiB chunk, back to back);
 *  - mixed: half the blocks in random runs of 1..256 blocks, half scattered single blocks.
 *
 * The blocks go into the index the way a flush puts them (chunks of 1024 blocks
 * sorted by block, seqs in write order), through the public BlockIndex/MapStore
 * API only (so this file also runs against older builds). Memory is measured
 * (heapUsed + arrayBuffers growth after a GC, with the index alive), not taken
 * from the index's own estimate, which is shown beside it. The map is then
 * checkpointed to a real directory (bytes per block) and loaded into a fresh index
 * (open time, and memory with the loaded index alive).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { allocPlacement, type ChunkPlacement } from '../src/format/map-records';
import { BlockIndex } from '../src/map/block-index';
import { MapStore } from '../src/map/map-store';
import { NodeFileIO } from '../src/io/node-file-io';
import { silentLogger } from '../src/types';

const BS = 4096;
const RECORD = 32 + BS;
const PER_CHUNK = 1024;
const VOLUME_BLOCKS = 2 ** 32; // 16 TiB of 4 KiB blocks
const VOLUME_ID = '00112233445566778899aabbccddeeff';

export type Pattern = 'scattered' | 'sequential' | 'mixed';
export const PATTERNS: Pattern[] = ['scattered', 'sequential', 'mixed'];

export interface IndexCostRow {
  pattern: Pattern;
  blocks: number;
  extents: number | null;
  measuredBytesPerBlock: number;
  reportedBytesPerBlock: number;
  checkpointBytesPerBlock: number;
  logBytesPerBlock: number;
  openSeconds: number;
  openSecondsPerMillion: number;
  /** CPU seconds of the open (user + system): wall time on a shared machine includes waiting for a core */
  openCpuSecondsPerMillion: number;
  openMeasuredBytesPerBlock: number;
  peakRssDuringOpenMiB: number;
}

/** xorshift, so runs are repeatable. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

/** The blocks of a pattern, in write order (distinct). */
function blocksOf(pattern: Pattern, n: number): Float64Array {
  const out = new Float64Array(n);
  const r = rng(12345);
  if (pattern === 'sequential') {
    for (let i = 0; i < n; i++) out[i] = i;
    return out;
  }
  const seen = new Set<number>();
  let i = 0;
  while (i < n) {
    if (pattern === 'mixed' && r() < 1 / 128) {
      const len = Math.min(n - i, 1 + Math.floor(r() * 256));
      const start = Math.floor(r() * (VOLUME_BLOCKS - len));
      let clash = false;
      for (let k = 0; k < len; k++) if (seen.has(start + k)) clash = true;
      if (clash) continue;
      for (let k = 0; k < len; k++) {
        seen.add(start + k);
        out[i++] = start + k;
      }
      continue;
    }
    const b = Math.floor(r() * VOLUME_BLOCKS);
    if (seen.has(b)) continue;
    seen.add(b);
    out[i++] = b;
  }
  return out;
}

/** Flush-shaped placements: PER_CHUNK blocks per chunk, sorted by block, records back to back. */
function placements(blocks: Float64Array): ChunkPlacement[] {
  const out: ChunkPlacement[] = [];
  for (let c = 0; c * PER_CHUNK < blocks.length; c++) {
    const from = c * PER_CHUNK;
    const n = Math.min(PER_CHUNK, blocks.length - from);
    const order = Array.from({ length: n }, (_, k) => from + k).sort((x, y) => (blocks[x] as number) - (blocks[y] as number));
    const pl = allocPlacement(c + 1, n);
    order.forEach((i, k) => {
      pl.blocks[k] = blocks[i] as number;
      pl.seqs[k] = i + 1; // write order
      pl.offsets[k] = 64 + k * RECORD;
      pl.lens[k] = BS;
    });
    out.push(pl);
  }
  return out;
}

/** Heap + ArrayBuffer bytes after full GCs (backing stores are freed by a background task: give it time). */
async function memNow(): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3; i++) {
    gc?.();
    await new Promise((r) => setTimeout(r, 30));
  }
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

function apply(ix: BlockIndex, pls: ChunkPlacement[]): void {
  for (const pl of pls) {
    for (let k = 0; k < pl.count; k++)
      ix.setPersisted(pl.blocks[k] as number, pl.seqs[k] as number, pl.chunkId, pl.offsets[k] as number, pl.lens[k] as number, pl.flags[k] as number);
  }
}

export async function indexCost(pattern: Pattern, n: number, scratch: string): Promise<IndexCostRow> {
  const dir = path.join(scratch, `index-${pattern}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const fileIO = new NodeFileIO();
  try {
    let pls: ChunkPlacement[] | null = placements(blocksOf(pattern, n));
    // 90% of the blocks through the checkpoint, the last 10% only in the map log (replayed at open).
    const inCheckpoint = Math.floor((pls.length * 9) / 10);
    const m0 = await memNow();
    let ix: BlockIndex | null = new BlockIndex(VOLUME_BLOCKS);
    apply(ix, pls);
    const m1 = await memNow();
    const measured = (m1 - m0) / n;
    const reported = ix.memoryBytes / n;
    const extents = (ix as unknown as { extentCount?: number }).extentCount ?? null;
    ix = null;

    // Write the map: checkpoint of the first 90%, log commits for the rest.
    const ck = new BlockIndex(VOLUME_BLOCKS);
    apply(ck, pls.slice(0, inCheckpoint));
    const store = new MapStore(fileIO, dir, VOLUME_ID, silentLogger, () => undefined);
    await store.load(new BlockIndex(VOLUME_BLOCKS), false);
    await store.checkpoint(ck, n + 1, pls.length + 1);
    const ckBytes = fs.statSync(path.join(dir, 'checkpoint')).size;
    const ckBlocks = ck.countPersisted();
    for (let i = inCheckpoint; i < pls.length; i += 16) await store.commit(pls.slice(i, i + 16));
    await store.close();
    const logBlocks = n - ckBlocks;
    const logBytes = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.log'))
      .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);
    pls = null;

    // Open: checkpoint + log replay into a fresh index.
    const m2 = await memNow();
    let peak = process.memoryUsage().rss;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const loaded = new BlockIndex(VOLUME_BLOCKS);
    await new MapStore(fileIO, dir, VOLUME_ID, silentLogger, () => undefined).load(loaded, true);
    const openSeconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(c0);
    clearInterval(timer);
    peak = Math.max(peak, process.memoryUsage().rss);
    if (loaded.countPersisted() !== n) throw new Error(`index bench: loaded ${loaded.countPersisted()} of ${n} blocks`);
    const m3 = await memNow();
    return {
      pattern,
      blocks: n,
      extents,
      measuredBytesPerBlock: measured,
      reportedBytesPerBlock: reported,
      checkpointBytesPerBlock: ckBytes / ckBlocks,
      logBytesPerBlock: logBlocks > 0 ? logBytes / logBlocks : NaN,
      openSeconds,
      openSecondsPerMillion: (openSeconds * 1e6) / n,
      openCpuSecondsPerMillion: ((cpu.user + cpu.system) / 1e6) * (1e6 / n),
      openMeasuredBytesPerBlock: (m3 - m2) / n,
      peakRssDuringOpenMiB: peak / 1024 / 1024,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const f1 = (x: number): string => (Number.isFinite(x) ? (x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(2)) : '-');

export function indexCostTable(rows: IndexCostRow[]): string {
  const header = [
    'pattern',
    'blocks',
    'extents',
    'index B/block (measured)',
    'index B/block (reported)',
    'checkpoint B/block',
    'map log B/block',
    'open s',
    'open s per 1M blocks',
    'open CPU s per 1M',
    'B/block after open (measured)',
    'peak RSS during open MiB',
  ];
  const rowsS = rows.map((r) => [
    r.pattern,
    String(r.blocks),
    r.extents === null ? '-' : String(r.extents),
    f1(r.measuredBytesPerBlock),
    f1(r.reportedBytesPerBlock),
    f1(r.checkpointBytesPerBlock),
    f1(r.logBytesPerBlock),
    f1(r.openSeconds),
    f1(r.openSecondsPerMillion),
    f1(r.openCpuSecondsPerMillion),
    f1(r.openMeasuredBytesPerBlock),
    f1(r.peakRssDuringOpenMiB),
  ]);
  const w = header.map((h, i) => Math.max(h.length, ...rowsS.map((r) => (r[i] ?? '').length)));
  const line = (c: string[]): string => `| ${c.map((x, i) => (i === 0 ? x.padEnd(w[i] ?? 0) : x.padStart(w[i] ?? 0))).join(' | ')} |`;
  return [line(header), `|${w.map((x, i) => (i === 0 ? '-'.repeat(x + 2) : `${'-'.repeat(x + 1)}:`)).join('|')}|`, ...rowsS.map(line)].join('\n');
}

if (require.main === module) {
  const n = Number(process.argv[2] ?? 1_000_000);
  const pats = (process.argv[3] ?? PATTERNS.join(',')).split(',') as Pattern[];
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-index-bench-'));
  (async () => {
    const rows: IndexCostRow[] = [];
    for (const p of pats) rows.push(await indexCost(p, n, scratch));
    process.stdout.write(indexCostTable(rows) + '\n' + JSON.stringify(rows) + '\n');
  })()
    .catch((err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    })
    .finally(() => fs.rmSync(scratch, { recursive: true, force: true }));
}
