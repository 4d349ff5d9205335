import { VbfsError, isVbfsError } from '../errors';
import type { Backend } from '../backend/backend';
import type { ReplayPlan } from '../backend/fencing';
import type { CheckpointSink, MapMedium, MapSegmentWriter, MapSource } from './map-medium';

/**
 * The map store's frames as objects in a bucket (docs/FORMAT.md, "Bucket layout").
 * Objects are immutable: every commit is a new delta object (a map log segment
 * holding one commit), and a checkpoint is streamed as numbered part objects, the
 * last one marked `-end`. A checkpoint counts only once its `-end` part exists, so a
 * crash mid-checkpoint leaves the previous checkpoint and the deltas after it
 * current (they are deleted only after the new one is complete).
 *
 *   <volume id>/map/<epoch 8 hex>/<segment 12 hex>                          delta
 *   <volume id>/checkpoint/<epoch 8 hex>/<first segment 12 hex>/<part 6 hex>-<bytes 8 hex>[-end]
 *
 * The writer's epoch is in every key it writes, so a writer fenced off by a newer
 * epoch never overwrites what the newer writer wrote. Where two epochs wrote the
 * same segment number, the higher epoch's object is the one read; the current
 * checkpoint is the complete one of the highest epoch (then the highest first
 * segment), and a writer never deletes an object of an epoch above its own.
 *
 * A writer holding the volume's lease passes `fence`: the plan beginEpoch made from
 * the epoch records (backend/fencing.ts). Then only what the plan counts is read:
 * a fenced writer's late deltas and checkpoints are invisible, and this epoch's
 * first delta must be the record's firstSeq (its run is gap-free from there).
 */
export interface MediumFence {
  plan: ReplayPlan;
  /** The seq of this epoch's first delta, from its epoch record (absent for a reader, which writes nothing). */
  firstSeq?: number;
}

export class BucketMapMedium implements MapMedium {
  readonly tornTails = false;
  readonly segmentPerCommit = true;
  /** Deltas are small (one flush wave each) and each is one GET on open: a checkpoint every this many bounds open time. */
  readonly maxSegments: number;
  /** Segment number -> every epoch that wrote it (from the last listing). */
  private readonly seen = new Map<number, number[]>();
  /** Segment -> the epoch whose delta counts, when fenced (from the plan). */
  private readonly counted: Map<number, number> | null;
  /** The checkpoint group (`<epoch>/<first segment>`) that is current; undefined: the newest complete one. */
  private currentGroup: string | null | undefined;
  private wrote = false;

  constructor(
    private readonly backend: Backend,
    private readonly volumeId: string,
    readonly epoch = 1,
    maxSegments = 256,
    private readonly fence?: MediumFence,
  ) {
    this.maxSegments = maxSegments;
    this.counted = fence ? new Map([...fence.plan.replay, ...fence.plan.covered].map((p) => [p.seq, p.epoch])) : null;
    const ck = fence?.plan.checkpoint;
    this.currentGroup = fence ? (ck ? `${hex(ck.epoch, 8)}/${hex(ck.seq + 1, 12)}` : null) : undefined;
    if (!Number.isSafeInteger(epoch) || epoch < 1 || epoch > 0xffffffff) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid writer epoch ${epoch}`);
  }

  private segKey(n: number, epoch: number): string {
    return `${this.volumeId}/map/${hex(epoch, 8)}/${hex(n, 12)}`;
  }

  private get ckPrefix(): string {
    return `${this.volumeId}/checkpoint/`;
  }

  describe(what: number | 'checkpoint'): string {
    const key = what === 'checkpoint' ? this.ckPrefix : this.segKey(what, this.newestEpoch(what));
    return this.backend.describe?.(key) ?? key;
  }

  private newestEpoch(n: number): number {
    const e = this.seen.get(n);
    return e && e.length > 0 ? Math.max(...e) : this.epoch;
  }

  async listSegments(): Promise<number[]> {
    this.seen.clear();
    const prefix = `${this.volumeId}/map/`;
    for (const key of await this.backend.list(prefix)) {
      const m = /^([0-9a-f]{8})\/([0-9a-f]{12})$/.exec(key.slice(prefix.length));
      if (!m) continue;
      const n = parseInt(m[2] as string, 16);
      const e = parseInt(m[1] as string, 16);
      // Fenced: only the delta the plan counts for this seq exists for the map store.
      if (this.counted && this.counted.get(n) !== e) continue;
      const epochs = this.seen.get(n) ?? [];
      epochs.push(e);
      this.seen.set(n, epochs);
    }
    return [...this.seen.keys()].sort((a, b) => a - b);
  }

  readSegment(n: number): Promise<Buffer> {
    return this.backend.get(this.segKey(n, this.newestEpoch(n)));
  }

  async deleteSegment(n: number): Promise<void> {
    const epochs = this.seen.get(n) ?? [this.epoch];
    for (const e of epochs) if (e <= this.epoch) await this.backend.delete(this.segKey(n, e));
    const kept = epochs.filter((e) => e > this.epoch);
    if (kept.length > 0) this.seen.set(n, kept);
    else this.seen.delete(n);
  }

  async syncDeletes(): Promise<void> {
    // A DELETE is durable when it is answered.
  }

  truncateSegment(n: number): Promise<void> {
    // Never called (tornTails is false): a delta object is whole or absent.
    throw new VbfsError('VBFS_CORRUPT', `map delta ${this.describe(n)} cannot be cut: objects are never torn`);
  }

  async createSegment(n: number, header: Buffer): Promise<MapSegmentWriter> {
    const key = this.segKey(n, this.epoch);
    if (this.fence?.firstSeq !== undefined && !this.wrote && n !== this.fence.firstSeq) {
      // A gap at the start of the run would hide every later delta of this epoch (planReplay).
      throw new VbfsError('VBFS_CORRUPT', `epoch ${this.epoch} must start its map at delta ${String(this.fence.firstSeq)}, not ${n}`, {
        epoch: this.epoch,
        segment: n,
      });
    }
    this.wrote = true;
    return {
      // One PUT of the header and the commit: durable when answered, all or nothing.
      append: async (bytes) => {
        await this.backend.put(key, Buffer.concat([header, bytes]));
        const epochs = this.seen.get(n) ?? [];
        if (!epochs.includes(this.epoch)) epochs.push(this.epoch);
        this.seen.set(n, epochs);
      },
      close: async () => undefined,
    };
  }

  async createCheckpoint(firstSegment: number): Promise<CheckpointSink> {
    const dir = `${this.ckPrefix}${hex(this.epoch, 8)}/${hex(firstSegment, 12)}/`;
    let part = 0;
    // The newest group is held back: it becomes the `-end` part at publish, so the
    // checkpoint is complete exactly when its last byte is durable.
    let held: Buffer | null = null;
    const partKey = (buf: Buffer, end: boolean): string => `${dir}${hex(part, 6)}-${hex(buf.length, 8)}${end ? '-end' : ''}`;
    const putPart = async (buf: Buffer, end: boolean): Promise<void> => {
      await this.backend.put(partKey(buf, end), buf);
      part++;
    };
    /** The checkpoint is current: older ones go (best effort: cleanup() on the next writable open deletes what is left). */
    const current = async (): Promise<void> => {
      if (this.currentGroup !== undefined) this.currentGroup = `${hex(this.epoch, 8)}/${hex(firstSegment, 12)}`;
      try {
        const { stale } = await this.scanCheckpoints();
        for (const key of stale) await this.backend.delete(key);
      } catch {
        // left for cleanup()
      }
    };
    return {
      write: async (group) => {
        if (held) await putPart(held, false);
        held = Buffer.concat(group);
      },
      sync: async () => undefined,
      close: async () => undefined,
      publish: async () => {
        await putPart(held ?? Buffer.alloc(0), true);
        held = null;
        // Current from here on, whatever the cleanup does: a failure there must not
        // make the map store think it is not.
        await current();
      },
      // The `-end` PUT failed after its retries, but a PUT whose answer was lost (a
      // reset or a 500 after RGW stored it) may have landed, and then the checkpoint
      // counts on the next open: a listing tells. An error here (the bucket does not
      // answer a listing either) leaves it unknown, and the caller must stop.
      published: async () => {
        if (held === null) return true;
        const key = partKey(held, true);
        const landed = (await this.backend.list(dir)).includes(key);
        if (landed) {
          held = null;
          part++;
          await current();
        }
        return landed;
      },
    };
  }

  async openCheckpoint(): Promise<MapSource | null> {
    const { current } = await this.scanCheckpoints();
    return current ? new PartsSource(this.backend, current) : null;
  }

  async cleanup(): Promise<void> {
    const { stale } = await this.scanCheckpoints();
    for (const key of stale) await this.backend.delete(key);
  }

  /** The current checkpoint's parts, and the keys of the others this writer may delete (older, or never completed). */
  private async scanCheckpoints(): Promise<{ current: Part[] | null; stale: string[] }> {
    const groups = new Map<string, Part[]>();
    const stale: string[] = [];
    for (const key of await this.backend.list(this.ckPrefix)) {
      const m = /^([0-9a-f]{8})\/([0-9a-f]{12})\/([0-9a-f]{6})-([0-9a-f]{8})(-end)?$/.exec(key.slice(this.ckPrefix.length));
      if (!m) continue;
      const group = `${m[1]}/${m[2]}`; // sorts by epoch, then first segment
      const parts = groups.get(group) ?? [];
      parts.push({
        key,
        epoch: parseInt(m[1] as string, 16),
        index: parseInt(m[3] as string, 16),
        bytes: parseInt(m[4] as string, 16),
        end: m[5] !== undefined,
      });
      groups.set(group, parts);
    }
    let current: Part[] | null = null;
    for (const name of [...groups.keys()].sort().reverse()) {
      const parts = (groups.get(name) as Part[]).sort((a, b) => a.index - b.index);
      const complete = parts.every((p, i) => p.index === i && p.end === (i === parts.length - 1));
      const isCurrent = this.currentGroup === undefined ? complete && !current : name === this.currentGroup;
      if (isCurrent) {
        if (!complete)
          throw new VbfsError('VBFS_CORRUPT', `checkpoint ${this.ckPrefix}${name}/ counts but is incomplete`, { path: `${this.ckPrefix}${name}/` });
        current = parts;
      } else for (const p of parts) if (p.epoch <= this.epoch) stale.push(p.key);
    }
    return { current, stale };
  }
}

interface Part {
  key: string;
  epoch: number;
  index: number;
  bytes: number;
  end: boolean;
}

/** The parts of a checkpoint read as one byte stream (ranged GETs). */
class PartsSource implements MapSource {
  private readonly starts: number[] = [];
  private readonly total: number;

  constructor(
    private readonly backend: Backend,
    private readonly parts: Part[],
  ) {
    let at = 0;
    for (const p of parts) {
      this.starts.push(at);
      at += p.bytes;
    }
    this.total = at;
  }

  async size(): Promise<number> {
    return this.total;
  }

  async read(buf: Uint8Array, position: number): Promise<number> {
    let i = this.parts.length - 1;
    while (i > 0 && (this.starts[i] as number) > position) i--;
    const part = this.parts[i];
    if (!part || position >= this.total) return 0;
    const off = position - (this.starts[i] as number);
    const want = Math.min(buf.length, part.bytes - off);
    if (want <= 0) return 0;
    let got: Buffer;
    try {
      got = await this.backend.get(part.key, off, want);
    } catch (err) {
      if (isVbfsError(err, 'VBFS_NOT_FOUND')) {
        throw new VbfsError('VBFS_CORRUPT', `checkpoint part ${part.key} is missing`, { path: part.key }, { cause: err });
      }
      throw err;
    }
    if (got.length !== want) throw new VbfsError('VBFS_CORRUPT', `checkpoint part ${part.key} is shorter than its name says`, { path: part.key });
    got.copy(buf, 0);
    return got.length;
  }

  async close(): Promise<void> {}
}

function hex(n: number, digits: number): string {
  return n.toString(16).padStart(digits, '0');
}
