/**
 * The jobs every target runs, how each is run (fio or dd through a loop-mounted
 * ext4), and how fio's JSON becomes the figures we print.
 */
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { debug, loopDevicesFor, run, sleep, isMounted } from './sh';

export interface Figures {
  /** The headline number of the job: IOPS or MiB/s (see Job.metric). */
  value: number;
  iops: number;
  mibps: number;
  /** completion latency of the job's main direction (write for write jobs), ms */
  p50Ms?: number;
  p99Ms?: number;
  /** fsync/fdatasync latency (fio "sync" section), ms */
  syncP50Ms?: number;
  syncP99Ms?: number;
  /** bytes actually moved (a time-bounded job may stop early) */
  bytes: number;
  seconds: number;
}

export interface Sizes {
  /** working set of the random and read jobs */
  workingSet: number;
  /** total of the sustained sequential write */
  seqWrite: number;
  /** seconds each time-bounded job runs */
  runtime: number;
  /** cap (s) on the sequential write and on each dd */
  capSeconds: number;
  /** MiB written by dd */
  ddMiB: number;
}

export type Prep = 'cold' | 'warm' | 'none';

export interface Job {
  id: string;
  label: string;
  metric: 'IOPS' | 'MiB/s';
  dir: 'read' | 'write';
  prep: Prep;
  /** fio arguments, or undefined for the dd job */
  fio?: (file: string, s: Sizes) => string[];
  describe: string;
}

const MiB = 1024 * 1024;

export const JOBS: Job[] = [
  {
    id: 'randread-4k-cold',
    label: '4K rand read, cold',
    metric: 'IOPS',
    dir: 'read',
    prep: 'cold',
    describe: 'psync, bs=4k, randread, --direct=1, after a remount and drop_caches',
    fio: (_file, s) => ['--rw=randread', '--bs=4k', '--direct=1', `--size=${s.workingSet}`, '--time_based', `--runtime=${s.runtime}`],
  },
  {
    id: 'seqread-1m-cold',
    label: '1M seq read, cold',
    metric: 'MiB/s',
    dir: 'read',
    prep: 'cold',
    describe: 'psync, bs=1M, read, --direct=1, one pass over the working set (time-capped), after a remount and drop_caches',
    fio: (_file, s) => ['--rw=read', '--bs=1M', '--direct=1', `--size=${s.workingSet}`, `--runtime=${s.runtime}`],
  },
  {
    id: 'randread-4k-warm',
    label: '4K rand read, warm',
    metric: 'IOPS',
    dir: 'read',
    prep: 'warm',
    describe: 'as cold, after one untimed --direct=1 pass over the working set',
    fio: (_file, s) => ['--rw=randread', '--bs=4k', '--direct=1', `--size=${s.workingSet}`, '--time_based', `--runtime=${s.runtime}`],
  },
  {
    id: 'seqread-1m-warm',
    label: '1M seq read, warm',
    metric: 'MiB/s',
    dir: 'read',
    prep: 'warm',
    describe: 'as cold, after one untimed --direct=1 pass over the working set',
    fio: (_file, s) => ['--rw=read', '--bs=1M', '--direct=1', `--size=${s.workingSet}`, `--runtime=${s.runtime}`],
  },
  {
    id: 'randwrite-4k',
    label: '4K rand write',
    metric: 'IOPS',
    dir: 'write',
    prep: 'none',
    describe: 'psync, bs=4k, randwrite (buffered), time-based',
    fio: (_file, s) => ['--rw=randwrite', '--bs=4k', `--size=${s.workingSet}`, '--time_based', `--runtime=${s.runtime}`],
  },
  {
    id: 'randwrite-4k-fsync',
    label: '4K rand write + fsync',
    metric: 'IOPS',
    dir: 'write',
    prep: 'none',
    describe: 'psync, bs=4k, randwrite, --fsync=1 (an fsync after every write), time-based',
    fio: (_file, s) => ['--rw=randwrite', '--bs=4k', '--fsync=1', `--size=${s.workingSet}`, '--time_based', `--runtime=${s.runtime}`],
  },
  {
    id: 'randwrite-4k-4jobs',
    label: '4K rand write x4 jobs',
    metric: 'IOPS',
    dir: 'write',
    prep: 'none',
    describe: 'psync, bs=4k, randwrite, --numjobs=4 on the same file, group reporting, time-based',
    fio: (_file, s) => ['--rw=randwrite', '--bs=4k', '--numjobs=4', '--group_reporting', `--size=${s.workingSet}`, '--time_based', `--runtime=${s.runtime}`],
  },
  {
    id: 'seqwrite-1m',
    label: '1M seq write (sustained)',
    metric: 'MiB/s',
    dir: 'write',
    prep: 'none',
    describe: 'psync, bs=1M, write of the sequential size (>= 1 GiB in a full run, so chunk flushing is included), capped in time',
    fio: (_file, s) => ['--rw=write', '--bs=1M', `--size=${s.seqWrite}`, `--runtime=${s.capSeconds}`],
  },
  {
    id: 'dd-ext4',
    label: 'dd via loop ext4 + fsync',
    metric: 'MiB/s',
    dir: 'write',
    prep: 'none',
    describe: 'losetup on the target file, mkfs.ext4, mount; dd bs=1M of random data with conv=fsync (time includes the fsync)',
  },
];

function pct(p: Record<string, number> | undefined, key: string): number | undefined {
  const v = p?.[key];
  return v === undefined ? undefined : v / 1e6;
}

interface FioDir {
  iops: number;
  bw_bytes: number;
  io_bytes: number;
  runtime: number;
  clat_ns?: { percentile?: Record<string, number> };
}
interface FioJob {
  jobname: string;
  error: number;
  read: FioDir;
  write: FioDir;
  sync?: { total_ios: number; lat_ns?: { percentile?: Record<string, number> } };
}

export function parseFio(json: string, dir: 'read' | 'write'): Figures {
  // fio may print warnings before the JSON document.
  const start = json.indexOf('{');
  const doc = JSON.parse(json.slice(start)) as { jobs: FioJob[] };
  const job = doc.jobs[0];
  if (!job) throw new Error('fio printed no job');
  if (job.error) throw new Error(`fio job error ${job.error}`);
  const d = job[dir];
  const iops = d.iops;
  const mibps = d.bw_bytes / MiB;
  const f: Figures = {
    value: 0,
    iops,
    mibps,
    p50Ms: pct(d.clat_ns?.percentile, '50.000000'),
    p99Ms: pct(d.clat_ns?.percentile, '99.000000'),
    bytes: d.io_bytes,
    seconds: d.runtime / 1000,
  };
  if (job.sync && job.sync.total_ios > 0) {
    f.syncP50Ms = pct(job.sync.lat_ns?.percentile, '50.000000');
    f.syncP99Ms = pct(job.sync.lat_ns?.percentile, '99.000000');
  }
  return f;
}

export async function runFio(job: Job, file: string, s: Sizes): Promise<Figures> {
  if (!job.fio) throw new Error(`${job.id} is not a fio job`);
  const args = [`--name=${job.id}`, `--filename=${file}`, '--ioengine=psync', '--fallocate=none', '--output-format=json', ...job.fio(file, s)];
  const timeoutMs = (Math.max(s.runtime, s.capSeconds) + 180) * 1000;
  const r = await run('fio', args, { timeoutMs });
  const f = parseFio(r.stdout, job.dir);
  f.value = job.metric === 'IOPS' ? f.iops : f.mibps;
  return f;
}

/** Untimed sequential write of the first `bytes` of `file` (prefill). */
export async function fioFill(file: string, bytes: number): Promise<void> {
  await run(
    'fio',
    [
      '--name=prefill',
      `--filename=${file}`,
      '--ioengine=psync',
      '--fallocate=none',
      '--rw=write',
      '--bs=1M',
      `--size=${bytes}`,
      '--end_fsync=1',
      '--output-format=json',
    ],
    { timeoutMs: 1_800_000 },
  );
}

/**
 * Untimed --direct=1 read of the first `bytes` (warms the daemon's caches, not the
 * kernel's). 16 readers on 16 slices, so a daemon that serves reads in parallel
 * (s3backer: ~100 ms per cold block in --test mode) warms in seconds, not minutes.
 */
export async function fioWarm(file: string, bytes: number): Promise<void> {
  const readers = 16;
  const slice = Math.floor(bytes / readers / MiB) * MiB;
  await run(
    'fio',
    [
      '--name=warm',
      `--filename=${file}`,
      '--ioengine=psync',
      '--rw=read',
      '--bs=1M',
      '--direct=1',
      `--numjobs=${readers}`,
      `--size=${slice}`,
      `--offset_increment=${slice}`,
      '--output-format=json',
    ],
    { timeoutMs: 1_800_000 },
  );
}

/** A file of random bytes for dd to copy (random so no zero-block shortcut applies). */
export function ensureRandomFile(file: string, bytes: number): void {
  if (fs.existsSync(file) && fs.statSync(file).size === bytes) return;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(MiB);
    for (let off = 0; off < bytes; off += MiB) {
      randomFillSync(chunk);
      fs.writeSync(fd, chunk, 0, Math.min(MiB, bytes - off), off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * dd through ext4 on a loop device on the target's file. Order of teardown is
 * the point: umount ext4, detach the loop device (and check it is gone), and only
 * then may the caller unmount the FUSE file system under it.
 */
export async function runDdExt4(
  file: string,
  mnt: string,
  randomFile: string,
  mibs: number[],
  capSeconds: number,
  onRun: (i: number, f: Figures) => void,
): Promise<number> {
  let done = 0;
  let loop: string | undefined;
  let mounted = false;
  try {
    loop = (await run('losetup', ['-f', '--show', file], { timeoutMs: 60_000 })).stdout.trim();
    debug(`loop device ${loop} on ${file}`);
    await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', loop], { timeoutMs: 900_000 });
    fs.mkdirSync(mnt, { recursive: true });
    // noinit_itable: no background inode-table zeroing racing with the timed dd.
    await run('mount', ['-o', 'noinit_itable', loop, mnt], { timeoutMs: 120_000 });
    mounted = true;
    for (let i = 0; i < mibs.length; i++) {
      const mib = mibs[i] as number;
      const out = path.join(mnt, `dd-${i}.bin`);
      const t0 = process.hrtime.bigint();
      await run('dd', [`if=${randomFile}`, `of=${out}`, 'bs=1M', `count=${mib}`, 'conv=fsync'], { timeoutMs: 1_800_000 });
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const bytes = mib * MiB;
      onRun(i, { value: bytes / MiB / seconds, iops: 0, mibps: bytes / MiB / seconds, bytes, seconds });
      done++;
      fs.rmSync(out, { force: true });
      await run('sync', ['-f', mnt], { timeoutMs: 900_000 });
      // dd cannot be time-bounded without leaving dirty pages for umount to write
      // back, so a target slower than the cap gets fewer runs instead.
      if (seconds > capSeconds) break;
    }
  } finally {
    if (mounted || isMounted(mnt)) {
      for (let attempt = 0; isMounted(mnt); attempt++) {
        const r = await run('umount', [mnt], { allowFail: true, timeoutMs: 900_000 });
        if (r.code === 0) break;
        // eslint-disable-next-line no-unsafe-finally -- a mount left behind breaks every later target: this error outranks the body's
        if (attempt > 20) throw new Error(`cannot umount ${mnt}: ${r.stderr}`);
        await sleep(500);
      }
    }
    if (loop) {
      await run('losetup', ['-d', loop], { allowFail: true, timeoutMs: 120_000 });
      for (let attempt = 0; loopDevicesFor(file).length > 0; attempt++) {
        // eslint-disable-next-line no-unsafe-finally -- as above, for a loop device left attached
        if (attempt > 100) throw new Error(`loop device ${loop} still attached to ${file}`);
        await sleep(100);
      }
    }
  }
  return done;
}
