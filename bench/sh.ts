/**
 * Child-process helpers for the benchmark scripts. Every process the bench starts
 * goes through here, so that on Ctrl-C we stop exactly those (by PID) and nothing
 * else, and so that every command the bench runs can be printed with --verbose.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface RunOptions {
  timeoutMs?: number;
  /** Resolve even on a non-zero exit (default: reject). */
  allowFail?: boolean;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

const live = new Map<number, { child: ChildProcess; daemon: boolean }>();
let verbose = false;

export function setVerbose(v: boolean): void {
  verbose = v;
}

export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

export function debug(msg: string): void {
  if (verbose) log(msg);
}

/** Processes started by this bench and still running. */
export function livePids(): number[] {
  return [...live.keys()];
}

/**
 * Stop the short-lived commands this bench started (fio, dd, mkfs), by PID, never
 * by name. Daemons are left alone: they are stopped by unmounting, in order, by
 * the finally blocks that own them.
 */
export function killCommands(signal: NodeJS.Signals = 'SIGTERM'): void {
  for (const [pid, p] of live) {
    if (p.daemon) continue;
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  debug(`$ ${cmd} ${args.join(' ')}`);
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid !== undefined) live.set(child.pid, { child, daemon: false });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    if (opts.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        if (child.pid !== undefined) {
          try {
            process.kill(child.pid, 'SIGTERM');
          } catch {
            /* gone */
          }
        }
      }, opts.timeoutMs);
    }
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      if (child.pid !== undefined) live.delete(child.pid);
      reject(err);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (child.pid !== undefined) live.delete(child.pid);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const res: RunResult = { code, signal, stdout, stderr, ms };
      if (timedOut) return reject(new Error(`${cmd} timed out after ${opts.timeoutMs} ms: ${stderr.trim().slice(-400)}`));
      if (code !== 0 && !opts.allowFail) {
        return reject(new Error(`${cmd} ${args.join(' ')} exited with ${code ?? signal}: ${stderr.trim().slice(-600)}`));
      }
      resolve(res);
    });
  });
}

/** A long-running child (a FUSE daemon in the foreground) that the caller stops by PID. */
export interface Daemon {
  readonly pid: number;
  readonly child: ChildProcess;
  output(): string;
  /** Resolves with the exit code when the process has exited. */
  exited: Promise<number | null>;
  isRunning(): boolean;
}

export function startDaemon(cmd: string, args: readonly string[], opts: { cwd?: string } = {}): Daemon {
  debug(`$ ${cmd} ${args.join(' ')} &`);
  // detached: its own process group, so a Ctrl-C at the terminal reaches fio/dd and
  // this script but not the FUSE daemon; the daemon must outlive the loop device and
  // ext4 on top of it and be stopped by our cleanup, in order (libfuse's own exit
  // path would unmount lazily under an attached loop device).
  const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  if (child.pid === undefined) throw new Error(`could not start ${cmd}`);
  const pid = child.pid;
  live.set(pid, { child, daemon: true });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
  let running = true;
  const exited = new Promise<number | null>((resolve) => {
    child.on('close', (code) => {
      running = false;
      live.delete(pid);
      resolve(code);
    });
    child.on('error', () => {
      running = false;
      live.delete(pid);
      resolve(null);
    });
  });
  return { pid, child, output: () => out, exited, isRunning: () => running };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `p`, or 'timeout' after `ms`; the timer is cleared so it never holds the process open. */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** True when `dir` is a mount point right now (per /proc/self/mountinfo). */
// Pure string work on purpose: a stat of a FUSE mount point from the process that
// serves it (or while its daemon is stuck) would hang.
export function isMounted(dir: string): boolean {
  const real = path.resolve(dir);
  const info = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  return info.split('\n').some((line) => line.split(' ')[4] === real.replace(/ /g, '\\040'));
}

export async function waitFor(what: string, cond: () => boolean, timeoutMs: number, stepMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

// Loop devices whose backing file is `file` (from /sys/block/loopN/loop/backing_file).
export function loopDevicesFor(file: string): string[] {
  const want = path.resolve(file);
  const out: string[] = [];
  for (const dev of fs.readdirSync('/sys/block')) {
    if (!dev.startsWith('loop')) continue;
    try {
      const backing = fs.readFileSync(`/sys/block/${dev}/loop/backing_file`, 'utf8').trim();
      if (backing === want) out.push(`/dev/${dev}`);
    } catch {
      // not attached
    }
  }
  return out;
}

export async function which(cmd: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v ${cmd}`], { allowFail: true });
  return r.code === 0;
}

/** Best-effort cold cache: write back dirty pages and drop the page cache (root only). */
export async function dropCaches(): Promise<boolean> {
  await run('sync', []);
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}
