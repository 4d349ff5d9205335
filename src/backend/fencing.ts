import { VbfsError } from '../errors';

/**
 * Epochs in bucket keys, and which map objects count (docs/FORMAT.md, "Epochs and
 * fencing"). Pure: keys and JSON in, decisions out, no I/O, so the S3 store and its
 * tests share one reading of the rule.
 *
 * The problem it solves: a writer that lost its lease (paused past its TTL,
 * partitioned) may still have a PUT in flight, or may pass its own liveness check and
 * then stall before the PUT leaves. S3 cannot check a fencing token on a PUT, so the
 * late object does land. What makes it harmless:
 *  - every key a writer creates carries its epoch, or is created with If-None-Match: *
 *    (chunks), so it never replaces an object of a newer epoch;
 *  - the first object of every epoch is its epoch record, which names, for every
 *    earlier epoch, the run of delta seqs it adopted. A reader replays only those
 *    runs (and the newest epoch's own gap-free run): a delta the fenced writer wrote
 *    after the takeover is past its epoch's adopted run and is never replayed.
 */

export const MAX_EPOCH = 0xffff_ffff; // 8 hex digits
export const MAX_DELTA_SEQ = 2 ** 48 - 1; // 12 hex digits

/** A place in the map's history: delta `seq` of epoch `epoch`. */
export interface Position {
  epoch: number;
  seq: number;
}

/** The delta seqs [firstSeq, lastSeq] of `epoch` that a later epoch adopted (lastSeq = firstSeq - 1: none). */
export interface AdoptedRun {
  epoch: number;
  firstSeq: number;
  lastSeq: number;
}

/** Who took an epoch (the lease holder), for messages and post-mortems. */
export interface EpochHolder {
  host: string;
  pid: number;
  since: string;
}

/** Content of `<volume>/map/<epoch>/epoch`, created with If-None-Match: * before any delta of the epoch. */
export interface EpochRecord {
  version: 1;
  epoch: number;
  /** Seq of this epoch's first delta; its deltas are firstSeq, firstSeq + 1, ... with no gap. */
  firstSeq: number;
  /** Every earlier epoch whose deltas count, with the run that counts; an epoch not listed has none. Sorted by epoch. */
  adopted: AdoptedRun[];
  holder?: EpochHolder;
  createdAt: string;
}

/**
 * What governs a volume that has no epoch record at all (one written before leases,
 * or by a store that never took one): epoch 1, deltas from seq 1, nothing adopted.
 */
export const IMPLICIT_RECORD: Readonly<EpochRecord> = Object.freeze({ version: 1, epoch: 1, firstSeq: 1, adopted: [], createdAt: '' });

export function epochHex(epoch: number): string {
  if (!Number.isSafeInteger(epoch) || epoch < 1 || epoch > MAX_EPOCH) throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid epoch ${epoch} (1..${MAX_EPOCH})`);
  return epoch.toString(16).padStart(8, '0');
}

export function seqHex(seq: number): string {
  if (!Number.isSafeInteger(seq) || seq < 0 || seq > MAX_DELTA_SEQ)
    throw new VbfsError('VBFS_INVALID_ARGUMENT', `invalid delta seq ${seq} (0..${MAX_DELTA_SEQ})`);
  return seq.toString(16).padStart(12, '0');
}

/** `<volume>/lease/`: every lease object of the volume, one per epoch. */
export function leasePrefix(volumeKey: string): string {
  return `${volumeKey}/lease/`;
}

export function leaseKey(volumeKey: string, epoch: number): string {
  return `${leasePrefix(volumeKey)}${epochHex(epoch)}`;
}

export function epochRecordKey(volumeKey: string, epoch: number): string {
  return `${volumeKey}/map/${epochHex(epoch)}/epoch`;
}

export function deltaKey(volumeKey: string, epoch: number, seq: number): string {
  return `${volumeKey}/map/${epochHex(epoch)}/${seqHex(seq)}`;
}

/**
 * The directory of a checkpoint written by `epoch` whose log resumes at delta
 * `firstSeq` (bucket-map-medium.ts writes its parts under it: `<part 6 hex>-<bytes
 * 8 hex>`, the last one `-end`). As a Position it is (epoch, firstSeq - 1): the map
 * after every counted delta up to and including firstSeq - 1.
 */
export function checkpointDir(volumeKey: string, epoch: number, firstSeq: number): string {
  return `${volumeKey}/checkpoint/${epochHex(epoch)}/${seqHex(firstSeq)}/`;
}

export type EpochKey =
  | { kind: 'lease'; epoch: number }
  | { kind: 'epoch-record'; epoch: number }
  | { kind: 'delta'; epoch: number; seq: number }
  | { kind: 'checkpoint'; epoch: number; seq: number };

/** What a listed key of the volume is, or null for anything else (chunks, metadata, foreign keys). */
export function parseEpochKey(volumeKey: string, key: string): EpochKey | null {
  if (!key.startsWith(`${volumeKey}/`)) return null;
  const parts = key.slice(volumeKey.length + 1).split('/');
  const hex = (s: string | undefined, digits: number): number | null =>
    s !== undefined && s.length === digits && /^[0-9a-f]+$/.test(s) ? parseInt(s, 16) : null;
  const epoch = hex(parts[1], 8);
  if (epoch === null || epoch === 0) return null;
  if (parts[0] === 'lease' && parts.length === 2) return { kind: 'lease', epoch };
  if (parts[0] === 'checkpoint' && parts.length === 4) {
    // Only the `-end` part stands for the checkpoint: its parts are PUT in order, so
    // once the last exists, all do. (A checkpoint resuming at seq 0 does not exist.)
    const first = hex(parts[2], 12);
    if (first === null || first === 0 || !/^[0-9a-f]{6}-[0-9a-f]{8}-end$/.test(parts[3] as string)) return null;
    return { kind: 'checkpoint', epoch, seq: first - 1 };
  }
  if (parts.length !== 3) return null;
  if (parts[0] === 'map' && parts[2] === 'epoch') return { kind: 'epoch-record', epoch };
  const seq = hex(parts[2], 12);
  if (seq === null) return null;
  if (parts[0] === 'map') return { kind: 'delta', epoch, seq };
  return null;
}

/** The listing of `<volume>/` sorted into what planReplay needs. */
export function sortListing(
  volumeKey: string,
  keys: readonly string[],
): { deltas: Position[]; checkpoints: Position[]; recordEpochs: number[]; leaseEpochs: number[] } {
  const out = { deltas: [] as Position[], checkpoints: [] as Position[], recordEpochs: [] as number[], leaseEpochs: [] as number[] };
  for (const k of keys) {
    const p = parseEpochKey(volumeKey, k);
    if (p === null) continue;
    if (p.kind === 'delta') out.deltas.push({ epoch: p.epoch, seq: p.seq });
    else if (p.kind === 'checkpoint') out.checkpoints.push({ epoch: p.epoch, seq: p.seq });
    else if (p.kind === 'epoch-record') out.recordEpochs.push(p.epoch);
    else out.leaseEpochs.push(p.epoch);
  }
  out.deltas.sort(comparePositions);
  out.checkpoints.sort(comparePositions);
  out.recordEpochs.sort((a, b) => a - b);
  out.leaseEpochs.sort((a, b) => a - b);
  return out;
}

export function comparePositions(a: Position, b: Position): number {
  return a.epoch - b.epoch || a.seq - b.seq;
}

export function encodeEpochRecord(r: EpochRecord): Buffer {
  checkRecord(r, 'epoch record to write');
  return Buffer.from(`${JSON.stringify(r)}\n`);
}

export function decodeEpochRecord(data: Uint8Array, where: string): EpochRecord {
  let r: unknown;
  try {
    r = JSON.parse(Buffer.from(data).toString('utf8'));
  } catch {
    throw new VbfsError('VBFS_CORRUPT', `epoch record ${where} is not JSON`, { key: where });
  }
  checkRecord(r, `epoch record ${where}`);
  return r;
}

function checkRecord(r: unknown, what: string): asserts r is EpochRecord {
  const bad = (why: string): never => {
    throw new VbfsError('VBFS_CORRUPT', `${what}: ${why}`);
  };
  if (typeof r !== 'object' || r === null) bad('not an object');
  const o = r as Record<string, unknown>;
  if (o['version'] !== 1) throw new VbfsError('VBFS_UNSUPPORTED_VERSION', `${what}: version ${String(o['version'])} (this build reads 1)`);
  const isEpoch = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 1 && (v as number) <= MAX_EPOCH;
  const isSeq = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= MAX_DELTA_SEQ;
  if (!isEpoch(o['epoch'])) bad('bad epoch');
  if (!isSeq(o['firstSeq']) || (o['firstSeq'] as number) < 1) bad('bad firstSeq');
  if (!Array.isArray(o['adopted'])) bad('adopted is not a list');
  let prev = 0;
  for (const a of o['adopted'] as unknown[]) {
    const run = a as Record<string, unknown>;
    if (typeof a !== 'object' || a === null || !isEpoch(run['epoch']) || !isSeq(run['firstSeq']) || !isSeq(run['lastSeq'])) bad('bad adopted run');
    if ((run['epoch'] as number) <= prev || (run['epoch'] as number) >= (o['epoch'] as number)) bad('adopted epochs must rise and be older than the record');
    if ((run['firstSeq'] as number) < 1 || (run['lastSeq'] as number) < (run['firstSeq'] as number) - 1) bad('bad adopted run bounds');
    prev = run['epoch'] as number;
  }
  if (typeof o['createdAt'] !== 'string') bad('bad createdAt');
}

export interface ReplayPlan {
  /** The record in force: the newest epoch's. */
  governing: EpochRecord;
  /** The checkpoint to load first, or null (replay from nothing). */
  checkpoint: Position | null;
  /** Deltas to apply after it, in this order. */
  replay: Position[];
  /** Last delta seq of the governing epoch that counts (its run's end; firstSeq - 1 if none). */
  governingLastSeq: number;
  /** Counted deltas at or before the checkpoint, and counted checkpoints older than it: deletable by the holder. */
  covered: Position[];
  coveredCheckpoints: Position[];
  /** Deltas and checkpoints that never count (an epoch not adopted, past its adopted run: a fenced writer's late writes). */
  fenced: Position[];
  fencedCheckpoints: Position[];
  /** Deltas of the governing epoch after a gap in its run: still in flight (its writer acknowledges nothing past a gap). */
  pending: Position[];
}

/**
 * Which map objects make the volume's map, from a listing and the epoch records (at
 * least the newest; older ones are not needed). Throws VBFS_CORRUPT if a delta that
 * counts and is not covered by the chosen checkpoint is missing.
 */
export function planReplay(input: { deltas: readonly Position[]; checkpoints: readonly Position[]; records: readonly EpochRecord[] }): ReplayPlan {
  let governing: EpochRecord = IMPLICIT_RECORD;
  for (const r of input.records) if (r.epoch > governing.epoch || governing === IMPLICIT_RECORD) governing = r;
  const runs = new Map<number, AdoptedRun>(governing.adopted.map((a) => [a.epoch, a]));
  const g = governing.epoch;

  // A checkpoint counts if it sits inside a counted run (or at its very start: the
  // state a new epoch took over, before its first delta).
  const counts = (c: Position): boolean => {
    if (c.epoch === g) return c.seq >= governing.firstSeq - 1;
    const run = runs.get(c.epoch);
    return run !== undefined && c.seq >= run.firstSeq - 1 && c.seq <= run.lastSeq;
  };
  const checkpoints = [...input.checkpoints].sort(comparePositions);
  let checkpoint: Position | null = null;
  for (const c of checkpoints) if (counts(c)) checkpoint = c; // the newest that counts
  const after = (p: Position): boolean => checkpoint === null || comparePositions(p, checkpoint) > 0;

  const present = new Set(input.deltas.map((d) => `${d.epoch}/${d.seq}`));
  const replay: Position[] = [];
  for (const run of governing.adopted) {
    for (let s = run.firstSeq; s <= run.lastSeq; s++) {
      const p = { epoch: run.epoch, seq: s };
      if (!after(p)) continue;
      if (!present.has(`${p.epoch}/${p.seq}`)) {
        throw new VbfsError('VBFS_CORRUPT', `map delta ${epochHex(p.epoch)}/${seqHex(p.seq)} was adopted by epoch ${g} but is missing`, {
          epoch: p.epoch,
          seq: p.seq,
          governingEpoch: g,
        });
      }
      replay.push(p);
    }
  }
  // The governing epoch's own run: gap-free from its start (or from the checkpoint).
  let s = checkpoint !== null && checkpoint.epoch === g ? checkpoint.seq + 1 : governing.firstSeq;
  while (present.has(`${g}/${s}`)) replay.push({ epoch: g, seq: s++ });
  const governingLastSeq = s - 1;

  const inRun = (p: Position): boolean => {
    if (p.epoch === g) return p.seq >= governing.firstSeq && p.seq <= governingLastSeq;
    const run = runs.get(p.epoch);
    return run !== undefined && p.seq >= run.firstSeq && p.seq <= run.lastSeq;
  };
  const plan: ReplayPlan = {
    governing,
    checkpoint,
    replay,
    governingLastSeq,
    covered: [],
    coveredCheckpoints: [],
    fenced: [],
    fencedCheckpoints: [],
    pending: [],
  };
  for (const d of [...input.deltas].sort(comparePositions)) {
    if (inRun(d)) {
      if (!after(d)) plan.covered.push(d);
    } else if (d.epoch === g && d.seq > governingLastSeq) plan.pending.push(d);
    else plan.fenced.push(d);
  }
  for (const c of checkpoints) {
    if (!counts(c)) plan.fencedCheckpoints.push(c);
    else if (checkpoint !== null && comparePositions(c, checkpoint) < 0) plan.coveredCheckpoints.push(c);
  }
  return plan;
}

/**
 * The record a new epoch writes after taking the lease and listing the map: it
 * adopts everything the plan counts. `firstSeq` defaults to one above every seq
 * counted so far (delta seqs keep rising across epochs).
 */
export function nextEpochRecord(plan: ReplayPlan, epoch: number, opts: { firstSeq?: number; holder?: EpochHolder; now?: Date } = {}): EpochRecord {
  const g = plan.governing;
  if (epoch <= g.epoch && !(g === IMPLICIT_RECORD && epoch === 1)) {
    throw new VbfsError('VBFS_LEASE_LOST', `epoch ${epoch} is not newer than the map's epoch ${g.epoch}: this writer was superseded`, {
      epoch,
      mapEpoch: g.epoch,
    });
  }
  if (epoch === g.epoch) {
    // Epoch 1 of a volume that has no record yet: nothing to adopt.
    return {
      version: 1,
      epoch,
      firstSeq: opts.firstSeq ?? 1,
      adopted: [],
      ...(opts.holder ? { holder: opts.holder } : {}),
      createdAt: (opts.now ?? new Date()).toISOString(),
    };
  }
  const adopted = [...g.adopted, { epoch: g.epoch, firstSeq: g.firstSeq, lastSeq: plan.governingLastSeq }];
  let top = 0;
  for (const a of adopted) top = Math.max(top, a.lastSeq, a.firstSeq - 1);
  const record: EpochRecord = {
    version: 1,
    epoch,
    firstSeq: opts.firstSeq ?? top + 1,
    adopted,
    ...(opts.holder ? { holder: opts.holder } : {}),
    createdAt: (opts.now ?? new Date()).toISOString(),
  };
  checkRecord(record, `epoch record ${epoch}`);
  return record;
}
