/**
 * The cost of encryption at rest through the engine (issue 13 wants an encrypted
 * volume at >= 0.8x a plain one): plain and encrypted volumes in alternating rounds
 * (plain, encrypted, plain, ...), so machine load hits both alike; medians of the
 * rounds and their ratios. Per round, on a fresh store on the real disk, batched:
 *   - 4 KiB random writes over 256 MiB, each awaited (writes/s), then fsync;
 *   - after an untimed flush, 1 MiB sequential writes (MiB/s), then fsync + flush;
 *   - close, reopen (cold cache: every block comes from a chunk, authenticated and
 *     decrypted), 1 MiB sequential reads of what was written (MiB/s).
 *
 *   npm run bench:engine -- --only-encryption [--seconds 3] [--enc-rounds 3]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Store } from '../src/store/store';
import type { KeyMaterial } from '../src/crypto/key-source';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 4 * KiB;

export interface EncryptionRound {
  encrypted: boolean;
  round: number;
  writesPerSec4k: number;
  mibpsSeqWrite: number;
  mibpsSeqRead: number;
  /** CPU time of the main thread (the event loop) per 4 KiB write, µs; per MiB written / read, ms */
  mainCpuUs4k: number;
  mainCpuMsPerMiBWrite: number;
  mainCpuMsPerMiBRead: number;
}

/**
 * CPU time of this process's main thread (utime + stime of /proc/self/task/<pid>), ms.
 * Unlike wall time it hardly depends on what else runs on the machine, and unlike
 * process.cpuUsage() it leaves out worker and libuv threads: it is what the event
 * loop (and so every FUSE request) pays. 10 ms resolution: use over seconds.
 */
export function mainThreadCpuMs(): number {
  try {
    const stat = fs.readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10; // fields 14, 15 of stat; CLK_TCK = 100
  } catch {
    return NaN;
  }
}

type Figures = Omit<EncryptionRound, 'encrypted' | 'round'>;

export interface EncryptionSummary {
  rounds: EncryptionRound[];
  plain: Figures;
  encrypted: Figures;
  ratio: { writesPerSec4k: number; mibpsSeqWrite: number; mibpsSeqRead: number };
}

async function round(scratch: string, encrypted: boolean, n: number, seconds: number): Promise<EncryptionRound> {
  const dir = path.join(scratch, `enc-${encrypted ? 'on' : 'off'}-${n}`);
  fs.rmSync(dir, { recursive: true, force: true });
  const key: KeyMaterial = { source: '$BENCH_KEY', bytes: Buffer.from(randomBytes(32).toString('hex')) };
  const keyOpt = encrypted ? { key } : {};
  const size = 4 * 1024 * MiB;
  let store = await Store.open(dir);
  try {
    await store.createVolume('v', { size, durability: 'batched', ...(encrypted ? { encryption: { key } } : {}) });
    let vol = await store.openVolume('v', keyOpt);
    const buf = randomBytes(BS);
    let writes = 0;
    const c0 = mainThreadCpuMs();
    const t0 = performance.now();
    for (const end = t0 + seconds * 1000; performance.now() < end; writes++) {
      buf.writeUInt32LE(writes, 0);
      await vol.write(Math.floor(Math.random() * ((256 * MiB) / BS)) * BS, buf);
    }
    await vol.fsync();
    const writesPerSec4k = writes / ((performance.now() - t0) / 1000);
    const mainCpuUs4k = ((mainThreadCpuMs() - c0) * 1000) / writes;
    await vol.flush();

    const big = randomBytes(MiB);
    let bytes = 0;
    const sc0 = mainThreadCpuMs();
    const s0 = performance.now();
    for (let off = 512 * MiB; performance.now() < s0 + seconds * 1000 && off + MiB <= size; off += MiB) {
      big.writeUInt32LE(off / MiB, 0);
      await vol.write(off, big);
      bytes += MiB;
    }
    await vol.fsync();
    const mibpsSeqWrite = bytes / MiB / ((performance.now() - s0) / 1000);
    const mainCpuMsPerMiBWrite = (mainThreadCpuMs() - sc0) / (bytes / MiB);
    await vol.flush();
    await vol.close();
    await store.close();

    store = await Store.open(dir);
    vol = await store.openVolume('v', { ...keyOpt, readOnly: true });
    const out = Buffer.allocUnsafe(MiB);
    const rc0 = mainThreadCpuMs();
    const r0 = performance.now();
    for (let off = 512 * MiB; off < 512 * MiB + bytes; off += MiB) await vol.readInto(off, out);
    const mibpsSeqRead = bytes / MiB / ((performance.now() - r0) / 1000);
    const mainCpuMsPerMiBRead = (mainThreadCpuMs() - rc0) / (bytes / MiB);
    await vol.close();
    return { encrypted, round: n, writesPerSec4k, mibpsSeqWrite, mibpsSeqRead, mainCpuUs4k, mainCpuMsPerMiBWrite, mainCpuMsPerMiBRead };
  } finally {
    await store.close().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export async function encryptionCost(scratch: string, rounds: number, seconds: number, log: (msg: string) => void): Promise<EncryptionSummary> {
  const all: EncryptionRound[] = [];
  for (let n = 0; n < rounds; n++) {
    // Alternate which goes first, so a slow start or a neighbour's burst does not favour one side.
    for (const encrypted of n % 2 === 0 ? [false, true] : [true, false]) {
      log(`encryption cost: round ${n + 1}/${rounds}, ${encrypted ? 'encrypted' : 'plain'}`);
      all.push(await round(scratch, encrypted, n, seconds));
    }
  }
  const med = (enc: boolean): Figures => {
    const rs = all.filter((r) => r.encrypted === enc);
    const m = (k: keyof Figures): number => median(rs.map((r) => r[k]));
    return {
      writesPerSec4k: m('writesPerSec4k'),
      mibpsSeqWrite: m('mibpsSeqWrite'),
      mibpsSeqRead: m('mibpsSeqRead'),
      mainCpuUs4k: m('mainCpuUs4k'),
      mainCpuMsPerMiBWrite: m('mainCpuMsPerMiBWrite'),
      mainCpuMsPerMiBRead: m('mainCpuMsPerMiBRead'),
    };
  };
  const plain = med(false);
  const encrypted = med(true);
  return {
    rounds: all,
    plain,
    encrypted,
    ratio: {
      writesPerSec4k: encrypted.writesPerSec4k / plain.writesPerSec4k,
      mibpsSeqWrite: encrypted.mibpsSeqWrite / plain.mibpsSeqWrite,
      mibpsSeqRead: encrypted.mibpsSeqRead / plain.mibpsSeqRead,
    },
  };
}

export function encryptionTable(s: EncryptionSummary, table: (h: string[], rows: (string | number)[][]) => string): string {
  const f = (x: number): string => (x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(1));
  const rounds = s.rounds.length / 2;
  return [
    `\nEncryption at rest (AES-256-GCM, sealed once per block in the writer; batched, real disk, library API): median of ${rounds} alternating rounds each. 4 KiB random writes over 256 MiB, each awaited; 1 MiB sequential writes; 1 MiB sequential reads after a reopen (cold cache: every block authenticated and decrypted).\n`,
    table(
      ['volume', '4K writes/s', '1M seq write MiB/s', '1M seq read MiB/s', 'main-thread CPU µs / 4K write', '... ms / MiB written', '... ms / MiB read'],
      [
        [
          'plain',
          f(s.plain.writesPerSec4k),
          f(s.plain.mibpsSeqWrite),
          f(s.plain.mibpsSeqRead),
          f(s.plain.mainCpuUs4k),
          s.plain.mainCpuMsPerMiBWrite.toFixed(2),
          s.plain.mainCpuMsPerMiBRead.toFixed(2),
        ],
        [
          'encrypted',
          f(s.encrypted.writesPerSec4k),
          f(s.encrypted.mibpsSeqWrite),
          f(s.encrypted.mibpsSeqRead),
          f(s.encrypted.mainCpuUs4k),
          s.encrypted.mainCpuMsPerMiBWrite.toFixed(2),
          s.encrypted.mainCpuMsPerMiBRead.toFixed(2),
        ],
        ['ratio', s.ratio.writesPerSec4k.toFixed(2), s.ratio.mibpsSeqWrite.toFixed(2), s.ratio.mibpsSeqRead.toFixed(2), '', '', ''],
      ],
    ),
    `\nRounds: ${s.rounds.map((r) => `${r.encrypted ? 'enc' : 'plain'}#${r.round + 1} ${Math.round(r.writesPerSec4k)}/s ${r.mibpsSeqWrite.toFixed(0)}/${r.mibpsSeqRead.toFixed(0)} MiB/s`).join('; ')}`,
  ].join('\n');
}
