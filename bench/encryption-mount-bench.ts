/**
 * Encryption at rest through a real FUSE mount (issue 13's target: an encrypted
 * volume does >= 0.8x a plain one on 4 KiB random write and 1 MiB sequential
 * write and read). The store is mounted in this process through the library
 * (StoreMount with openOptions.key, what `vbfs mount --key-file` will do), fio runs
 * as a child. Plain and encrypted alternate per round (plain first in odd rounds,
 * encrypted first in even ones); medians of the rounds and their ratios.
 *
 * Per round, batched, a fresh store and 1 GiB volume:
 *   - fio 4K randwrite (psync, buffered, 256 MiB, time-based) -> IOPS
 *   - fio 1M sequential write of 512 MiB (psync, capped in time) -> MiB/s
 *   - unmount, drop_caches, remount: fio 1M sequential read, --direct=1 -> MiB/s
 *
 *   npx tsc -p tsconfig.json && node dist/bench/encryption-mount-bench.js [--rounds 3] [--runtime 5] [--crypto-threads 1] [--readahead-mib N] [--seal-blocks N] [--batch-blocks N]
 * (--crypto-threads 0: encrypted reads are opened and writes sealed inline on the event loop, for an A/B of the worker;
 * --readahead-mib: the encrypted volume's readahead window, default the engine's;
 * --seal-blocks: the encrypted volume's cryptoSealBlocks, 0: every write sealed inline;
 * --batch-blocks: its cryptoBatchBlocks, from how many records a read's own run is opened in the worker)
 *
 * Besides the rates, the CPU time of this process's main thread (the event loop
 * that serves every FUSE request) per 4 KiB write and per MiB written and read:
 * on a loaded machine it moves much less than the rates.
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
import { dropCaches, run } from './sh';
import { parseFio } from './fio-jobs';
import { mainThreadCpuMs } from './encryption-bench';

const MiB = 1024 * 1024;

interface Round {
  encrypted: boolean;
  round: number;
  randWrite4kIops: number;
  seqWrite1mMibps: number;
  seqRead1mMibps: number;
  /** main-thread CPU: µs per 4 KiB random write; ms per MiB written, per MiB read */
  cpuUs4k: number;
  cpuMsPerMiBWrite: number;
  cpuMsPerMiBRead: number;
}

const FIGURES = ['randWrite4kIops', 'seqWrite1mMibps', 'seqRead1mMibps', 'cpuUs4k', 'cpuMsPerMiBWrite', 'cpuMsPerMiBRead'] as const;

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

function log(msg: string): void {
  process.stderr.write(`[enc-mount ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

async function fio(file: string, dir: 'read' | 'write', args: string[], timeoutS: number): Promise<ReturnType<typeof parseFio> & { cpuMs: number }> {
  const c0 = mainThreadCpuMs();
  const r = await run('fio', ['--name=j', `--filename=${file}`, '--ioengine=psync', '--fallocate=none', '--output-format=json', ...args], {
    timeoutMs: timeoutS * 1000,
  });
  return { ...parseFio(r.stdout, dir), cpuMs: mainThreadCpuMs() - c0 };
}

async function mounted<T>(storeDir: string, mnt: string, key: KeyMaterial | undefined, fn: () => Promise<T>): Promise<T> {
  const store = await Store.open(storeDir);
  const m = await StoreMount.mount({
    mountpoint: mnt,
    store,
    storeDir,
    logger: silentLogger,
    openOptions: key
      ? {
          key,
          cryptoThreads: arg('crypto-threads', 1),
          ...(arg('readahead-mib', 0) > 0 ? { readaheadBytes: arg('readahead-mib', 0) * MiB } : {}),
          ...(arg('seal-blocks', -1) >= 0 ? { cryptoSealBlocks: arg('seal-blocks', -1) } : {}),
          ...(arg('batch-blocks', -1) >= 0 ? { cryptoBatchBlocks: arg('batch-blocks', -1) } : {}),
        }
      : {},
  });
  try {
    return await fn();
  } finally {
    await m.shutdown();
    await store.close();
  }
}

async function oneRound(base: string, encrypted: boolean, n: number, runtime: number): Promise<Round> {
  const storeDir = path.join(base, `store-${n}-${encrypted ? 'enc' : 'plain'}`);
  const mnt = path.join(base, `mnt-${n}-${encrypted ? 'enc' : 'plain'}`);
  fs.mkdirSync(mnt, { recursive: true });
  const key: KeyMaterial | undefined = encrypted ? { source: '$BENCH_KEY', bytes: Buffer.from(randomBytes(32).toString('hex')) } : undefined;
  try {
    const store = await Store.open(storeDir);
    await store.createVolume('v', { size: 1024 * MiB, durability: 'batched', ...(key ? { encryption: { key } } : {}) });
    await store.close();
    const file = path.join(mnt, 'v');
    const [rw, sw] = await mounted(storeDir, mnt, key, async () => {
      const a = await fio(file, 'write', ['--rw=randwrite', '--bs=4k', `--size=${256 * MiB}`, '--time_based', `--runtime=${runtime}`], runtime + 120);
      const b = await fio(file, 'write', ['--rw=write', '--bs=1M', `--size=${512 * MiB}`, `--runtime=${runtime * 4}`], runtime * 4 + 120);
      return [a, b];
    });
    await dropCaches();
    const sr = await mounted(storeDir, mnt, key, () =>
      fio(file, 'read', ['--rw=read', '--bs=1M', '--direct=1', `--size=${512 * MiB}`, `--runtime=${runtime * 4}`], runtime * 4 + 120),
    );
    return {
      encrypted,
      round: n,
      randWrite4kIops: rw.iops,
      seqWrite1mMibps: sw.mibps,
      seqRead1mMibps: sr.mibps,
      cpuUs4k: (rw.cpuMs * 1000) / (rw.bytes / 4096 || 1),
      cpuMsPerMiBWrite: sw.cpuMs / (sw.bytes / MiB || 1),
      cpuMsPerMiBRead: sr.cpuMs / (sr.bytes / MiB || 1),
    };
  } finally {
    fs.rmSync(storeDir, { recursive: true, force: true });
    fs.rmdirSync(mnt);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function main(): Promise<void> {
  const rounds = arg('rounds', 3);
  const runtime = arg('runtime', 5);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-enc-mount-'));
  const all: Round[] = [];
  try {
    for (let n = 0; n < rounds; n++) {
      for (const encrypted of n % 2 === 0 ? [false, true] : [true, false]) {
        log(`round ${n + 1}/${rounds}: ${encrypted ? 'encrypted' : 'plain'}`);
        const r = await oneRound(base, encrypted, n, runtime);
        log(
          `  4K randwrite ${Math.round(r.randWrite4kIops)} IOPS, 1M write ${r.seqWrite1mMibps.toFixed(1)} MiB/s, 1M read ${r.seqRead1mMibps.toFixed(1)} MiB/s; main thread ${r.cpuUs4k.toFixed(0)} µs/4K write, ${r.cpuMsPerMiBWrite.toFixed(2)} ms/MiB written, ${r.cpuMsPerMiBRead.toFixed(2)} ms/MiB read`,
        );
        all.push(r);
      }
    }
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
  const med = (enc: boolean, k: (typeof FIGURES)[number]): number => median(all.filter((r) => r.encrypted === enc).map((r) => r[k]));
  const rows = FIGURES.map((k) => ({
    figure: k,
    plain: med(false, k),
    encrypted: med(true, k),
    ratio: med(true, k) / med(false, k),
  }));
  process.stdout.write(
    `FUSE mount, batched, median of ${rounds} alternating rounds, cryptoThreads ${arg('crypto-threads', 1)}, sealBlocks ${arg('seal-blocks', -1) >= 0 ? arg('seal-blocks', -1) : 'default'}, batchBlocks ${arg('batch-blocks', -1) >= 0 ? arg('batch-blocks', -1) : 'default'}, readahead ${arg('readahead-mib', 0) || 'default'} (${os.cpus().length} cores, load ${os.loadavg()[0]?.toFixed(1)}):\n`,
  );
  process.stdout.write('| figure | plain | encrypted | ratio |\n|---|--:|--:|--:|\n');
  for (const r of rows) process.stdout.write(`| ${r.figure} | ${r.plain.toFixed(2)} | ${r.encrypted.toFixed(2)} | ${r.ratio.toFixed(2)} |\n`);
  process.stdout.write(JSON.stringify({ rounds: all, medians: rows }) + '\n');
}

// Exit explicitly: fuse-native keeps a handle open after the last unmount.
main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`failed: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
