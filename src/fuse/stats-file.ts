/**
 * `<mountpoint>/.stats`: live counters as text, one `name value` line each.
 *
 * Every line has a fixed width (values right-aligned in a 20-character field), so
 * the file's size depends only on the number of volumes and counters, not on
 * their values. That matters because the kernel reads a FUSE file only up to the
 * size getattr reported: with a value-dependent size, `cat` would cut the text
 * whenever a counter grew a digit between getattr and read.
 */
import type { VolumeStats } from '../store/types';

const NAME_WIDTH = 24;
const VALUE_WIDTH = 20;

export interface StatsSource {
  name: string;
  durability: string;
  size: number;
  stats: VolumeStats;
}

export interface MountCounters {
  uptimeSeconds: number;
  openHandles: number;
  fuseErrors: number; // engine errors our handlers returned to the kernel (not ENOENT lookups)
}

function snake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

function fmt(v: unknown): string {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(3);
  return String(v);
}

function line(name: string, value: unknown): string {
  const v = fmt(value);
  const clipped = v.length > VALUE_WIDTH ? v.slice(0, VALUE_WIDTH) : v;
  return name.padEnd(NAME_WIDTH).slice(0, NAME_WIDTH) + clipped.padStart(VALUE_WIDTH) + '\n';
}

export function renderStats(mount: MountCounters, volumes: StatsSource[]): string {
  let out = '# vbfs live counters (fixed-width; `vbfs stats <mountpoint>` prints this file)\n';
  out += line('uptime_s', Math.floor(mount.uptimeSeconds));
  out += line('volumes', volumes.length);
  out += line('open_handles', mount.openHandles);
  out += line('fuse_errors', mount.fuseErrors);
  for (const v of volumes) {
    out += `\n[${v.name}]\n`;
    out += line('size', v.size);
    out += line('durability', v.durability);
    for (const [key, value] of Object.entries(v.stats)) out += line(snake(key), value);
  }
  return out;
}

export interface ParsedStats {
  /** The mount-wide counters (the lines before the first `[volume]` section). */
  mount: Record<string, string | number>;
  /** One entry per volume, by name: a volume may be called anything, `mount` too. */
  volumes: Record<string, Record<string, string | number>>;
}

/** Parse the text back (for `vbfs stats --json`). */
export function parseStats(text: string): ParsedStats {
  const out: ParsedStats = { mount: {}, volumes: {} };
  let section = out.mount;
  for (const raw of text.split('\n')) {
    const l = raw.trim();
    if (!l || l.startsWith('#')) continue;
    const m = /^\[(.*)\]$/.exec(l);
    if (m) {
      section = out.volumes[m[1]!] = {};
      continue;
    }
    const parts = l.split(/\s+/);
    const key = parts[0]!;
    const value = parts.slice(1).join(' ');
    section[key] = /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value;
  }
  return out;
}
