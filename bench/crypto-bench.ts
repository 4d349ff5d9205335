/**
 * Throughput of the crypto core (src/crypto/volume-cipher.ts) on this machine:
 * AES-256-GCM seal and open of 4 KiB and 128 KiB record payloads, one call at a
 * time on the main thread (what the event loop would pay per record if encryption
 * ran inline), plus the default scrypt stretch (the cost of opening a passphrase
 * volume). It decides whether encryption must move off the event loop.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/crypto-bench.js [seconds per case, default 1] [rounds, default 3]
 *
 * Prints MB/s (10^6 bytes) and µs per op; the best of the rounds (the machine is shared).
 */
import { randomBytes } from 'node:crypto';
import { DEFAULT_SCRYPT, DOMAIN_WAL, VolumeCipher } from '../src/crypto/volume-cipher';

interface Result {
  op: string;
  size: number;
  mbps: number;
  usPerOp: number;
}

function measure(seconds: number, fn: (i: number) => void): { ops: number; ns: bigint } {
  // Warm up (JIT, OpenSSL context set-up).
  for (let i = 0; i < 200; i++) fn(i);
  const start = process.hrtime.bigint();
  const until = start + BigInt(Math.round(seconds * 1e9));
  let ops = 0;
  let now = start;
  while (now < until) {
    for (let k = 0; k < 50; k++) fn(ops++);
    now = process.hrtime.bigint();
  }
  return { ops, ns: now - start };
}

async function main(): Promise<void> {
  const seconds = Number(process.argv[2] ?? 1);
  const rounds = Number(process.argv[3] ?? 3);
  const volumeId = randomBytes(16).toString('hex');
  const { cipher } = await VolumeCipher.create({ source: 'bench', bytes: randomBytes(32) }, volumeId);
  const best = new Map<string, Result>();
  for (let round = 0; round < rounds; round++) {
    for (const size of [4096, 128 * 1024]) {
      const data = randomBytes(size);
      const sealedBySeq: Buffer[] = [];
      const N = 64;
      for (let i = 0; i < N; i++) sealedBySeq.push(cipher.seal(DOMAIN_WAL, { block: i, seq: i, flags: 0 }, data));
      const cases: [string, (i: number) => void][] = [
        ['seal', (i) => void cipher.seal(DOMAIN_WAL, { block: i, seq: i, flags: 0 }, data)],
        ['open', (i) => void cipher.open(DOMAIN_WAL, { block: i % N, seq: i % N, flags: 0 }, sealedBySeq[i % N]!)],
      ];
      for (const [op, fn] of cases) {
        const { ops, ns } = measure(seconds, fn);
        const secs = Number(ns) / 1e9;
        const r: Result = { op, size, mbps: (ops * size) / secs / 1e6, usPerOp: (secs * 1e6) / ops };
        const key = `${op} ${size}`;
        const prev = best.get(key);
        if (!prev || r.mbps > prev.mbps) best.set(key, r);
      }
    }
  }
  console.log(`node ${process.version}, ${rounds} round(s) of ${seconds}s per case, best round shown`);
  console.log('op    payload    MB/s     µs/op');
  for (const r of best.values()) {
    console.log(`${r.op.padEnd(5)} ${(r.size / 1024 + ' KiB').padEnd(9)} ${r.mbps.toFixed(0).padStart(6)} ${r.usPerOp.toFixed(1).padStart(9)}`);
  }
  const t0 = process.hrtime.bigint();
  await VolumeCipher.create({ source: 'bench', bytes: Buffer.from('a passphrase') }, volumeId);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(
    `scrypt N=2^${Math.log2(DEFAULT_SCRYPT.N)} r=${DEFAULT_SCRYPT.r} p=${DEFAULT_SCRYPT.p} (create with a passphrase, thread pool): ${ms.toFixed(0)} ms`,
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
