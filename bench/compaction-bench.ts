/**
 * `npm run bench:compaction`: foreground throughput while background compaction
 * runs, against the same volume with compaction paused (issue 10: foreground keeps
 * at least 80% of its throughput). Through the library on a tmpfs store; `npm run
 * bench` runs it too (bench/fio-bench.ts) and prints its table.
 *
 * Setup: a volume filled, then overwritten once in random 64 KiB pieces, so every
 * chunk is partly dead (stored about 2x live). Then, on that one open volume,
 * alternating slices of N seconds of 4 KiB random writes (32 in flight, relaxed
 * durability) and 4 KiB random reads, each once with background compaction paused
 * ("idle": no round running) and once with it running at its default policy (a
 * slice counts only if compaction ran through it). The order of the pair alternates
 * from round to round, and the random writes keep making dead space, so compaction
 * always has work. The ratio is taken per pair of adjacent slices (on a shared
 * machine the load drifts more between rounds than within a pair), then the median
 * of the pairs; also per CPU-second of the process (what compaction costs in CPU,
 * less sensitive to other processes taking the cores).
 *
 *   node dist/bench/compaction-bench.js [--mib 256] [--seconds 2] [--rounds 9]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';

const MIB = 1024 * 1024;
const BS = 4096;
const WARMUP_MS = 500;

export interface CompactionBenchOptions {
  mib: number;
  seconds: number;
  rounds: number;
  log?: (line: string) => void;
}

export interface CompactionBenchRow {
  kind: 'write' | 'read';
  idle: number[];
  compacting: number[];
  /** compacting / idle of each pair of adjacent slices (slow drifts of the machine's load cancel out). */
  ratio: number[];
  /** The same for MiB per CPU-second of the process: what compaction costs the foreground in CPU. */
  cpuRatio: number[];
  /** MiB the compactor wrote per compacting slice. */
  moved: number[];
}

/** A small fast PRNG (xorshift32): the bench must not measure Math.random. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** MiB/s of the slice, and MiB per second of this process's CPU (user + system, all its threads). */
async function foreground(vol: Volume, kind: 'write' | 'read', seconds: number, blocks: number, seed: number): Promise<{ mibps: number; perCpu: number }> {
  const rnd = prng(seed);
  const buf = Buffer.alloc(BS * 64, 0x5a);
  const out = Buffer.allocUnsafe(BS * 64);
  let n = 0;
  // Counted after a warm-up: the compactor notices the foreground at the end of a
  // round, so the round under way when the slice starts runs unpaused (steady state
  // is what the slice measures; both modes warm up alike).
  const t0 = performance.now() + WARMUP_MS;
  const end = t0 + seconds * 1000;
  let cpu0 = process.cpuUsage();
  let counting = false;
  const worker = async (w: number): Promise<void> => {
    for (;;) {
      const now = performance.now();
      if (now >= end) break;
      if (!counting && now >= t0) {
        counting = true;
        n = 0;
        cpu0 = process.cpuUsage();
      }
      const off = Math.floor(rnd() * blocks) * BS;
      if (kind === 'write') await vol.write(off, buf.subarray(w * BS, (w + 1) * BS));
      else await vol.readInto(off, out.subarray(w * BS, (w + 1) * BS));
      n++;
    }
  };
  await Promise.all([...Array(32).keys()].map(worker));
  const cpu = process.cpuUsage(cpu0);
  const mib = (n * BS) / MIB;
  return { mibps: mib / ((performance.now() - t0) / 1000), perCpu: mib / ((cpu.user + cpu.system) / 1e6) };
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

/** Wait until `cond` holds (polled every 20 ms), at most `ms`; whether it held. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

export async function compactionBench(o: CompactionBenchOptions): Promise<CompactionBenchRow[]> {
  const log = o.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : '/tmp';
  const dir = fs.mkdtempSync(path.join(base, 'vbfs-compact-bench-'));
  const blocks = (o.mib * MIB) / BS;
  const rows: CompactionBenchRow[] = [
    { kind: 'write', idle: [], compacting: [], ratio: [], cpuRatio: [], moved: [] },
    { kind: 'read', idle: [], compacting: [], ratio: [], cpuRatio: [], moved: [] },
  ];
  try {
    const store = await Store.open(dir);
    try {
      await store.createVolume('b', { size: o.mib * MIB, durability: 'relaxed' });
      const vol = await store.openVolume('b', { compactIntervalMs: 100 });
      vol.setBackgroundCompaction(false);
      const rnd = prng(100);
      for (let off = 0; off < o.mib * MIB; off += MIB) await vol.write(off, Buffer.alloc(MIB, 1));
      const piece = Buffer.alloc(64 * 1024, 2);
      for (let k = 0; k < (o.mib * MIB) / piece.length; k++) await vol.write(Math.floor(rnd() * (blocks / 16)) * 16 * BS, piece);
      await vol.flush();
      log(`compaction bench: ${o.mib} MiB volume, amplification ${vol.stats().spaceAmplification.toFixed(2)} after setup`);
      for (let r = 0; r < o.rounds; r++) {
        for (const row of rows) {
          const order = r % 2 === 0 ? (['idle', 'compacting'] as const) : (['compacting', 'idle'] as const);
          const got: Partial<Record<'idle' | 'compacting', { mibps: number; perCpu: number }>> = {};
          let moved = 0;
          for (const mode of order) {
            // Up to 3 tries: a compacting slice counts only if compaction ran through it.
            for (let attempt = 0; attempt < 3; attempt++) {
              vol.setBackgroundCompaction(mode === 'compacting');
              if (mode === 'idle') await until(() => vol.stats().compacting === 0, 30_000);
              else if (!(await until(() => vol.stats().compacting === 1, 10_000))) break;
              const c0 = vol.stats();
              const f = await foreground(vol, row.kind, o.seconds, blocks, 7 + r * 2 + (mode === 'idle' ? 0 : 1));
              const c1 = vol.stats();
              if (mode === 'compacting' && (c1.compacting === 0 || c1.compactRounds === c0.compactRounds)) continue;
              got[mode] = f;
              if (mode === 'compacting') moved = (c1.compactBytesMoved - c0.compactBytesMoved) / MIB;
              break;
            }
          }
          const { idle, compacting } = got;
          if (!idle || !compacting) {
            log(`round ${r + 1} ${row.kind}: no slice with compaction running through it`);
            continue;
          }
          row.idle.push(idle.mibps);
          row.compacting.push(compacting.mibps);
          row.ratio.push(compacting.mibps / idle.mibps);
          row.cpuRatio.push(compacting.perCpu / idle.perCpu);
          row.moved.push(moved);
          log(
            `round ${r + 1} ${row.kind}: idle ${idle.mibps.toFixed(1)}, compacting ${compacting.mibps.toFixed(1)} MiB/s (${(compacting.mibps / idle.mibps).toFixed(2)}x; ` +
              `per CPU-second ${idle.perCpu.toFixed(0)} vs ${compacting.perCpu.toFixed(0)} MiB; compaction wrote ${moved.toFixed(0)} MiB)`,
          );
        }
      }
      vol.setBackgroundCompaction(false);
      await vol.close();
    } finally {
      await store.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

export function compactionTable(rows: CompactionBenchRow[]): string {
  const out = [
    '| 4 KiB random, 32 in flight (library, tmpfs) | pairs | idle MiB/s | compacting MiB/s | ratio (median of pairs) | ratio per CPU-second | compaction wrote MiB/slice |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const row of rows) {
    const f = (x: number): string => x.toFixed(1);
    out.push(
      `| ${row.kind} | ${row.ratio.length} | ${f(median(row.idle))} | ${f(median(row.compacting))} | ${median(row.ratio).toFixed(2)} | ${median(row.cpuRatio).toFixed(2)} | ${median(row.moved).toFixed(0)} |`,
    );
  }
  return out.join('\n');
}

if (require.main === module) {
  const arg = (name: string, def: number): number => {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? Number(process.argv[i + 1]) : def;
  };
  compactionBench({ mib: arg('mib', 256), seconds: arg('seconds', 2), rounds: arg('rounds', 9) })
    .then((rows) => process.stdout.write(`\n${compactionTable(rows)}\n`))
    .catch((err: unknown) => {
      process.stderr.write(`${String((err as Error)?.stack ?? err)}\n`);
      process.exit(1);
    });
}
