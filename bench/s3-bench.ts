/**
 * `npm run bench:s3`: reads through the engine over S3, against a real Ceph RGW that
 * this script starts (test/helpers/ceph/rgw-cluster.sh, via test/helpers/rgw.ts) and
 * stops. Every figure is the median of --reps runs, all in the same run:
 *
 *  ceiling      a plain loop of the SDK: GetObject of 1 MiB ranges of the volume's
 *               chunk objects, --parallel (8) requests in flight
 *  cold         the engine: sequential 1 MiB volume.read() over the volume, reopened
 *               with an empty disk cache and an empty memory cache (every byte from
 *               the bucket)
 *  warm         the same reads again after reopening the volume: the memory cache is
 *               empty, the disk chunk cache holds everything (no bucket request)
 *  file         the same reads from a store on the file backend (local chunk files),
 *               volume reopened likewise
 *  write s3     sustained sequential writes: a new volume in a bucket store (metadata and
 *               map in the bucket, as `vbfs create --backend` makes it), --write-size
 *               bytes of 1 MiB volume.write(), then close() (the final flush to the
 *               bucket and checkpoint): timed from the first write to the end of close()
 *  write file   the same into a new volume of the file-backend store
 *  put ceiling  not a target, a diagnosis: a plain loop of the SDK putting --write-size
 *               bytes as 4 MiB objects (the chunk size), --put-parallel (1,4,8) in flight,
 *               what RGW takes on this machine
 *  CPU per pass warm and file reads: this process's CPU time per pass (all threads), a
 *               figure the machine's load does not move the way it moves MiB/s
 *
 *  fsync latency  through a real `vbfs mount --backend` (FUSE): fio 4 KiB random writes
 *               with --fsync=1 on a `remote` volume (each fsync waits for its chunk
 *               and map delta in the bucket) and on a `batched` one (waits for the
 *               local WAL), same bucket, same mount, --fsync-seconds each; p50/p99 of
 *               fio's sync latency. Not a target: issue 11 asks for the figures.
 *
 * Targets (issue 11): cold >= 0.5x ceiling, warm >= 0.9x file, write s3 >= 0.8x write file.
 *
 *   npm run bench:s3                        (256 MiB, 5 runs, ~3 min)
 *   npm run bench:s3 -- --size 64M --reps 3 --write-size 1G
 *   npm run bench:s3 -- --only writes --reps 3 --write-size 256M --timeline /tmp/tl.jsonl
 *   npm run bench:s3 -- --only writes --flush-wave 4,8 --put-parallel 4,8,16
 *     (S3 write runs with 4 and with 8 chunk PUTs per flush wave, alternated in one run)
 *   npm run bench:s3 -- --only writes --flush-waves 1,2 --fsync-seconds 0
 *     (S3 write runs with one flush wave in flight and with two overlapping, in one run;
 *     no fsync latency phase)
 *     (writes only, with a per-request timeline of the S3 write runs)
 *   npm run bench:s3 -- --fsync-only                (only the fsync latencies, ~1 min)
 */
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { S3Backend, type S3BackendOptions } from '../src/backend/s3-backend';
import { Store } from '../src/store/store';
import { requireRgw, rgwOptions, rgwTestPrefix, stopRgw, TEST_BUCKET, type RgwCluster } from '../test/helpers/rgw';
import { fuseUnavailableReason, loopsUnder, run, vbfs } from '../test/helpers/fuse-env';
import { parseSize } from './null-fuse';

const MiB = 1024 * 1024;

function log(msg: string): void {
  process.stderr.write(`[s3 ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Incompressible, deterministic bytes. */
function fill(buf: Buffer, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= buf.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE(x >>> 0, i);
  }
}

async function readBody(body: Readable): Promise<number> {
  let n = 0;
  for await (const c of body) n += (c as Buffer).length;
  return n;
}

/** One backend request of a write run, in ms since the run started. */
interface Request {
  op: string;
  key: string;
  bytes: number;
  t0: number;
  t1: number;
}

/**
 * `backend` with every put/get/delete/list recorded in `log` (--timeline): what the
 * flusher asks of the bucket, and when. A Proxy, so the lease's createIfAbsent and
 * getStamped (and `remote`) pass through untouched.
 */
function timed<B extends object>(backend: B, log: Request[], origin: () => number): B {
  const ops = new Set(['put', 'createIfAbsent', 'get', 'delete', 'list']);
  return new Proxy(backend, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      if (typeof prop !== 'string' || !ops.has(prop)) return (v as (...a: unknown[]) => unknown).bind(target);
      return async (...args: unknown[]) => {
        const t0 = performance.now() - origin();
        const r: unknown = await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        const data = prop === 'put' || prop === 'createIfAbsent' ? (args[1] as Uint8Array) : prop === 'get' ? (r as Buffer) : undefined;
        log.push({ op: prop, key: String(args[0]), bytes: data?.byteLength ?? 0, t0, t1: performance.now() - origin() });
        return r;
      };
    },
  });
}

/** What a write run's timeline says: chunk PUT latencies, how many were in flight, and how long none was. */
function summarize(reqs: Request[], totalMs: number): string {
  const isPut = (r: Request): boolean => r.op === 'put' || r.op === 'createIfAbsent';
  const chunks = reqs.filter((r) => isPut(r) && r.key.includes('/chunks/'));
  const other = reqs.filter((r) => isPut(r) && !r.key.includes('/chunks/'));
  const lat = chunks.map((r) => r.t1 - r.t0);
  const edges = chunks.flatMap((r) => [
    [r.t0, 1],
    [r.t1, -1],
  ]);
  edges.sort((a, b) => (a[0] as number) - (b[0] as number) || (a[1] as number) - (b[1] as number));
  let n = 0;
  let last = 0;
  let idle = 0;
  let weighted = 0;
  let peak = 0;
  const first = chunks.length > 0 ? Math.min(...chunks.map((r) => r.t0)) : 0;
  for (const [t, d] of edges as [number, number][]) {
    if (t > first) {
      if (n === 0) idle += t - Math.max(last, first);
      weighted += n * (t - last);
    }
    n += d;
    peak = Math.max(peak, n);
    last = t;
  }
  const span = last - first;
  const pct = (q: number): number => [...lat].sort((a, b) => a - b)[Math.min(lat.length - 1, Math.floor(q * lat.length))] ?? 0;
  return (
    `${chunks.length} chunk PUTs in ${span.toFixed(0)} ms of ${totalMs.toFixed(0)} ms (first after ${first.toFixed(0)} ms): ` +
    `latency p50 ${pct(0.5).toFixed(0)} p90 ${pct(0.9).toFixed(0)} max ${pct(1).toFixed(0)} ms, ` +
    `in flight avg ${(span > 0 ? weighted / span : 0).toFixed(1)} peak ${peak}, none in flight ${idle.toFixed(0)} ms; ` +
    `${other.length} other PUTs (map, lease, meta) p50 ${[...other.map((r) => r.t1 - r.t0)].sort((a, b) => a - b)[Math.floor(other.length / 2)]?.toFixed(0) ?? '-'} ms`
  );
}

async function main(): Promise<void> {
  const argv = yargs(hideBin(process.argv))
    .option('size', { type: 'string', default: '256M', describe: 'volume bytes written and read' })
    .option('reps', { type: 'number', default: 5 })
    .option('parallel', { type: 'number', default: 8, describe: 'GETs in flight in the plain SDK loop' })
    .option('write-size', { type: 'string', describe: 'bytes per sustained write run (default: --size)' })
    .option('only', { choices: ['reads', 'writes'] as const, describe: 'run only the read or only the write figures (a shorter run)' })
    .option('put-parallel', { type: 'string', default: '1,4,8', describe: 'PUTs in flight in the plain SDK PUT loop (a comma list: one loop each)' })
    .option('flush-wave', {
      type: 'string',
      describe:
        'chunk PUTs in flight per flush wave of the S3 write runs (flushWaveChunks; a comma list: one S3 write run each, an A/B in one run; default: the engine default)',
    })
    .option('flush-waves', {
      type: 'string',
      describe:
        'flush waves in flight of the S3 write runs (flushWaves; a comma list: one S3 write run each, crossed with --flush-wave; default: the engine default)',
    })
    .option('timeline', { type: 'string', describe: 'write a per-request timeline of the S3 write runs to this file (JSON lines)' })
    .option('fsync-seconds', { type: 'number', default: 20, describe: 'fio runtime per durability mode in the fsync latency phase (0: skip the phase)' })
    .option('fsync-only', { type: 'boolean', default: false, describe: 'run only the fsync latency phase' })
    .strict()
    .parseSync();
  const size = parseSize(argv.size);
  const list = (s: string): number[] =>
    s.split(',').map((x) => {
      const n = Number(x);
      if (!Number.isInteger(n) || n < 1) throw new Error(`not a positive integer: ${x}`);
      return n;
    });
  const putParallel = list(argv['put-parallel']);
  // 0: the engine's default (no flushWaveChunks / flushWaves given).
  const waveChunks = argv['flush-wave'] !== undefined ? list(argv['flush-wave']) : [0];
  const wavesInFlight = argv['flush-waves'] !== undefined ? list(argv['flush-waves']) : [0];
  /** The S3 write variants of each run (an A/B in one run when there are several). */
  const variants = waveChunks.flatMap((chunks) => wavesInFlight.map((waves) => ({ chunks, waves, key: `${chunks || 'default'}x${waves || 'default'}` })));
  const variantLabel = (v: (typeof variants)[number]): string =>
    [v.chunks ? `wave ${v.chunks}` : '', v.waves ? `${v.waves} in flight` : ''].filter((x) => x !== '').join(', ');
  const writeSize = parseSize(argv['write-size'] ?? argv.size);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-s3bench-'));
  const fakeMocha = {
    skip(): never {
      throw new Error('Ceph is not installed: apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common');
    },
  } as unknown as Mocha.Context;
  log('starting Ceph RGW (test/helpers/ceph/rgw-cluster.sh)');
  const rgw = await requireRgw(fakeMocha);
  try {
    const s3: S3BackendOptions = rgwOptions(rgw);
    const setup = new S3Backend(s3);
    await setup.ensureBucket();
    await setup.close();
    if (argv['fsync-only']) {
      process.stdout.write(await fsyncLatency(rgw, work, argv['fsync-seconds']));
      return;
    }

    const reads = argv.only !== 'writes';
    const writes = argv.only !== 'reads';
    // The same volume content in a store over S3 and in one on the file backend.
    const s3Dir = path.join(work, 's3-store');
    const fileDir = path.join(work, 'file-store');
    const block = Buffer.allocUnsafe(MiB);
    let volumeId = '';
    const readStores = [
      [s3Dir, true],
      [fileDir, false],
    ] as const;
    for (const [dir, remote] of reads ? readStores : []) {
      const store = await Store.open(dir, remote ? { backend: new S3Backend(s3), diskCacheBytes: 0 } : {});
      const info = await store.createVolume('v', { size });
      if (remote) volumeId = info.id;
      const vol = await store.openVolume('v');
      log(`writing ${size / MiB} MiB to the ${remote ? 'S3' : 'file'} store`);
      for (let off = 0; off < size; off += MiB) {
        fill(block, off / MiB + 1);
        await vol.write(off, block);
      }
      await vol.close();
      await store.close();
    }

    const lister = new S3Backend(s3);
    const chunkKeys = (reads ? await lister.list(`${volumeId}/chunks/`) : []).map((k) => `${s3.prefix}/${k}`);
    await lister.close();

    const client = new S3Client({
      endpoint: rgw.endpoint,
      region: rgw.region,
      credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey },
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { httpAgent: { keepAlive: true, maxSockets: 64 } },
    });
    const objectSize = async (key: string): Promise<number> => {
      const r = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key, Range: 'bytes=0-0' }));
      await readBody(r.Body as Readable);
      return Number(/\/(\d+)$/.exec(r.ContentRange ?? '')?.[1] ?? 0);
    };
    const ranges: { key: string; start: number; end: number }[] = [];
    for (const key of chunkKeys) {
      const len = await objectSize(key);
      for (let o = 0; o < len; o += MiB) ranges.push({ key, start: o, end: Math.min(len, o + MiB) - 1 });
    }

    const ceiling = async (): Promise<number> => {
      let next = 0;
      let bytes = 0;
      const t0 = performance.now();
      const worker = async (): Promise<void> => {
        while (next < ranges.length) {
          const r = ranges[next++] as (typeof ranges)[number];
          const res = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: r.key, Range: `bytes=${r.start}-${r.end}` }));
          bytes += await readBody(res.Body as Readable);
        }
      };
      await Promise.all(Array.from({ length: argv.parallel }, worker));
      return bytes / MiB / ((performance.now() - t0) / 1000);
    };

    const out = Buffer.allocUnsafe(MiB);
    /** CPU time (this process, all threads) of the last seqRead, ms: what a pass costs whatever the load. */
    let lastCpuMs = 0;
    const seqRead = async (store: Store): Promise<number> => {
      const vol = await store.openVolume('v');
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      for (let off = 0; off < size; off += MiB) await vol.readInto(off, out);
      const mibs = size / MiB / ((performance.now() - t0) / 1000);
      const c = process.cpuUsage(c0);
      lastCpuMs = (c.user + c.system) / 1000;
      // Spot check: the last MiB read is the bytes written there.
      const want = Buffer.allocUnsafe(MiB);
      fill(want, size / MiB);
      if (!out.equals(want)) throw new Error('read back wrong bytes');
      await vol.close();
      return mibs;
    };

    /**
     * Sustained sequential writes into a new volume, timed to the end of close(): the
     * WAL is local either way; with S3 the flusher must keep the bucket up with it.
     */
    const s3WriteDir = path.join(work, 's3-write-store');
    const timeline = argv.timeline !== undefined ? fs.createWriteStream(argv.timeline) : null;
    const seqWrite = async (dir: string, remote: boolean, name: string, flushWaveChunks = 0, flushWaves = 0): Promise<number> => {
      const reqs: Request[] = [];
      let t0 = performance.now();
      const backend = remote ? (timeline ? timed(new S3Backend(s3), reqs, () => t0) : new S3Backend(s3)) : undefined;
      // As `vbfs create --backend` makes it: metadata and map in the bucket too.
      const store = await Store.open(dir, remote ? { backend, metadata: 'backend', diskCacheBytes: 0 } : {});
      await store.createVolume(name, { size: writeSize });
      const vol = await store.openVolume(name, { ...(flushWaveChunks > 0 ? { flushWaveChunks } : {}), ...(flushWaves > 0 ? { flushWaves } : {}) });
      reqs.length = 0;
      t0 = performance.now();
      for (let off = 0; off < writeSize; off += MiB) {
        fill(block, off / MiB + 7);
        await vol.write(off, block);
      }
      await vol.close();
      const ms = performance.now() - t0;
      const mibs = writeSize / MiB / (ms / 1000);
      if (remote && timeline) {
        log(`timeline ${name}: ${summarize(reqs, ms)}`);
        for (const r of reqs) timeline.write(`${JSON.stringify({ run: name, ...r })}\n`);
      }
      await store.deleteVolume(name); // the next run starts from the same state
      await store.close();
      return mibs;
    };

    const putCeiling = async (rep: number, parallel: number): Promise<number> => {
      const body = Buffer.allocUnsafe(4 * MiB);
      fill(body, rep);
      const keys = Array.from({ length: Math.ceil(writeSize / (4 * MiB)) }, (_v, k) => `${s3.prefix}/put-ceiling/${rep}/${k}`);
      let next = 0;
      const t0 = performance.now();
      const worker = async (): Promise<void> => {
        while (next < keys.length) await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: keys[next++], Body: body }));
      };
      await Promise.all(Array.from({ length: parallel }, worker));
      const mibs = (keys.length * 4) / ((performance.now() - t0) / 1000);
      for (const key of keys) await client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: key }));
      return mibs;
    };

    // Warm-up, not counted: the SDK client's first requests (connections, credentials), RGW's caches.
    if (reads) await ceiling();
    const figures = {
      ceiling: [] as number[],
      cold: [] as number[],
      warm: [] as number[],
      file: [] as number[],
      warmCpuMs: [] as number[],
      fileCpuMs: [] as number[],
      /** By variant (flush wave chunks x waves in flight). */
      writeS3: Object.fromEntries(variants.map((v) => [v.key, [] as number[]])) as Record<string, number[]>,
      writeFile: [] as number[],
      /** By PUTs in flight. */
      putCeiling: Object.fromEntries(putParallel.map((p) => [p, [] as number[]])) as Record<number, number[]>,
    };
    const last = (xs: number[] | undefined): string => xs?.at(-1)?.toFixed(0) ?? '-';
    let warmRequests = 0;
    for (let rep = 1; rep <= argv.reps; rep++) {
      if (reads) await readRep();
      if (writes) await writeRep(rep);
      log(
        `run ${rep}: put loop ${putParallel.map((p) => `${p}:${last(figures.putCeiling[p])}`).join(' ')} ceiling ${last(figures.ceiling)} cold ${last(figures.cold)} ` +
          `warm ${last(figures.warm)} file ${last(figures.file)} write s3 ${variants.map((v) => `${v.key}:${last(figures.writeS3[v.key])}`).join(' ')} write file ${last(figures.writeFile)} MiB/s`,
      );
    }
    timeline?.end();
    client.destroy();
    // (the two halves of a run, below)
    async function readRep(): Promise<void> {
      figures.ceiling.push(await ceiling());
      // Cold: an empty disk cache (removed) and a freshly opened volume.
      fs.rmSync(path.join(s3Dir, 'cache'), { recursive: true, force: true });
      const be = new S3Backend(s3);
      const store = await Store.open(s3Dir, { backend: be, diskCacheBytes: 2 * size });
      figures.cold.push(await seqRead(store));
      await (store.backend as { idle?: () => Promise<void> }).idle?.();
      const before = be.stats.requests;
      figures.warm.push(await seqRead(store));
      figures.warmCpuMs.push(lastCpuMs);
      warmRequests += be.stats.requests - before;
      await store.close();
      const fileStore = await Store.open(fileDir);
      figures.file.push(await seqRead(fileStore));
      figures.fileCpuMs.push(lastCpuMs);
      await fileStore.close();
    }
    async function writeRep(rep: number): Promise<void> {
      // Alternate which backend writes first: neither always gets the fresher page cache.
      const s3Runs = async (): Promise<void> => {
        for (const v of rep % 2 ? variants : [...variants].reverse())
          figures.writeS3[v.key]?.push(await seqWrite(s3WriteDir, true, `w${rep}-${v.key}`, v.chunks, v.waves));
      };
      if (rep % 2) {
        await s3Runs();
        figures.writeFile.push(await seqWrite(fileDir, false, `w${rep}`));
      } else {
        figures.writeFile.push(await seqWrite(fileDir, false, `w${rep}`));
        await s3Runs();
      }
      for (const p of rep % 2 ? putParallel : [...putParallel].reverse()) figures.putCeiling[p]?.push(await putCeiling(rep, p));
    }

    const m = {
      ceiling: median(figures.ceiling),
      cold: median(figures.cold),
      warm: median(figures.warm),
      file: median(figures.file),
      writeFile: median(figures.writeFile),
    };
    const readLines = [
      `S3 read bench: ${size / MiB} MiB volume, 1 MiB sequential reads, medians of ${argv.reps} runs, Ceph RGW on 127.0.0.1`,
      `  plain SDK GET loop (${argv.parallel} in flight)  ${m.ceiling.toFixed(0).padStart(6)} MiB/s`,
      `  engine cold (from the bucket)       ${m.cold.toFixed(0).padStart(6)} MiB/s   ratio ${(m.cold / m.ceiling).toFixed(2)} (target >= 0.5)`,
      `  engine warm (disk chunk cache)      ${m.warm.toFixed(0).padStart(6)} MiB/s   ratio ${(m.warm / m.file).toFixed(2)} vs file (target >= 0.9); bucket requests during warm runs: ${warmRequests}`,
      `  engine, file backend                ${m.file.toFixed(0).padStart(6)} MiB/s`,
      `  CPU per pass (all threads)          warm ${median(figures.warmCpuMs).toFixed(0)} ms, file ${median(figures.fileCpuMs).toFixed(0)} ms   ratio ${(median(figures.fileCpuMs) / median(figures.warmCpuMs)).toFixed(2)} (file/warm: the throughput ratio a CPU-bound machine allows)`,
    ];
    const writeLines = [
      `S3 write bench: ${writeSize / MiB} MiB of 1 MiB sequential writes into a new volume, timed to the end of close() (final flush), medians of ${argv.reps} runs`,
      ...variants.map((v) => {
        const s3m = median(figures.writeS3[v.key] ?? []);
        const label = `engine, S3 backend${variantLabel(v) ? ` (${variantLabel(v)})` : ''}`.padEnd(36);
        return `  ${label}${s3m.toFixed(0).padStart(6)} MiB/s   ratio ${(s3m / m.writeFile).toFixed(2)} vs file (target >= 0.8)`;
      }),
      `  engine, file backend                ${m.writeFile.toFixed(0).padStart(6)} MiB/s`,
      ...putParallel.map((p) => {
        const pm = median(figures.putCeiling[p] ?? []);
        return `  ${`plain SDK PUT loop (4 MiB, ${p} in flight)`.padEnd(36)}${pm.toFixed(0).padStart(6)} MiB/s   ratio ${(pm / m.writeFile).toFixed(2)} vs file (what RGW takes here; not a target)`;
      }),
    ];
    const lines = [
      ...(reads ? readLines : []),
      ...(writes ? writeLines : []),
      `  runs: ${JSON.stringify(figures, (_k, v: unknown) => (typeof v === 'number' ? Math.round(v) : v))}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
    if (argv['fsync-seconds'] > 0) process.stdout.write(await fsyncLatency(rgw, work, argv['fsync-seconds']));
  } finally {
    log('stopping Ceph RGW');
    await stopRgw();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/**
 * fsync latency through a real mount over the bucket: fio 4 KiB random writes, an
 * fsync after each (--fsync=1), on a `remote` and a `batched` volume of one store.
 */
async function fsyncLatency(rgw: RgwCluster, work: string, seconds: number): Promise<string> {
  const why = fuseUnavailableReason();
  if (why) return `fsync latency: skipped (${why})\n`;
  const env: NodeJS.ProcessEnv = {
    AWS_ENDPOINT_URL_S3: rgw.endpoint,
    AWS_ACCESS_KEY_ID: rgw.accessKeyId,
    AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey,
    AWS_REGION: rgw.region,
  };
  const store = path.join(work, 'fsync-store');
  const mnt = path.join(work, 'fsync-mnt');
  fs.mkdirSync(mnt, { recursive: true });
  const cli = async (args: string[]): Promise<void> => {
    const r = await vbfs(args, store, { env, timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`vbfs ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
  };
  const url = `s3://${TEST_BUCKET}/${rgwTestPrefix()}`;
  await cli(['create', 'remote', '--size', '256M', '--durability', 'remote', '--backend', url]);
  await cli(['create', 'batched', '--size', '256M', '--durability', 'batched']);
  await cli(['mount', mnt, '--daemon']);
  const out: string[] = [`fsync latency: fio 4 KiB random writes, --fsync=1, ${seconds} s per mode, through a real mount (FUSE) over Ceph RGW on 127.0.0.1`];
  try {
    for (const mode of ['remote', 'batched']) {
      log(`fio randwrite --fsync=1 on the ${mode} volume (${seconds} s)`);
      const r = await run(
        'fio',
        [
          `--name=fsync-${mode}`,
          `--filename=${path.join(mnt, mode)}`,
          '--ioengine=psync',
          '--fallocate=none',
          '--rw=randwrite',
          '--bs=4k',
          '--size=64M',
          '--fsync=1',
          '--time_based',
          `--runtime=${seconds}`,
          '--randrepeat=0',
          '--percentile_list=50:99',
          '--output-format=json',
        ],
        { timeoutMs: (seconds + 120) * 1000 },
      );
      if (r.code !== 0) throw new Error(`fio on ${mode}: exit ${r.code}: ${r.stderr}`);
      const job = (
        JSON.parse(r.stdout) as { jobs: { sync: { total_ios: number; lat_ns: { percentile?: Record<string, number> } }; write: { iops: number } }[] }
      ).jobs[0];
      const pct = job?.sync.lat_ns.percentile ?? {};
      const ms = (k: string): string => ((pct[k] ?? NaN) / 1e6).toFixed(2).padStart(8);
      out.push(
        `  ${mode.padEnd(8)} fsync p50 ${ms('50.000000')} ms  p99 ${ms('99.000000')} ms   ${String(job?.sync.total_ios ?? 0).padStart(6)} fsyncs, ${(job?.write.iops ?? 0).toFixed(0)} writes/s`,
      );
    }
  } finally {
    const u = await vbfs(['unmount', mnt], store, { env, timeoutMs: 120_000 });
    if (u.code !== 0) await run('fusermount', ['-u', mnt]);
    if ((await loopsUnder(work)).length > 0) log('a loop device is still attached under the work directory');
  }
  return out.join('\n') + '\n';
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
});
