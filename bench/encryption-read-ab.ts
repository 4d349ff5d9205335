/**
 * A/B of the encrypted read path through a real FUSE mount: one plain and one
 * encrypted volume of 512 MiB written once, then fio 1M sequential reads
 * (--direct=1, after drop_caches and a fresh mount) of the plain volume and of the
 * encrypted one under each setting, interleaved round by round (the order rotates),
 * medians. Cheaper and less noisy than encryption-mount-bench.ts when only the
 * read side changes (cryptoThreads, readahead window).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/encryption-read-ab.js [--rounds 5] [--runtime 6] [--settings 0:1,1:1,1:4]
 * (--settings: cryptoThreads:readaheadMiB[:cryptoBatchBlocks]; cryptoThreads 0 opens inline, more than 1 is one worker)
 * Also the main thread's CPU time per MiB read (bench/encryption-bench.ts), which a
 * loaded machine moves much less than the rate.
 * Needs root, /dev/fuse and fio.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Store } from '../src/store/store';
import { StoreMount } from '../src/fuse/mount';
import { silentLogger } from '../src/types';
import type { KeyMaterial } from '../src/crypto/key-source';
import type { VolumeOpenOptions } from '../src/store/types';
import { dropCaches, run } from './sh';
import { parseFio } from './fio-jobs';
import { mainThreadCpuMs } from './encryption-bench';

const MiB = 1024 * 1024;

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? (process.argv[i + 1] as string) : dflt;
}

function log(msg: string): void {
  process.stderr.write(`[enc-read-ab ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

async function fio(file: string, args: string[], timeoutS: number): Promise<{ mibps: number; cpuMsPerMiB: number }> {
  const c0 = mainThreadCpuMs();
  const r = await run('fio', ['--name=j', `--filename=${file}`, '--ioengine=psync', '--fallocate=none', '--output-format=json', ...args], {
    timeoutMs: timeoutS * 1000,
  });
  const f = parseFio(r.stdout, args.includes('--rw=read') ? 'read' : 'write');
  return { mibps: f.mibps, cpuMsPerMiB: (mainThreadCpuMs() - c0) / (f.bytes / MiB || 1) };
}

async function mounted<T>(storeDir: string, mnt: string, opts: VolumeOpenOptions, fn: (file: string) => Promise<T>): Promise<T> {
  const store = await Store.open(storeDir);
  const m = await StoreMount.mount({ mountpoint: mnt, store, storeDir, logger: silentLogger, openOptions: opts });
  try {
    return await fn(path.join(mnt, 'v'));
  } finally {
    await m.shutdown();
    await store.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function main(): Promise<void> {
  const rounds = Number(arg('rounds', '5'));
  const runtime = Number(arg('runtime', '6'));
  const settings = arg('settings', '0:1,1:1,1:4')
    .split(',')
    .map((s) => s.split(':').map(Number) as [number, number, number?]);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-enc-read-ab-'));
  const key: KeyMaterial = { source: '$BENCH_KEY', bytes: Buffer.from(randomBytes(32).toString('hex')) };
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  const variants: { name: string; dir: string; opts: VolumeOpenOptions }[] = [{ name: 'plain', dir: path.join(base, 'plain'), opts: {} }];
  for (const [t, ra, bb] of settings)
    variants.push({
      name: `enc threads ${t} readahead ${ra} MiB${bb !== undefined ? ` batch ${bb}` : ''}`,
      dir: path.join(base, 'enc'),
      opts: { key, cryptoThreads: t, readaheadBytes: ra * MiB, ...(bb !== undefined ? { cryptoBatchBlocks: bb } : {}) },
    });
  const got = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  const cpu = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  try {
    for (const [dir, enc] of [
      [path.join(base, 'plain'), false],
      [path.join(base, 'enc'), true],
    ] as const) {
      const store = await Store.open(dir);
      await store.createVolume('v', { size: 1024 * MiB, durability: 'batched', ...(enc ? { encryption: { key } } : {}) });
      await store.close();
      await mounted(dir, mnt, enc ? { key } : {}, (file) => fio(file, ['--rw=write', '--bs=1M', `--size=${512 * MiB}`], 600));
    }
    for (let n = 0; n < rounds; n++) {
      for (let k = 0; k < variants.length; k++) {
        const v = variants[(k + n) % variants.length] as (typeof variants)[number];
        await dropCaches();
        const { mibps, cpuMsPerMiB } = await mounted(v.dir, mnt, v.opts, (file) =>
          fio(file, ['--rw=read', '--bs=1M', '--direct=1', `--size=${512 * MiB}`, `--runtime=${runtime}`], runtime + 120),
        );
        log(`round ${n + 1}/${rounds}: ${v.name}: ${mibps.toFixed(1)} MiB/s, main thread ${cpuMsPerMiB.toFixed(2)} ms/MiB`);
        got.get(v.name)?.push(mibps);
        cpu.get(v.name)?.push(cpuMsPerMiB);
      }
    }
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
  const plain = median(got.get('plain') ?? []);
  process.stdout.write(
    `FUSE mount, 1M sequential read --direct=1, median of ${rounds} interleaved rounds (${os.cpus().length} cores, load ${os.loadavg()[0]?.toFixed(1)}):\n`,
  );
  process.stdout.write('| variant | MiB/s | ratio to plain | main thread ms/MiB |\n|---|--:|--:|--:|\n');
  for (const v of variants) {
    const m = median(got.get(v.name) ?? []);
    process.stdout.write(`| ${v.name} | ${m.toFixed(1)} | ${(m / plain).toFixed(2)} | ${median(cpu.get(v.name) ?? []).toFixed(2)} |\n`);
  }
}

// Exit explicitly: fuse-native keeps a handle open after the last unmount.
main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`failed: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
