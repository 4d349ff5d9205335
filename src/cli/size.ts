/** Sizes on the command line: plain bytes or a binary multiple (4096, 512K, 10G, 1.5T, 2GiB). */
import { UsageError } from './exit-codes';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`invalid ${what} '${text}': use bytes or a number with K, M, G, T (e.g. 10G)`);
  const bytes = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new UsageError(`invalid ${what} '${text}': must be a whole, positive number of bytes below 8 PiB`);
  }
  return bytes;
}

export function formatSize(bytes: number): string {
  for (const [unit, mult] of [
    ['T', 2 ** 40],
    ['G', 2 ** 30],
    ['M', 2 ** 20],
    ['K', 2 ** 10],
  ] as const) {
    if (bytes >= mult) {
      const v = bytes / mult;
      return `${Number.isInteger(v) ? v : v.toFixed(1)}${unit}iB`;
    }
  }
  return `${bytes}B`;
}

/** A size that may also be 0 (off), e.g. `--disk-cache-bytes 0`. */
export function parseSizeOrZero(text: string, what = 'size'): number {
  return /^\s*0+\s*$/.test(text) ? 0 : parseSize(text, what);
}
