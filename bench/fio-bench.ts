/**
 * `npm run bench`: the same fio jobs, in one run, against a plain local file, a
 * null FUSE filesystem, s3backer (cached and write-through) and vbfs in each
 * durability mode. Prints one table with the ratio of vbfs to each reference,
 * saves JSON and an SVG chart under bench/results/.
 *
 *   npm run bench                       full run (3 runs per figure, ~25 min)
 *   npm run bench -- --quick            smoke run (1 run, small sizes, ~5 min)
 *   npm run bench -- --targets a,b,c    a=local file b=null FUSE c=s3backer d=vbfs
 *   npm run bench -- --jobs randwrite-4k,dd-ext4 --runs 5
 *
 * Needs root (losetup, mount, drop_caches), /dev/fuse, fio and s3backer (installed
 * with apt-get when missing).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { type Figures, type Sizes, JOBS, ensureRandomFile, fioFill, fioWarm, runDdExt4, runFio } from './fio-jobs';
import { type Cell, type Results, computeChecks, medianFigures, renderSvg, renderTables } from './report';
import { NULL_FUSE_FSNAME, parseSize } from './null-fuse';
import { dropCaches, killCommands, log, run, setVerbose, which } from './sh';
import { compactionBench, compactionTable } from './compaction-bench';
import { type Target, expandTargetFilter, makeTarget, s3backerFlags } from './targets';

const MiB = 1024 * 1024;
const REPO = path.resolve(__dirname, '..', '..');

async function ensureTools(needS3backer: boolean): Promise<void> {
  const want: [string, string][] = [
    ['fio', 'fio'],
    ['losetup', 'mount'],
    ['mkfs.ext4', 'e2fsprogs'],
    ['fusermount', 'fuse'],
  ];
  if (needS3backer) want.push(['s3backer', 's3backer']);
  const missing: string[] = [];
  for (const [cmd, pkg] of want) if (!(await which(cmd))) missing.push(pkg);
  if (missing.length === 0) return;
  log(`installing missing packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const r = await run('apt-get', ['install', '-y', ...missing], { allowFail: true, env, timeoutMs: 900_000 });
  if (r.code !== 0) {
    await run('apt-get', ['update'], { env, timeoutMs: 900_000 });
    await run('apt-get', ['install', '-y', ...missing], { env, timeoutMs: 900_000 });
  }
}

/** The commit the numbers belong to (and whether the tree had local changes). */
async function gitDescribe(): Promise<string> {
  const head = await run('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, allowFail: true }).catch(() => undefined);
  const dirty = await run('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: REPO, allowFail: true }).catch(() => undefined);
  return `${head?.stdout.trim() ?? 'unknown'}${dirty?.stdout.trim() ? ' (with uncommitted changes)' : ''}`;
}

async function toolVersion(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { allowFail: true }).catch(() => undefined);
  return ((r?.stdout ?? '') + (r?.stderr ?? '')).split('\n')[0]?.trim() ?? '';
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName('npm run bench --')
    .option('quick', { type: 'boolean', default: false, describe: 'smoke run: 1 run, 64 MiB working set, short jobs' })
    .option('runs', { type: 'number', describe: 'runs per figure (median); default 3, 1 with --quick' })
    .option('targets', { type: 'string', describe: 'a=local file, b=null FUSE, c=s3backer, d=vbfs, or ids (plain,null,s3b-cached,s3b-sync,vbfs-batched,...)' })
    .option('jobs', { type: 'string', describe: `comma list of job ids: ${JOBS.map((j) => j.id).join(',')}` })
    .option('runtime', { type: 'number', describe: 'seconds per time-based job (default 3, 2 with --quick)' })
    .option('working-set', { type: 'string', describe: 'working set of random/read jobs (default 256M, 64M with --quick)' })
    .option('seq-size', { type: 'string', describe: 'sustained sequential write size (default 1G, 256M with --quick)' })
    .option('dd-mib', { type: 'number', describe: 'MiB written by dd (default 200, 50 with --quick)' })
    .option('cap', { type: 'number', describe: 'time cap in s for the sequential write and each dd (default 20, 8 with --quick)' })
    .option('vbfs-cmd', { type: 'string', default: `${process.execPath} bin/vbfs`, describe: 'command that runs the vbfs CLI (create/mount/unmount)' })
    .option('out', { type: 'string', default: path.join(REPO, 'bench', 'results') })
    .option('verbose', { type: 'boolean', default: false, describe: 'print every command' })
    .option('compaction', {
      type: 'boolean',
      default: true,
      describe: 'also measure foreground I/O with compaction running vs paused (--no-compaction skips it)',
    })
    .option('render', { type: 'string', describe: 'only re-render tables and chart from a saved results JSON' })
    .strict()
    .help()
    .parseAsync();

  setVerbose(argv.verbose);
  if (argv.render) {
    const saved = JSON.parse(fs.readFileSync(argv.render, 'utf8')) as Results;
    saved.checks = computeChecks(saved);
    const date = typeof saved.meta.date === 'string' ? saved.meta.date.slice(0, 10) : '';
    fs.writeFileSync(path.join(argv.out, 'latest.json'), JSON.stringify(saved, null, 2) + '\n');
    fs.writeFileSync(path.join(argv.out, 'latest.md'), renderTables(saved) + '\n');
    fs.writeFileSync(path.join(argv.out, 'chart.svg'), renderSvg(saved, `vbfs fio bench, ${date} (${String(saved.meta.cpus)} cores)`));
    process.stdout.write(renderTables(saved) + '\n');
    return;
  }
  if (process.getuid?.() !== 0) throw new Error('the bench needs root (losetup, mount, drop_caches)');
  const q = argv.quick;
  const sizes: Sizes = {
    workingSet: parseSize(argv['working-set'] ?? (q ? '64M' : '256M')),
    seqWrite: parseSize(argv['seq-size'] ?? (q ? '256M' : '1G')),
    runtime: argv.runtime ?? (q ? 2 : 3),
    capSeconds: argv.cap ?? (q ? 8 : 20),
    ddMiB: argv['dd-mib'] ?? (q ? 50 : 200),
  };
  const runs = argv.runs ?? (q ? 1 : 3);
  const fileBytes = 2 * 1024 ** 3;
  const jobFilter = argv.jobs
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const jobs = jobFilter ? JOBS.filter((j) => jobFilter.includes(j.id)) : JOBS;
  if (jobFilter) for (const id of jobFilter) if (!JOBS.some((j) => j.id === id)) throw new Error(`unknown job ${id}`);
  let targetIds = expandTargetFilter(argv.targets);
  const skipped: string[] = [];
  if (!fs.existsSync(path.join(REPO, 'bin', 'vbfs')) && argv['vbfs-cmd'].endsWith('bin/vbfs')) {
    const v = targetIds.filter((t) => t.startsWith('vbfs-'));
    if (v.length) {
      log(`bin/vbfs not found: skipping ${v.join(', ')}`);
      skipped.push(...v);
      targetIds = targetIds.filter((t) => !t.startsWith('vbfs-'));
    }
  }
  await ensureTools(targetIds.some((t) => t.startsWith('s3b-')));

  const tmp = path.join(argv.out, 'tmp');
  fs.mkdirSync(tmp, { recursive: true });
  const env = { tmp, fileBytes, repo: REPO };
  // Same memory as vbfs's defaults (256 MiB write buffer + 64 MiB read cache), which
  // also holds the whole 256 MiB working set, so "warm" is warm for s3backer too.
  const s3backerCacheBlocks = Math.max(5120, Math.ceil((sizes.workingSet * 1.25) / (64 * 1024)));
  const vbfsCmd = argv['vbfs-cmd'].split(' ').filter(Boolean);
  const targets: Target[] = targetIds.map((id) => makeTarget(id, env, { s3backerCacheBlocks, vbfsCmd }));
  const randomFile = path.join(tmp, `random-${sizes.ddMiB}M.bin`);
  if (jobs.some((j) => j.id === 'dd-ext4')) ensureRandomFile(randomFile, sizes.ddMiB * MiB);

  const started = new Date();
  const stamp = started.toISOString().replace(/[:]/g, '-').replace(/\..*/, 'Z');
  const res: Results = {
    meta: {
      date: started.toISOString(),
      command: ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
      git: await gitDescribe(),
      host: os.hostname(),
      kernel: os.release(),
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      memGiB: Math.round(os.totalmem() / 1024 ** 3),
      node: process.version,
      fio: await toolVersion('fio', ['--version']),
      s3backer: targetIds.some((t) => t.startsWith('s3b-')) ? await toolVersion('s3backer', ['--version']) : undefined,
      runs,
      quick: q,
      sizes,
      fileBytes,
      nullFuseOptions: `fsname=${NULL_FUSE_FSNAME}`,
      s3backerFlags: {
        cached: s3backerFlags('cached', s3backerCacheBlocks, fileBytes).join(' '),
        sync: s3backerFlags('sync', s3backerCacheBlocks, fileBytes).join(' '),
      },
      vbfsCmd: argv['vbfs-cmd'],
      skipped,
    },
    targets: targets.map((t) => ({ id: t.id, label: t.label, group: t.group, realSync: t.realSync, note: t.note })),
    jobs: jobs.map((j) => ({ id: j.id, label: j.label, metric: j.metric, dir: j.dir, describe: j.describe })),
    cells: {},
  };
  log(`targets: ${targetIds.join(', ')}; jobs: ${jobs.map((j) => j.id).join(', ')}; ${runs} run(s) each`);
  for (const t of targets) log(`  ${t.id}: ${t.note}`);
  if (targetIds.some((t) => t.startsWith('s3b-'))) {
    log(`  s3backer cached flags: ${(res.meta.s3backerFlags as { cached: string }).cached}`);
    log(`  s3backer write-through flags: ${(res.meta.s3backerFlags as { sync: string }).sync}`);
  }

  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return log(`${sig} again: still cleaning up mounts and loop devices, please wait`);
    interrupted = true;
    log(`${sig}: stopping the running command, then cleaning up`);
    killCommands();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const save = (): void => {
    res.checks = computeChecks(res);
    fs.mkdirSync(argv.out, { recursive: true });
    const json = JSON.stringify(res, null, 2) + '\n';
    fs.writeFileSync(path.join(argv.out, `${stamp}.json`), json);
    fs.writeFileSync(path.join(argv.out, 'latest.json'), json);
    fs.writeFileSync(path.join(argv.out, 'latest.md'), renderTables(res) + '\n');
    fs.writeFileSync(path.join(argv.out, 'chart.svg'), renderSvg(res, `vbfs fio bench, ${started.toISOString().slice(0, 10)} (${os.cpus().length} cores)`));
  };

  const cell = (job: string, target: string): Cell => {
    const byTarget = (res.cells[job] ??= {});
    return (byTarget[target] ??= { runs: [] });
  };

  for (const t of targets) {
    if (interrupted) break;
    const t0 = Date.now();
    log(`== ${t.label}: setup`);
    try {
      await t.setup();
      if (jobs.some((j) => j.dir === 'read')) {
        log(`   prefill ${sizes.workingSet / MiB} MiB`);
        await t.prefill(sizes.workingSet, fioFill);
      }
      for (const j of jobs) {
        if (interrupted) break;
        const c = cell(j.id, t.id);
        try {
          if (j.id === 'dd-ext4') {
            let mib = sizes.ddMiB;
            // A target that cannot write ddMiB within the cap (s3backer write-through:
            // ~0.5 MiB/s) gets a smaller dd, said so in the table, instead of a
            // half-hour run and an ext4 umount that has to write back the rest.
            const seq = res.cells['seqwrite-1m']?.[t.id]?.median?.mibps;
            if (seq !== undefined && seq * sizes.capSeconds < mib) {
              mib = Math.max(8, Math.floor(seq * sizes.capSeconds));
              c.note = `dd size cut to ${mib} MiB (seq write ${seq.toFixed(2)} MiB/s x ${sizes.capSeconds} s cap)`;
            }
            const done = await runDdExt4(t.file(), path.join(tmp, 'ext4-mnt'), randomFile, Array(runs).fill(mib) as number[], sizes.capSeconds, (i, f) => {
              c.runs.push(f);
              log(`   ${j.id} run ${i + 1}/${runs}: ${f.value.toFixed(2)} ${j.metric} (${mib} MiB in ${f.seconds.toFixed(1)} s)`);
            });
            if (done < runs && !interrupted) {
              c.note = `${c.note ? c.note + '; ' : ''}${done} run(s) only: a dd took longer than the ${sizes.capSeconds} s cap`;
            }
          } else {
            for (let r = 0; r < runs && !interrupted; r++) {
              if (j.prep === 'cold') {
                if (t.canRemount) await t.remount();
                await dropCaches();
              }
              if (j.prep === 'warm' && r === 0) await fioWarm(t.file(), sizes.workingSet);
              const f: Figures = await runFio(j, t.file(), sizes);
              c.runs.push(f);
              const lat = f.syncP50Ms !== undefined ? `, fsync p50 ${f.syncP50Ms.toFixed(3)} ms` : '';
              log(`   ${j.id} run ${r + 1}/${runs}: ${f.value.toFixed(1)} ${j.metric}, p50 ${f.p50Ms?.toFixed(3)} ms, p99 ${f.p99Ms?.toFixed(3)} ms${lat}`);
            }
          }
          if (j.id === 'seqwrite-1m' && c.runs.some((f) => f.bytes < sizes.seqWrite)) {
            const least = Math.min(...c.runs.map((f) => f.bytes)) / MiB;
            c.note = `stopped by the ${sizes.capSeconds} s cap after ${Math.round(least)} MiB (of ${sizes.seqWrite / MiB})`;
          }
        } catch (err) {
          c.error = (err as Error).message;
          log(`   ${j.id} FAILED: ${c.error}`);
          if (!t.canRemount || interrupted) throw err;
        } finally {
          c.median = medianFigures(c.runs);
        }
      }
    } catch (err) {
      log(`== ${t.label}: aborted: ${(err as Error).message}`);
      for (const j of jobs) {
        const c = cell(j.id, t.id);
        if (c.runs.length === 0 && !c.error) c.error = `target failed: ${(err as Error).message}`;
      }
    } finally {
      log(`== ${t.label}: teardown`);
      try {
        await t.teardown();
      } catch (err) {
        log(`!! teardown of ${t.id} failed: ${(err as Error).message} -- check mounts under ${tmp}`);
      }
      log(`== ${t.label}: ${Math.round((Date.now() - t0) / 1000)} s`);
      save();
    }
  }
  // Issue 10: foreground throughput while compaction runs vs paused, in the same run
  // (through the library: a mounted daemon has no switch to pause compaction).
  let compaction = '';
  if (argv.compaction && !interrupted) {
    log('== compaction: foreground 4 KiB random I/O with compaction running vs paused');
    const rows = await compactionBench({ mib: q ? 64 : 256, seconds: 2, rounds: q ? 5 : 9, log: (l) => log(`   ${l}`) });
    compaction = compactionTable(rows);
    res.meta['compaction'] = rows;
  }
  save();
  if (compaction) fs.appendFileSync(path.join(argv.out, 'latest.md'), `\n${compaction}\n`);
  process.stdout.write('\n' + renderTables(res) + '\n');
  if (compaction) process.stdout.write(`\n${compaction}\n`);
  process.stdout.write(`\nsaved ${path.join(argv.out, `${stamp}.json`)}, latest.json, latest.md, chart.svg\n`);
  if (interrupted) process.exitCode = 130;
}

main().catch((err: unknown) => {
  log(`bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
