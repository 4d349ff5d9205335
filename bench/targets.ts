/**
 * The things fio runs against. Each target shows one file (`file()`) that fio,
 * losetup and dd use; `setup` creates and mounts it, `remount` empties the
 * daemon's caches (for cold reads), `teardown` unmounts and removes its state.
 *
 * Cleanup rules, on purpose strict: a FUSE target refuses to unmount while a loop
 * device is attached to its file (never a lazy unmount under a loop device); the
 * daemons are started in the foreground by this process and stopped through
 * unmount, so we wait for their own PID to exit and never signal anything by name.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { type Daemon, debug, isMounted, log, loopDevicesFor, run, sleep, startDaemon, waitFor, within } from './sh';
import { NULL_FUSE_FSNAME } from './null-fuse';

export type TargetGroup = 'reference' | 'peer' | 'vbfs';

export interface Target {
  readonly id: string;
  readonly label: string;
  readonly group: TargetGroup;
  /** Does fsync()/fdatasync() on the file reach stable storage? */
  readonly realSync: boolean;
  readonly note: string;
  /** false: a remount would lose the data (memory-only), cold = drop caches only. */
  readonly canRemount: boolean;
  setup(): Promise<void>;
  file(): string;
  /** Write the first `bytes` of the file (so reads hit real data, not holes). */
  prefill(bytes: number, fill: (file: string, bytes: number) => Promise<void>): Promise<void>;
  remount(): Promise<void>;
  teardown(): Promise<void>;
}

export interface TargetEnv {
  /** Scratch directory for files, stores and mount points. */
  tmp: string;
  /** Size of the file each target shows. */
  fileBytes: number;
  repo: string;
}

function sizeArg(bytes: number): string {
  return `${Math.round(bytes / 1024 ** 2)}M`;
}

function assertNoLoop(file: string): void {
  const loops = loopDevicesFor(file);
  if (loops.length > 0) throw new Error(`refusing to unmount: ${loops.join(' ')} still attached to ${file}`);
}

/** Unmount a FUSE mount point without -z; retries while the kernel says busy. */
async function fuseUnmount(mnt: string, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (isMounted(mnt)) {
    const r = await run('fusermount', ['-u', mnt], { allowFail: true });
    if (r.code === 0 || !isMounted(mnt)) break;
    if (Date.now() > end) throw new Error(`could not unmount ${mnt}: ${r.stderr.trim()}`);
    debug(`unmount ${mnt} busy, retrying`);
    await sleep(500);
  }
}

// ---------------------------------------------------------------------------
class PlainFileTarget implements Target {
  readonly id = 'plain';
  readonly label = 'local file';
  readonly group = 'reference' as const;
  readonly realSync = true;
  readonly note = 'a plain file on the local disk (ext4/overlay of this machine): the ceiling';
  readonly canRemount = false;
  private readonly dir: string;
  constructor(private readonly env: TargetEnv) {
    this.dir = path.join(env.tmp, 'plain');
  }
  file(): string {
    return path.join(this.dir, 'file');
  }
  async setup(): Promise<void> {
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true });
    fs.writeFileSync(this.file(), '');
    fs.truncateSync(this.file(), this.env.fileBytes);
  }
  async prefill(bytes: number, fill: (file: string, bytes: number) => Promise<void>): Promise<void> {
    await fill(this.file(), bytes);
  }
  async remount(): Promise<void> {}
  async teardown(): Promise<void> {
    assertNoLoop(this.file());
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
class NullFuseTarget implements Target {
  readonly id = 'null';
  readonly label = 'null FUSE';
  readonly group = 'reference' as const;
  readonly realSync = false;
  readonly note = `bench/null-fuse.ts: one file in memory, fsync a no-op, options ${NULL_FUSE_FSNAME}: the FUSE ceiling`;
  readonly canRemount = false;
  private daemon: Daemon | undefined;
  private readonly mnt: string;
  constructor(private readonly env: TargetEnv) {
    this.mnt = path.join(env.tmp, 'null-mnt');
  }
  file(): string {
    return path.join(this.mnt, 'file');
  }
  async setup(): Promise<void> {
    fs.mkdirSync(this.mnt, { recursive: true });
    const script = path.join(this.env.repo, 'dist', 'bench', 'null-fuse.js');
    const d = startDaemon(process.execPath, [script, this.mnt, '--size', sizeArg(this.env.fileBytes), '--name', 'file']);
    this.daemon = d;
    await waitFor('null FUSE mount', () => d.output().includes('ready') || !d.isRunning(), 20_000);
    if (!d.isRunning()) throw new Error(`null-fuse exited: ${d.output()}`);
  }
  async prefill(bytes: number, fill: (file: string, bytes: number) => Promise<void>): Promise<void> {
    await fill(this.file(), bytes);
  }
  async remount(): Promise<void> {}
  async teardown(): Promise<void> {
    const d = this.daemon;
    if (!d) return;
    assertNoLoop(this.file());
    if (d.isRunning()) process.kill(d.pid, 'SIGTERM');
    const code = await within(d.exited, 15_000);
    if (code === 'timeout') {
      log(`null-fuse (pid ${d.pid}) did not exit; unmounting and killing it`);
      await fuseUnmount(this.mnt);
      if (d.isRunning()) process.kill(d.pid, 'SIGKILL');
    }
    this.daemon = undefined;
  }
}

// ---------------------------------------------------------------------------
/**
 * s3backer 1.5.4 in --test mode (blocks are files in a local directory). Flags
 * verified against `s3backer --help` on this machine:
 *  --blockSize=64k                64 KiB blocks
 *  --blockCacheSize=5120          block cache on: 320 MiB, the memory vbfs may use by
 *                                 default (256 MiB write buffer + 64 MiB read cache)
 *  --md5CacheSize=0 --md5CacheTime=0 --minWriteDelay=0
 *                                 lifts the MD5-cache cap (~1000 blocks/s); the
 *                                 three must be zero together
 *  --listBlocks                   knows which blocks are empty, like vbfs does
 *  -o big_writes,max_write=131072 same FUSE write size as vbfs
 *  write-through adds: --blockCacheSync --blockCacheWriteDelay=0 (the only mode in
 *  which a write is on the backend when it returns; fsync itself is a no-op).
 * In --test mode every backend block read/write sleeps a random 0-199 ms.
 */
export function s3backerFlags(mode: 'cached' | 'sync', cacheBlocks: number, fileBytes: number): string[] {
  const flags = [
    '--test',
    `--size=${sizeArg(fileBytes)}`,
    '--blockSize=64k',
    `--blockCacheSize=${cacheBlocks}`,
    '--md5CacheSize=0',
    '--md5CacheTime=0',
    '--minWriteDelay=0',
    '--listBlocks',
    '--quiet',
    '-o',
    'big_writes,max_write=131072',
  ];
  if (mode === 'sync') flags.push('--blockCacheSync', '--blockCacheWriteDelay=0');
  return flags;
}

class S3backerTarget implements Target {
  readonly id: string;
  readonly label: string;
  readonly group = 'peer' as const;
  readonly realSync: boolean;
  readonly note: string;
  readonly canRemount = true;
  private daemon: Daemon | undefined;
  private readonly data: string;
  private readonly mnt: string;
  constructor(
    private readonly env: TargetEnv,
    private readonly mode: 'cached' | 'sync',
    private readonly cacheBlocks: number,
  ) {
    this.id = `s3b-${mode}`;
    this.label = mode === 'cached' ? 's3backer cached' : 's3backer write-through';
    // In write-through mode a write returns once the block file is written, but
    // --test mode does not fsync those files either: "durable" here means "on the
    // backend", the same promise s3backer makes against S3.
    this.realSync = mode === 'sync';
    this.note =
      mode === 'cached'
        ? 'write-back block cache: fast, NOT durable (fsync is a no-op)'
        : 'write-through (--blockCacheSync --blockCacheWriteDelay=0): a write returns when the block is on the backend';
    this.data = path.join(env.tmp, `${this.id}-data`);
    this.mnt = path.join(env.tmp, `${this.id}-mnt`);
  }
  flags(mode = this.mode): string[] {
    return s3backerFlags(mode, this.cacheBlocks, this.env.fileBytes);
  }
  file(): string {
    return path.join(this.mnt, 'file');
  }
  private async mount(mode: 'cached' | 'sync'): Promise<void> {
    fs.mkdirSync(this.mnt, { recursive: true });
    // -f: stay in the foreground so the PID we hold is the daemon's.
    const d = startDaemon('s3backer', ['-f', ...this.flags(mode), this.data, this.mnt]);
    this.daemon = d;
    await waitFor('s3backer mount', () => isMounted(this.mnt) || !d.isRunning(), 20_000);
    if (!d.isRunning()) throw new Error(`s3backer exited: ${d.output()}`);
  }
  private async unmount(): Promise<void> {
    const d = this.daemon;
    assertNoLoop(this.file());
    await fuseUnmount(this.mnt);
    if (d) {
      // After the unmount s3backer still writes its dirty blocks back (at ~200
      // blocks/s in --test mode); its data is only safe once it has exited.
      const code = await within(d.exited, 600_000);
      if (code === 'timeout') {
        log(`s3backer (pid ${d.pid}) still flushing after 10 min; killing it`);
        process.kill(d.pid, 'SIGKILL');
      }
    }
    this.daemon = undefined;
  }
  async setup(): Promise<void> {
    fs.rmSync(this.data, { recursive: true, force: true });
    fs.mkdirSync(this.data, { recursive: true });
    await this.mount(this.mode);
  }
  async prefill(bytes: number, fill: (file: string, bytes: number) => Promise<void>): Promise<void> {
    if (this.mode === 'cached') return fill(this.file(), bytes);
    // Write-through does one 64 KiB block at a time at ~100 ms each (400 s for
    // 256 MiB); the data is the same either way, so fill through the write-back
    // cache and come back in write-through mode.
    await this.unmount();
    await this.mount('cached');
    await fill(this.file(), bytes);
    await this.unmount();
    await this.mount('sync');
  }
  async remount(): Promise<void> {
    await this.unmount();
    await this.mount(this.mode);
  }
  async teardown(): Promise<void> {
    if (this.daemon || isMounted(this.mnt)) await this.unmount();
    fs.rmSync(this.data, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
/**
 * vbfs through its CLI (pluggable: `--vbfs-cmd` replaces "node bin/vbfs"). The
 * daemon forks itself (--daemon), so we stop it with `vbfs unmount`, never by PID.
 */
export type VbfsMode = 'strict' | 'batched' | 'relaxed' | 'async' | 'encrypted';

class VbfsTarget implements Target {
  readonly id: string;
  readonly label: string;
  readonly group = 'vbfs' as const;
  readonly realSync: boolean;
  readonly note: string;
  readonly canRemount = true;
  private readonly store: string;
  private readonly mnt: string;
  private readonly volume = 'bench';
  /** `encrypted`: batched durability on an AES-256-GCM volume (issue 13's plain vs encrypted, same run). */
  private readonly keyFile: string | undefined;
  constructor(
    private readonly env: TargetEnv,
    private readonly mode: VbfsMode,
    private readonly cmd: string[],
    /** `-o wal_prealloc=on|off` (undefined: the default), for the fsync job's A/B in one run. */
    private readonly walPrealloc?: 'on' | 'off',
  ) {
    const suffix = walPrealloc === undefined ? '' : walPrealloc === 'on' ? '-prealloc' : '-appended';
    this.id = `vbfs-${mode}${suffix}`;
    this.label = `vbfs ${mode}${walPrealloc === undefined ? '' : walPrealloc === 'on' ? ', WAL preallocated' : ', WAL appended'}`;
    this.realSync = mode !== 'async';
    this.note =
      {
        strict: 'every write synced to the WAL before it returns',
        batched: 'group commit (default, the headline); fsync = WAL fdatasync',
        relaxed: 'sync only on fsync',
        async: 'fsync starts a sync but does not wait: NOT durable at fsync',
        encrypted: 'batched, on a volume created with --encrypt (AES-256-GCM, key from --key-file)',
      }[mode] + (walPrealloc === undefined ? '' : `; -o wal_prealloc=${walPrealloc}`);
    this.store = path.join(env.tmp, `${this.id}-store`);
    this.mnt = path.join(env.tmp, `${this.id}-mnt`);
    this.keyFile = mode === 'encrypted' ? path.join(env.tmp, `${this.id}.key`) : undefined;
  }
  private keyArgs(): string[] {
    return this.keyFile ? ['--key-file', this.keyFile] : [];
  }
  file(): string {
    return path.join(this.mnt, this.volume);
  }
  private vbfs(args: string[], timeoutMs = 120_000): Promise<unknown> {
    const [bin, ...pre] = this.cmd;
    return run(bin as string, [...pre, ...args], { cwd: this.env.repo, timeoutMs });
  }
  private async mount(): Promise<void> {
    fs.mkdirSync(this.mnt, { recursive: true });
    const walOpt = this.walPrealloc === undefined ? [] : ['-o', `wal_prealloc=${this.walPrealloc}`];
    await this.vbfs(['mount', this.mnt, '--store', this.store, '--daemon', ...this.keyArgs(), ...walOpt]);
    await waitFor('vbfs mount', () => isMounted(this.mnt), 20_000);
  }
  private async unmount(): Promise<void> {
    assertNoLoop(this.file());
    if (isMounted(this.mnt)) await this.vbfs(['unmount', this.mnt, '--store', this.store], 600_000);
    await waitFor('vbfs unmount', () => !isMounted(this.mnt), 30_000);
  }
  async setup(): Promise<void> {
    fs.rmSync(this.store, { recursive: true, force: true });
    const durability = this.mode === 'encrypted' ? 'batched' : this.mode;
    if (this.keyFile) fs.writeFileSync(this.keyFile, randomBytes(32), { mode: 0o600 });
    const enc = this.keyFile ? ['--encrypt', ...this.keyArgs()] : [];
    await this.vbfs(['create', this.volume, '--size', sizeArg(this.env.fileBytes), '--durability', durability, '--store', this.store, ...enc]);
    await this.mount();
  }
  async prefill(bytes: number, fill: (file: string, bytes: number) => Promise<void>): Promise<void> {
    await fill(this.file(), bytes);
  }
  async remount(): Promise<void> {
    await this.unmount();
    await this.mount();
  }
  async teardown(): Promise<void> {
    await this.unmount();
    fs.rmSync(this.store, { recursive: true, force: true });
    if (this.keyFile) fs.rmSync(this.keyFile, { force: true });
  }
}

export const TARGET_IDS = ['plain', 'null', 's3b-cached', 's3b-sync', 'vbfs-batched', 'vbfs-strict', 'vbfs-relaxed', 'vbfs-async', 'vbfs-encrypted'] as const;
/** Only when named: vbfs batched with plain appended / preallocated WAL segments (the fsync job's A/B in one run). */
const EXTRA_TARGET_IDS = ['vbfs-batched-appended', 'vbfs-batched-prealloc'];

/** Letters from the issue: a = local file, b = null FUSE, c = s3backer (both), d = vbfs (all modes, and batched on an encrypted volume). */
export function expandTargetFilter(spec: string | undefined): string[] {
  if (!spec) return [...TARGET_IDS];
  const out: string[] = [];
  for (const raw of spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const add = (ids: string[]): void => ids.forEach((id) => out.includes(id) || out.push(id));
    if (raw === 'a') add(['plain']);
    else if (raw === 'b') add(['null']);
    else if (raw === 'c' || raw === 's3b' || raw === 's3backer') add(['s3b-cached', 's3b-sync']);
    else if (raw === 'd' || raw === 'vbfs') add(TARGET_IDS.filter((t) => t.startsWith('vbfs-')));
    else if ((TARGET_IDS as readonly string[]).includes(raw) || EXTRA_TARGET_IDS.includes(raw)) add([raw]);
    else if ((TARGET_IDS as readonly string[]).includes(`vbfs-${raw}`)) add([`vbfs-${raw}`]);
    else throw new Error(`unknown target "${raw}" (known: a,b,c,d or ${[...TARGET_IDS, ...EXTRA_TARGET_IDS].join(',')})`);
  }
  return out;
}

export function makeTarget(id: string, env: TargetEnv, opts: { s3backerCacheBlocks: number; vbfsCmd: string[] }): Target {
  switch (id) {
    case 'plain':
      return new PlainFileTarget(env);
    case 'null':
      return new NullFuseTarget(env);
    case 's3b-cached':
      return new S3backerTarget(env, 'cached', opts.s3backerCacheBlocks);
    case 's3b-sync':
      return new S3backerTarget(env, 'sync', opts.s3backerCacheBlocks);
    default:
      if (id.endsWith('-appended')) return new VbfsTarget(env, id.slice(5, -9) as VbfsMode, opts.vbfsCmd, 'off');
      if (id.endsWith('-prealloc')) return new VbfsTarget(env, id.slice(5, -9) as VbfsMode, opts.vbfsCmd, 'on');
      if (id.startsWith('vbfs-')) return new VbfsTarget(env, id.slice(5) as VbfsMode, opts.vbfsCmd);
      throw new Error(`unknown target ${id}`);
  }
}
