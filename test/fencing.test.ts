import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  checkpointDir,
  decodeEpochRecord,
  deltaKey,
  encodeEpochRecord,
  epochRecordKey,
  leaseKey,
  nextEpochRecord,
  parseEpochKey,
  planReplay,
  sortListing,
  type EpochRecord,
  type Position,
} from '../src/backend/fencing';
import { checkLeaseTtl, decodeLease } from '../src/backend/lease';
import { Store } from '../src/store/store';
import type { VbfsError } from '../src/errors';

/**
 * The fencing rule's pure half (src/backend/fencing.ts, docs/FORMAT.md "Epochs and
 * fencing"): keys, epoch records, and which deltas and checkpoints a reader replays.
 * The same rule against a real bucket and a real fenced process is in lease.test.ts.
 */
const P = (epoch: number, seq: number): Position => ({ epoch, seq });
const rec = (epoch: number, firstSeq: number, adopted: EpochRecord['adopted'] = []): EpochRecord => ({
  version: 1,
  epoch,
  firstSeq,
  adopted,
  createdAt: '2026-11-27T05:00:00.000Z',
});
const corrupt = (e: VbfsError): boolean => e.code === 'VBFS_CORRUPT';

describe('fencing: epoch keys', () => {
  it('formats keys with 8 hex digits of epoch and 12 of seq, and parses them back', () => {
    assert.equal(leaseKey('v1', 1), 'v1/lease/00000001');
    assert.equal(epochRecordKey('v1', 0x2a), 'v1/map/0000002a/epoch');
    assert.equal(deltaKey('v1', 2, 0x1f), 'v1/map/00000002/00000000001f');
    assert.equal(checkpointDir('v1', 3, 1), 'v1/checkpoint/00000003/000000000001/');
    assert.deepEqual(parseEpochKey('v1', 'v1/map/00000002/00000000001f'), { kind: 'delta', epoch: 2, seq: 31 });
    assert.deepEqual(parseEpochKey('v1', 'v1/map/0000002a/epoch'), { kind: 'epoch-record', epoch: 42 });
    assert.deepEqual(parseEpochKey('v1', 'v1/lease/ffffffff'), { kind: 'lease', epoch: 0xffffffff });
    assert.deepEqual(parseEpochKey('v1', 'v1/checkpoint/00000003/000000000001/000001-00000010-end'), { kind: 'checkpoint', epoch: 3, seq: 0 });
    assert.equal(parseEpochKey('v1', 'v1/checkpoint/00000003/000000000001/000000-00000010'), null, 'a part before the end is not the checkpoint');
    for (const k of [
      'v2/map/00000001/000000000001',
      'v1/chunks/00000001',
      'v1/map/00000000/000000000001',
      'v1/map/0000001/000000000001',
      'v1/map/00000001/00000000000G',
      'v1/lease/00000001/x',
    ])
      assert.equal(parseEpochKey('v1', k), null, k);
    for (const bad of [
      () => leaseKey('v', 0),
      () => leaseKey('v', 2 ** 32),
      () => deltaKey('v', 1, -1),
      () => deltaKey('v', 1, 2 ** 48),
      () => deltaKey('v', 1, 1.5),
    ])
      assert.throws(bad, (e: VbfsError) => e.code === 'VBFS_INVALID_ARGUMENT');
  });

  it('sorts a listing into deltas, checkpoints, records and leases, in order', () => {
    const keys = [
      deltaKey('v', 2, 5),
      deltaKey('v', 1, 9),
      epochRecordKey('v', 2),
      `${checkpointDir('v', 1, 5)}000000-00000010-end`,
      `${checkpointDir('v', 1, 7)}000000-00000010`, // not complete
      leaseKey('v', 2),
      'v/chunks/00000001',
      deltaKey('v', 1, 10),
    ];
    assert.deepEqual(sortListing('v', keys), {
      deltas: [P(1, 9), P(1, 10), P(2, 5)],
      checkpoints: [P(1, 4)],
      recordEpochs: [2],
      leaseEpochs: [2],
    });
  });

  it('epoch records round-trip; damage is VBFS_CORRUPT, another version VBFS_UNSUPPORTED_VERSION', () => {
    const r = rec(3, 11, [
      { epoch: 1, firstSeq: 1, lastSeq: 4 },
      { epoch: 2, firstSeq: 5, lastSeq: 10 },
    ]);
    assert.deepEqual(decodeEpochRecord(encodeEpochRecord(r), 'k'), r);
    const bad = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));
    assert.throws(() => decodeEpochRecord(Buffer.from('{"version":1,'), 'k'), corrupt);
    assert.throws(() => decodeEpochRecord(bad({ ...r, firstSeq: 0 }), 'k'), corrupt);
    assert.throws(() => decodeEpochRecord(bad({ ...r, adopted: [{ epoch: 3, firstSeq: 1, lastSeq: 1 }] }), 'k'), corrupt); // not older than itself
    assert.throws(() => decodeEpochRecord(bad({ ...r, adopted: [r.adopted[1], r.adopted[0]] }), 'k'), corrupt); // not rising
    assert.throws(() => decodeEpochRecord(bad({ ...r, adopted: [{ epoch: 1, firstSeq: 5, lastSeq: 3 }] }), 'k'), corrupt);
    assert.throws(
      () => decodeEpochRecord(bad({ ...r, version: 2 }), 'k'),
      (e: VbfsError) => e.code === 'VBFS_UNSUPPORTED_VERSION',
    );
    assert.throws(() => decodeLease(Buffer.from('{"version":1,"epoch":1}'), 'k'), corrupt);
  });
});

describe('fencing: which deltas a reader replays (planReplay)', () => {
  it('a volume without records: epoch 1, its deltas gap-free from seq 1; the first epoch record adopts nothing', () => {
    const plan = planReplay({ deltas: [P(1, 1), P(1, 2), P(1, 3), P(1, 5)], checkpoints: [], records: [] });
    assert.deepEqual(plan.replay, [P(1, 1), P(1, 2), P(1, 3)]);
    assert.deepEqual(plan.pending, [P(1, 5)], 'after a gap: in flight, never acknowledged');
    assert.equal(plan.governingLastSeq, 3);
    const r1 = nextEpochRecord(planReplay({ deltas: [], checkpoints: [], records: [] }), 1);
    assert.deepEqual([r1.epoch, r1.firstSeq, r1.adopted], [1, 1, []]);
    // Taking over from that epoch 1 adopts its gap-free run and continues the seqs.
    const r2 = nextEpochRecord(plan, 2);
    assert.deepEqual([r2.firstSeq, r2.adopted], [4, [{ epoch: 1, firstSeq: 1, lastSeq: 3 }]]);
  });

  it("a fenced writer's deltas written after the takeover are never replayed, however they are numbered", () => {
    // Epoch 1 wrote 1..3; epoch 2 took over having listed 1..3, and wrote 4, 5.
    // Epoch 1's late writes (4 and 5 under its own epoch, and the hole 2.x cannot
    // happen: keys carry the epoch) land after the takeover.
    const r1 = rec(1, 1);
    const r2 = rec(2, 4, [{ epoch: 1, firstSeq: 1, lastSeq: 3 }]);
    const deltas = [P(1, 1), P(1, 2), P(1, 3), P(1, 4), P(1, 5), P(2, 4), P(2, 5)];
    const plan = planReplay({ deltas, checkpoints: [], records: [r1, r2] });
    assert.equal(plan.governing.epoch, 2);
    assert.deepEqual(plan.replay, [P(1, 1), P(1, 2), P(1, 3), P(2, 4), P(2, 5)]);
    assert.deepEqual(plan.fenced, [P(1, 4), P(1, 5)]);
    // Only the newest record is needed.
    assert.deepEqual(planReplay({ deltas, checkpoints: [], records: [r2] }).replay, plan.replay);
  });

  it('an epoch that took the lease but wrote no record counts for nothing, even if it writes later', () => {
    // Epoch 2 took the lease and stalled before its record; epoch 3 took over from it.
    const r3 = rec(3, 4, [{ epoch: 1, firstSeq: 1, lastSeq: 3 }]);
    const r2late = rec(2, 4, [{ epoch: 1, firstSeq: 1, lastSeq: 3 }]);
    const plan = planReplay({ deltas: [P(1, 1), P(1, 2), P(1, 3), P(2, 4), P(3, 4)], checkpoints: [P(2, 4)], records: [r2late, r3] });
    assert.deepEqual(plan.replay, [P(1, 1), P(1, 2), P(1, 3), P(3, 4)]);
    assert.deepEqual(plan.fenced, [P(2, 4)]);
    assert.deepEqual(plan.fencedCheckpoints, [P(2, 4)]);
    assert.equal(plan.checkpoint, null);
  });

  it('takes the newest checkpoint that counts, replays only what follows it, and names what it covers', () => {
    const r2 = rec(2, 6, [{ epoch: 1, firstSeq: 1, lastSeq: 5 }]);
    // Checkpoints: (1,3) by epoch 1; (1,7) by epoch 1 AFTER the takeover (past its
    // adopted run: fenced); (2,5) = the state epoch 2 took over, before its delta 6.
    const deltas = [P(1, 4), P(1, 5), P(1, 6), P(1, 7), P(2, 6), P(2, 7)];
    let plan = planReplay({ deltas, checkpoints: [P(1, 3), P(1, 7)], records: [r2] });
    assert.deepEqual(plan.checkpoint, P(1, 3));
    assert.deepEqual(plan.replay, [P(1, 4), P(1, 5), P(2, 6), P(2, 7)]);
    assert.deepEqual(plan.fencedCheckpoints, [P(1, 7)]);
    assert.deepEqual(plan.fenced, [P(1, 6), P(1, 7)]);
    plan = planReplay({ deltas, checkpoints: [P(1, 3), P(2, 5), P(1, 7)], records: [r2] });
    assert.deepEqual(plan.checkpoint, P(2, 5));
    assert.deepEqual(plan.replay, [P(2, 6), P(2, 7)]);
    assert.deepEqual(plan.covered, [P(1, 4), P(1, 5)]);
    assert.deepEqual(plan.coveredCheckpoints, [P(1, 3)]);
    // Deltas a checkpoint of the governing epoch covers may be gone: the run restarts after it.
    plan = planReplay({ deltas: [P(2, 9), P(2, 10)], checkpoints: [P(2, 8)], records: [r2] });
    assert.deepEqual(plan.replay, [P(2, 9), P(2, 10)]);
    assert.equal(plan.governingLastSeq, 10);
  });

  it('an adopted delta that is missing (and not covered by a checkpoint) is VBFS_CORRUPT', () => {
    const r2 = rec(2, 6, [{ epoch: 1, firstSeq: 1, lastSeq: 5 }]);
    assert.throws(() => planReplay({ deltas: [P(1, 1), P(1, 2), P(1, 4), P(1, 5)], checkpoints: [], records: [r2] }), corrupt);
    assert.doesNotThrow(() => planReplay({ deltas: [P(1, 4), P(1, 5)], checkpoints: [P(1, 3)], records: [r2] }));
  });

  it('a new epoch record is refused when the map already has a newer epoch (the taker was superseded)', () => {
    const plan = planReplay({ deltas: [], checkpoints: [], records: [rec(5, 1, [])] });
    assert.throws(
      () => nextEpochRecord(plan, 5),
      (e: VbfsError) => e.code === 'VBFS_LEASE_LOST',
    );
    assert.throws(
      () => nextEpochRecord(plan, 4),
      (e: VbfsError) => e.code === 'VBFS_LEASE_LOST',
    );
    const r6 = nextEpochRecord(plan, 6, { firstSeq: 1 });
    assert.deepEqual(r6.adopted, [{ epoch: 5, firstSeq: 1, lastSeq: 0 }], 'an empty run is kept: a checkpoint may sit at its start');
    assert.deepEqual(planReplay({ deltas: [], checkpoints: [P(5, 0)], records: [r6] }).checkpoint, P(5, 0));
  });
});

describe('lease TTL option', () => {
  it('is 1 s .. 1 h in whole ms; Store.open refuses another with VBFS_INVALID_ARGUMENT before touching the directory', async () => {
    assert.equal(checkLeaseTtl(1000), 1000);
    for (const bad of [999, 3_600_001, 1500.5, NaN])
      assert.throws(
        () => checkLeaseTtl(bad),
        (e: VbfsError) => e.code === 'VBFS_INVALID_ARGUMENT',
        String(bad),
      );
    const dir = path.join(os.tmpdir(), `vbfs-ttl-${process.pid}`);
    await assert.rejects(Store.open(dir, { leaseTtlMs: 10 }), (e: VbfsError) => e.code === 'VBFS_INVALID_ARGUMENT');
    assert.equal(fs.existsSync(dir), false, 'nothing created');
  });
});
