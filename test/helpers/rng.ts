/**
 * Small seeded PRNG (mulberry32) so every random test can be replayed from the seed it
 * prints. Not for anything but tests.
 */
export class Rng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform float in [0, 1). */
  next(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!(n > 0)) throw new Error(`Rng.int(${n})`);
    return Math.floor(this.next() * n);
  }

  /** Uniform integer in [lo, hi] inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  bool(p = 0.5): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    const v = items[this.int(items.length)];
    if (v === undefined) throw new Error('Rng.pick of an empty list');
    return v;
  }

  /** Pick by weight: weighted([['a', 3], ['b', 1]]). */
  weighted<T>(choices: readonly (readonly [T, number])[]): T {
    const total = choices.reduce((s, [, w]) => s + w, 0);
    let r = this.next() * total;
    for (const [v, w] of choices) {
      if (r < w) return v;
      r -= w;
    }
    const last = choices[choices.length - 1];
    if (last === undefined) throw new Error('Rng.weighted of an empty list');
    return last[0];
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }

  /** An independent generator derived from this one (for sub-tasks that must not shift the main stream). */
  fork(): Rng {
    return new Rng(this.u32());
  }
}

/**
 * The seeds a randomized test runs: VBFS_SEED=<n> replays one; otherwise `defaults`.
 * Print the seed in the test title so a failure names it.
 */
export function seedsFromEnv(defaults: readonly number[]): number[] {
  const env = process.env.VBFS_SEED;
  if (env !== undefined && env !== '') return env.split(',').map((s) => Number.parseInt(s, 10));
  return [...defaults];
}

/** An integer tunable from the environment (VBFS_MODEL_OPS etc.), with a default. */
export function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n)) throw new Error(`${name}=${v} is not a number`);
  return n;
}
