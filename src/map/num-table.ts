/**
 * An open-addressing hash table from a non-negative integer key (a block or chunk
 * number, up to 2^53) to two numbers, in three typed arrays: no JS object or Map
 * entry per key. Linear probing with backward-shift deletion (no tombstones), so a
 * table that churns (the write buffer's blocks come and go) never degrades.
 *
 * Positions returned by find/insert are valid until the next insert or remove.
 */
const EMPTY_KEY = -1;
const MIN_CAPACITY = 16;

export class NumTable {
  private keys: Float64Array;
  /** First and second value of each position (the caller decides their meaning). */
  v1: Float64Array;
  v2: Float64Array;
  private mask: number;
  size = 0;

  constructor() {
    this.keys = new Float64Array(MIN_CAPACITY).fill(EMPTY_KEY);
    this.v1 = new Float64Array(MIN_CAPACITY);
    this.v2 = new Float64Array(MIN_CAPACITY);
    this.mask = MIN_CAPACITY - 1;
  }

  private home(key: number): number {
    const lo = key >>> 0;
    const hi = (key / 4294967296) >>> 0;
    return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> 7) & this.mask;
  }

  /** Position of `key`, or -1. */
  find(key: number): number {
    if (this.size === 0) return -1;
    const keys = this.keys;
    for (let i = this.home(key); ; i = (i + 1) & this.mask) {
      const k = keys[i] as number;
      if (k === key) return i;
      if (k === EMPTY_KEY) return -1;
    }
  }

  /** Position of `key`, added with both values 0 if absent. */
  insert(key: number): number {
    if ((this.size + 1) * 2 > this.keys.length) this.resize(this.keys.length * 2);
    const keys = this.keys;
    for (let i = this.home(key); ; i = (i + 1) & this.mask) {
      const k = keys[i] as number;
      if (k === key) return i;
      if (k === EMPTY_KEY) {
        keys[i] = key;
        this.v1[i] = 0;
        this.v2[i] = 0;
        this.size++;
        return i;
      }
    }
  }

  keyAt(i: number): number {
    return this.keys[i] as number;
  }

  removeAt(pos: number): void {
    const keys = this.keys;
    const mask = this.mask;
    let i = pos;
    for (let j = (i + 1) & mask; keys[j] !== EMPTY_KEY; j = (j + 1) & mask) {
      const h = this.home(keys[j] as number);
      // The entry at j may move to the hole at i unless its home lies cyclically in (i, j].
      const stays = i <= j ? h > i && h <= j : h > i || h <= j;
      if (stays) continue;
      keys[i] = keys[j] as number;
      this.v1[i] = this.v1[j] as number;
      this.v2[i] = this.v2[j] as number;
      i = j;
    }
    keys[i] = EMPTY_KEY;
    this.size--;
    if (this.keys.length > MIN_CAPACITY && this.size * 8 < this.keys.length) this.resize(this.keys.length / 2);
  }

  remove(key: number): boolean {
    const i = this.find(key);
    if (i < 0) return false;
    this.removeAt(i);
    return true;
  }

  /** Visit every key (no inserts or removes from inside `fn`). */
  forEach(fn: (key: number, v1: number, v2: number) => void): void {
    const keys = this.keys;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i] as number;
      if (k !== EMPTY_KEY) fn(k, this.v1[i] as number, this.v2[i] as number);
    }
  }

  get memoryBytes(): number {
    return this.keys.length * 24;
  }

  private resize(capacity: number): void {
    const keys = this.keys;
    const v1 = this.v1;
    const v2 = this.v2;
    this.keys = new Float64Array(capacity).fill(EMPTY_KEY);
    this.v1 = new Float64Array(capacity);
    this.v2 = new Float64Array(capacity);
    this.mask = capacity - 1;
    this.size = 0;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i] as number;
      if (k === EMPTY_KEY) continue;
      const j = this.insert(k);
      this.v1[j] = v1[i] as number;
      this.v2[j] = v2[i] as number;
    }
  }
}
