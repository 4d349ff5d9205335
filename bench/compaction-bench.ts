/**
 * `npm run bench:compaction`: foreground throughput while background compaction
 * runs, against the same volume with compaction off (issue 10: foreground keeps at
 * least 80% of its throughput). Through the library on a tmpfs store.
 *
 * Setup: a volume filled, then overwritten once in random 64 KiB pieces, so every
 * chunk is partly dead (stored about 2x live). Then alternating rounds of N seconds of
 * 4 KiB random writes (32 in flight, relaxed durability) and 4 KiB random reads:
 * "idle" opens the volume with compaction off, "compacting" opens it with the default
 * policy checked every 100 ms and measures only while a compaction runs. Medians of
 * the rounds and their ratio.
 *
 *   node dist/bench/compaction-bench.js [--mib 256] [--seconds 6] [--rounds 3]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import type { Volume } from '../src/store/volume';

const MIB = 1024 * 1024;
const BS = 4096;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
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

async function foreground(vol: Volume, kind: 'write' | 'read', seconds: number, blocks: number, seed: number): Promise<number> {
  const rnd = prng(seed);
  const buf = Buffer.alloc(BS * 64, 0x5a);
  const out = Buffer.allocUnsafe(BS * 64);
  let n = 0;
  const end = performance.now() + seconds * 1000;
  const worker = async (w: number): Promise<void> => {
    while (performance.now() < end) {
      const off = Math.floor(rnd() * blocks) * BS;
      if (kind === 'write') await vol.write(off, buf.subarray(w * BS, (w + 1) * BS));
      else await vol.readInto(off, out.subarray(w * BS, (w + 1) * BS));
      n++;
    }
  };
  const t0 = performance.now();
  await Promise.all([...Array(32).keys()].map(worker));
  return (n * BS) / MIB / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

async function main(): Promise<void> {
  const mib = arg('mib', 256);
  const seconds = arg('seconds', 6);
  const rounds = arg('rounds', 3);
  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : '/tmp';
  const dir = fs.mkdtempSync(path.join(base, 'vbfs-compact-bench-'));
  const blocks = (mib * MIB) / BS;
  const res: Record<string, number[]> = { 'write idle': [], 'write compacting': [], 'read idle': [], 'read compacting': [] };
  try {
    const store = await Store.open(dir);
    await store.createVolume('b', { size: mib * MIB, durability: 'relaxed' });
    for (let r = 0; r < rounds; r++) {
      // Each round starts from a partly dead volume again: overwrite it once in 64 KiB pieces.
      let vol = await store.openVolume('b', { compactIntervalMs: 0 });
      const rnd = prng(100 + r);
      const piece = Buffer.alloc(64 * 1024, r + 1);
      if (r === 0) for (let off = 0; off < mib * MIB; off += MIB) await vol.write(off, Buffer.alloc(MIB, 1));
      for (let k = 0; k < (mib * MIB) / piece.length; k++) await vol.write(Math.floor(rnd() * (blocks / 16)) * 16 * BS, piece);
      await vol.flush();
      const s0 = vol.stats();
      for (const kind of ['write', 'read'] as const) res[`${kind} idle`]!.push(await foreground(vol, kind, seconds, blocks, 7 + r));
      await vol.close();
      vol = await store.openVolume('b', { compactIntervalMs: 100 });
      const deadline = Date.now() + 10_000;
      while (vol.stats().compacting === 0 && Date.now() < deadline) await new Promise((t) => setTimeout(t, 20));
      const c0 = vol.stats();
      for (const kind of ['write', 'read'] as const) res[`${kind} compacting`]!.push(await foreground(vol, kind, seconds, blocks, 7 + r));
      const c1 = vol.stats();
      process.stdout.write(
        `round ${r + 1}: amplification ${s0.spaceAmplification.toFixed(2)} before; while measuring, compaction ran ${c1.compactRounds - c0.compactRounds} rounds, ` +
          `moved ${((c1.compactBytesMoved - c0.compactBytesMoved) / MIB).toFixed(0)} MiB (still running at the end: ${c1.compacting === 1 ? 'yes' : 'no'}); ` +
          Object.entries(res)
            .map(([k, v]) => `${k} ${(v[v.length - 1] as number).toFixed(1)}`)
            .join(', ') +
          ' MiB/s\n',
      );
      await vol.close();
    }
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write(`\n| 4 KiB random, 32 in flight | idle MiB/s | compacting MiB/s | ratio |\n|---|---|---|---|\n`);
  for (const kind of ['write', 'read']) {
    const i = median(res[`${kind} idle`]!);
    const c = median(res[`${kind} compacting`]!);
    process.stdout.write(`| ${kind} | ${i.toFixed(1)} | ${c.toFixed(1)} | ${(c / i).toFixed(2)} |\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${String((err as Error)?.stack ?? err)}\n`);
  process.exit(1);
});
