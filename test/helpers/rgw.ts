/**
 * A real Ceph RADOS Gateway for the S3 tests, started once per test run by
 * test/helpers/ceph/rgw-cluster.sh (1 mon, 1 OSD, radosgw on 127.0.0.1, all under one
 * temp dir) and stopped after the last test. Suites call `requireRgw(this)` in a
 * `before` hook: the first call starts the cluster, later ones (other files) share it.
 * Without Ceph installed the suite is skipped with a visible reason, and fails in CI
 * (CI=true), where it must run.
 */
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { S3Backend, type S3BackendOptions } from '../../src/backend/s3-backend';
import { REPO } from './fuse-env';

export const RGW_SCRIPT = path.join(REPO, 'test', 'helpers', 'ceph', 'rgw-cluster.sh');
const DAEMONS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph'];

export interface RgwCluster {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** PIDs of ceph-mon, ceph-osd and radosgw, as started by the script. */
  pids: number[];
  /** How long the script took to get a signed-request-ready endpoint. */
  startMs: number;
  dir: string;
}

/** The bucket the S3 tests share; each backend gets its own fresh prefix in it. */
export const TEST_BUCKET = 'vbfs-test';
const RUN = `run-${process.pid}-${Date.now().toString(36)}`;
let seq = 0;

/** A key prefix no other backend of this run uses: an empty backend, no bucket to create. */
export function rgwTestPrefix(): string {
  return `${RUN}/t${++seq}`;
}

/** S3Backend options for the test cluster, with a fresh prefix. */
export function rgwOptions(rgw: RgwCluster, extra: Partial<S3BackendOptions> = {}): S3BackendOptions {
  return {
    bucket: TEST_BUCKET,
    prefix: rgwTestPrefix(),
    endpoint: rgw.endpoint,
    region: rgw.region,
    credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey },
    ...extra,
  };
}

let started: Promise<RgwCluster> | undefined;
let running: RgwCluster | undefined;
let startDir: string | undefined;

/** Why the cluster cannot run here, or null if it can. */
export function rgwUnavailableReason(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  const pathDirs = (process.env['PATH'] ?? '').split(':');
  const missing = DAEMONS.filter((b) => !pathDirs.some((d) => d !== '' && fs.existsSync(path.join(d, b))));
  if (missing.length > 0) return `${missing.join(', ')} not installed (apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common)`;
  return null;
}

/**
 * In a `before` hook (give it a timeout of 120 s or more): the running cluster,
 * started on first use. Skips the suite when Ceph is missing, except in CI.
 */
export async function requireRgw(ctx: Mocha.Context): Promise<RgwCluster> {
  requireCeph(ctx);
  started ??= startCluster();
  return started;
}

/** Skip (or, in CI, fail) when the Ceph packages are missing. */
export function requireCeph(ctx: Mocha.Context): void {
  const why = rgwUnavailableReason();
  if (why === null) return;
  if (process.env['CI'] === 'true') throw new Error(`S3 tests cannot run in CI: ${why}`);

  console.log(`      SKIPPED (no Ceph: ${why}; set CI=true to make this a failure)`);
  ctx.skip();
}

/** PIDs of live processes whose command line names `dir` (a cluster's daemons). */
export function processesUnder(dir: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(dir) && alive(Number(name))) out.push(Number(name));
    } catch {
      // gone while we looked
    }
  }
  return out;
}

function startCluster(): Promise<RgwCluster> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-rgw-'));
  startDir = dir;
  return new Promise((resolve, reject) => {
    execFile(RGW_SCRIPT, ['start', dir], { timeout: 150_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        // The script stops what it started on failure; this removes the directory.
        stopSync();
        reject(new Error(`starting the Ceph RGW cluster failed: ${err.message}\n${stderr}`));
        return;
      }
      const env = new Map<string, string>();
      for (const line of stdout.split('\n')) {
        const eq = line.indexOf('=');
        if (eq > 0) env.set(line.slice(0, eq), line.slice(eq + 1));
      }
      const need = (k: string): string => {
        const v = env.get(k);
        if (v === undefined) throw new Error(`rgw-cluster.sh printed no ${k}:\n${stdout}${stderr}`);
        return v;
      };
      try {
        running = {
          endpoint: need('AWS_ENDPOINT_URL_S3'),
          accessKeyId: need('AWS_ACCESS_KEY_ID'),
          secretAccessKey: need('AWS_SECRET_ACCESS_KEY'),
          region: need('AWS_REGION'),
          pids: need('RGW_PIDS').split(',').map(Number),
          startMs: Number(need('START_MS')),
          dir,
        };
        resolve(running);
      } catch (e) {
        stopSync();
        reject(e);
      }
    });
  });
}

/** Stop the cluster (if this run started one) and check its daemons are gone. */
export async function stopRgw(): Promise<void> {
  if (startDir === undefined) return;
  const dir = startDir;
  const pids = running?.pids ?? [];
  startDir = undefined;
  running = undefined;
  started = undefined;
  await new Promise<void>((resolve, reject) => {
    execFile(RGW_SCRIPT, ['stop', dir], { timeout: 60_000, encoding: 'utf8' }, (err, _out, stderr) => {
      if (err) reject(new Error(`stopping the Ceph RGW cluster in ${dir} failed: ${err.message}\n${stderr}`));
      else resolve();
    });
  });
  const left = pids.filter(alive);
  if (left.length > 0) throw new Error(`Ceph daemons still running after stop: ${left.join(', ')}`);
}

function stopSync(): void {
  if (startDir === undefined) return;
  const dir = startDir;
  startDir = undefined;
  running = undefined;
  try {
    execFileSync(RGW_SCRIPT, ['stop', dir], { timeout: 60_000, stdio: 'ignore' });
  } catch {
    // Best effort on the way out; the script refuses to touch anything it did not make.
  }
}

/** A live process (a zombie is dead: init reaps it). */
export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

// Root-level hook (this module is loaded once per run): the shared cluster is stopped
// after the last test of the whole run, and also if the run ends early.
if (typeof after === 'function')
  after(async function () {
    this.timeout(90_000);
    await stopRgw();
  });
process.on('exit', stopSync);
// A run stopped by a signal (timeout, Ctrl-C) does not reach 'exit' handlers by itself:
// stop the cluster, then let the signal do what it would have done.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  const onSignal = (): void => {
    stopSync();
    process.removeListener(sig, onSignal);
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  };
  process.on(sig, onSignal);
}

/**
 * For tests that drive bin/vbfs against the cluster: make sure the test bucket exists,
 * and return the AWS SDK's standard variables that point a vbfs process at it.
 */
export async function rgwCliEnv(rgw: RgwCluster): Promise<Record<string, string>> {
  const be = new S3Backend(rgwOptions(rgw));
  try {
    await be.ensureBucket();
  } finally {
    await be.close();
  }
  return {
    AWS_ENDPOINT_URL_S3: rgw.endpoint,
    AWS_ACCESS_KEY_ID: rgw.accessKeyId,
    AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey,
    AWS_REGION: rgw.region,
  };
}
