/** The last N latencies in a ring, for p50/p99 in stats (sorting 1024 numbers on demand is cheap). */
export class LatencyWindow {
  private readonly ring: Float64Array;
  private n = 0;

  constructor(size: number) {
    this.ring = new Float64Array(size);
  }

  add(ms: number): void {
    this.ring[this.n % this.ring.length] = ms;
    this.n++;
  }

  quantile(q: number): number {
    const count = Math.min(this.n, this.ring.length);
    if (count === 0) return 0;
    const sorted = this.ring.slice(0, count).sort();
    return sorted[Math.min(count - 1, Math.floor(q * count))] as number;
  }
}
