/**
 * `-o opt1,opt2` mount options, and the mount.fuse calling convention
 * `vbfs <store> <mountpoint> [-o opts] [-n] [-s] [-f] [-v] [-t type]` used by
 * mount(8) and /etc/fstab (through mount.fuse or a mount.fuse.vbfs symlink).
 */
import { DURABILITY_MODES, type Durability } from '../types';
import type { VolumeTunables } from '../store/types';
import { UsageError } from './exit-codes';
import { parseSize, parseSizeOrZero } from './size';

export interface MountFlags {
  readOnly?: boolean;
  allowOther?: boolean;
  allowRoot?: boolean;
  defaultPermissions?: boolean;
  durability?: Durability;
  logFile?: string;
  logLevel?: string;
  /** Memory budget of the mount: write buffers + read caches of all volumes (bytes). */
  memoryBytes?: number;
  /** Local disk cache of chunk objects in front of a bucket (bytes; 0 = off). */
  diskCacheBytes?: number;
  /** Mount over a non-empty directory (libfuse `nonempty`). */
  nonempty?: boolean;
  /** The mount.fuse/fstab form may create a store that does not exist yet. */
  create?: boolean;
  stopTimeoutSeconds?: number;
  /** TTL of the lease of a volume whose state lives in a bucket (src/backend/lease.ts). */
  leaseTtlSeconds?: number;
  /** Key of the encrypted volumes (`key_file=PATH` / `key_env=NAME`): see cli/key-options.ts. */
  keyFile?: string;
  keyEnv?: string;
  /** Compaction policy (store/compactor.ts), from `-o compact_*=` or `--compact-*`. */
  compact?: CompactTunables;
  /** `wal_prealloc=on|off`: reuse preallocated WAL segments (docs/FORMAT.md, WAL format 3) or append plain ones (the default). */
  walPreallocate?: boolean;
}

export type CompactTunables = Partial<
  Pick<VolumeTunables, 'compactIntervalMs' | 'compactStartRatio' | 'compactTargetRatio' | 'compactChunkLive' | 'compactRateBytes'>
>;

/** The compaction options: `-o` name, --flag name, and how a value becomes the tunable. */
export const COMPACT_OPTIONS: ReadonlyArray<{ opt: string; flag: string; key: keyof CompactTunables; parse: (v: string, what: string) => number }> = [
  { opt: 'compact_interval', flag: 'compact-interval', key: 'compactIntervalMs', parse: (v, w) => Math.round(parseNumber(v, w, 0, 86400) * 1000) },
  { opt: 'compact_start', flag: 'compact-start', key: 'compactStartRatio', parse: (v, w) => parseNumber(v, w, 1, 1000) },
  { opt: 'compact_target', flag: 'compact-target', key: 'compactTargetRatio', parse: (v, w) => parseNumber(v, w, 1, 1000) },
  { opt: 'compact_chunk_live', flag: 'compact-chunk-live', key: 'compactChunkLive', parse: (v, w) => parseNumber(v, w, 0, 1) },
  { opt: 'compact_rate', flag: 'compact-rate', key: 'compactRateBytes', parse: (v, w) => parseSizeOrZero(v, w) },
];

function parseNumber(value: string, what: string, min: number, max: number): number {
  const n = value.trim() === '' ? NaN : Number(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`invalid ${what} '${value}': a number from ${min} to ${max}`);
  return n;
}

/** The compaction tunables as `-o` options again (for the daemon child and the fstab form). */
export function compactOptionStrings(c: CompactTunables | undefined): string[] {
  if (!c) return [];
  const out: string[] = [];
  for (const o of COMPACT_OPTIONS) {
    const v = c[o.key];
    if (v === undefined) continue;
    out.push(`${o.opt}=${o.key === 'compactIntervalMs' ? v / 1000 : v}`);
  }
  return out;
}

/** A stop timeout in seconds: a non-negative number. */
export function parseStopTimeout(value: string | number, what: string): number {
  const n = typeof value === 'number' ? value : value.trim() === '' ? NaN : Number(value);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`invalid ${what} '${value}': a number of seconds, 0 or more`);
  return n;
}

/**
 * A lease TTL in seconds: 1 to 3600, in whole milliseconds. Shorter cannot outlive
 * one slow PUT (the holder would fence itself for nothing); longer keeps a dead
 * holder's volume unmountable elsewhere for over an hour.
 */
export function parseLeaseTtl(value: string | number, what: string): number {
  const n = typeof value === 'number' ? value : value.trim() === '' ? NaN : Number(value);
  if (!Number.isFinite(n) || n < 1 || n > 3600 || !Number.isInteger(n * 1000)) {
    throw new UsageError(`invalid ${what} '${value}': a number of seconds from 1 to 3600 (default 30)`);
  }
  return n;
}

/** Options mount(8)/fstab pass that mean nothing to a FUSE store: accepted and ignored. */
const IGNORED = new Set([
  'rw',
  'defaults',
  'auto',
  'noauto',
  'user',
  'nouser',
  'users',
  'owner',
  'group',
  '_netdev',
  'nofail',
  'dev',
  'nodev',
  'suid',
  'nosuid',
  'exec',
  'noexec',
  'atime',
  'noatime',
  'relatime',
  'norelatime',
  'strictatime',
  'diratime',
  'nodiratime',
  'async',
  'lazytime',
  'nolazytime',
  'loud',
  'silent',
  'big_writes', // always on
]);

export function parseMountOptions(list: string[], sloppy = false): MountFlags {
  const flags: MountFlags = {};
  for (const opt of list
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean)) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? '' : opt.slice(eq + 1);
    switch (key) {
      case 'ro':
        flags.readOnly = true;
        break;
      case 'allow_other':
        flags.allowOther = true;
        break;
      case 'allow_root':
        flags.allowRoot = true;
        break;
      case 'default_permissions':
        flags.defaultPermissions = true;
        break;
      case 'durability':
        if (!(DURABILITY_MODES as readonly string[]).includes(value)) {
          throw new UsageError(`invalid mount option '${opt}': durability is one of ${DURABILITY_MODES.join(', ')}`);
        }
        flags.durability = value as Durability;
        break;
      case 'log_file':
        flags.logFile = value;
        break;
      case 'log_level':
        flags.logLevel = value;
        break;
      case 'memory':
        flags.memoryBytes = parseSize(value, 'memory');
        break;
      case 'disk_cache':
        flags.diskCacheBytes = parseSizeOrZero(value, 'disk_cache');
        break;
      case 'nonempty':
        flags.nonempty = true;
        break;
      case 'create':
        flags.create = true;
        break;
      case 'key_file':
        if (!value) throw new UsageError(`invalid mount option '${opt}': key_file=PATH`);
        flags.keyFile = value;
        break;
      case 'key_env':
        if (!value) throw new UsageError(`invalid mount option '${opt}': key_env=NAME`);
        flags.keyEnv = value;
        break;
      case 'stop_timeout':
        flags.stopTimeoutSeconds = parseStopTimeout(value, `mount option '${opt}'`);
        break;
      case 'lease_ttl':
        flags.leaseTtlSeconds = parseLeaseTtl(value, `mount option '${opt}'`);
        break;
      case 'wal_prealloc':
        if (value !== 'on' && value !== 'off') throw new UsageError(`invalid mount option '${opt}': wal_prealloc=on or wal_prealloc=off`);
        flags.walPreallocate = value === 'on';
        break;
      default: {
        const c = COMPACT_OPTIONS.find((o) => o.opt === key);
        if (c) {
          flags.compact = { ...flags.compact, [c.key]: c.parse(value, `mount option '${opt}'`) };
          break;
        }
        if (IGNORED.has(key) || key.startsWith('x-') || key === 'comment') break;
        if (!sloppy) {
          throw new UsageError(
            `unknown mount option '${opt}' (known: ro, allow_other, allow_root, default_permissions, durability=MODE, log_file=PATH, log_level=LEVEL, memory=SIZE, disk_cache=SIZE, nonempty, create, stop_timeout=SECONDS, lease_ttl=SECONDS, wal_prealloc=on|off, key_file=PATH, key_env=NAME, compact_interval=SECONDS, compact_start=RATIO, compact_target=RATIO, compact_chunk_live=FRACTION, compact_rate=SIZE)`,
          );
        }
      }
    }
  }
  return flags;
}

export interface MountFuseForm {
  store: string;
  mountpoint: string;
  options: string[];
  sloppy: boolean;
  fake: boolean;
  verbose: boolean;
}

/** Parse `<store> <mountpoint> -o ...` (argv without node and script). */
export function parseMountFuseForm(argv: string[]): MountFuseForm {
  const positional: string[] = [];
  const options: string[] = [];
  let sloppy = false;
  let fake = false;
  let verbose = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-o') {
      const v = argv[++i];
      if (v === undefined) throw new UsageError("option '-o' needs a value");
      options.push(v);
    } else if (a.startsWith('-o')) {
      options.push(a.slice(2));
    } else if (a === '-t' || a === '-N') {
      i++; // type ('fuse.vbfs') or namespace: nothing to do
    } else if (/^-[nsfvi]+$/.test(a)) {
      if (a.includes('s')) sloppy = true;
      if (a.includes('f')) fake = true;
      if (a.includes('v')) verbose = true;
    } else if (a.startsWith('-')) {
      throw new UsageError(`unknown option '${a}' in 'vbfs <store> <mountpoint> -o options' form`);
    } else {
      positional.push(a);
    }
  }
  if (positional.length !== 2) {
    throw new UsageError(`expected 'vbfs <store> <mountpoint> [-o opt,...]', got ${positional.length} path(s)`);
  }
  // fstab's old style 'vbfs#/var/lib/vbfs' reaches us as the source when mount.fuse leaves it whole.
  const store = positional[0]!.replace(/^vbfs#/, '');
  return { store, mountpoint: positional[1]!, options, sloppy, fake, verbose };
}
