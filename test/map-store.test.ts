import * as assert from 'node:assert/strict';
import { isVbfsError } from '../src/errors';
import { FRAME_HEADER } from '../src/format/frame';
import { ChunkPlacement, allocPlacement } from '../src/format/map-records';
import { BlockIndex } from '../src/map/block-index';
import { MapStore } from '../src/map/map-store';
import { silentLogger, type Logger } from '../src/types';
import { SimFS } from './helpers/sim-fs';

/**
 * Map log recovery with sync frames (format 2): every commit write begins with an
 * 'S' frame claiming what the previous fdatasyncs covered. A commit write that never
 * completed its fdatasync may reach the disk with a hole before frames that did:
 * that is a torn tail, cut. Damage inside a synced commit is corruption.
 */
const ID = '00112233445566778899aabbccddeeff';
const DIR = '/map';

function commitOf(chunkId: number, firstBlock: number, n: number): ChunkPlacement {
  const p = allocPlacement(chunkId, n);
  for (let i = 0; i < n; i++) {
    p.blocks[i] = firstBlock + i;
    p.seqs[i] = 100 * chunkId + i + 1;
    p.offsets[i] = 64 + i * 4128;
    p.lens[i] = 4096;
  }
  return p;
}

async function load(sim: SimFS, logger: Logger = silentLogger): Promise<BlockIndex> {
  const index = new BlockIndex(1024);
  await new MapStore(sim, DIR, ID, logger, () => undefined).load(index, false);
  return index;
}

describe('map log sync frames', () => {
  let sim: SimFS;
  let file: string;
  let firstWriteEnd: number;
  beforeEach(async () => {
    sim = new SimFS();
    await sim.mkdir(DIR);
    await sim.fsyncDir('/');
    const m = new MapStore(sim, DIR, ID, silentLogger, () => undefined);
    await m.load(new BlockIndex(1024), false);
    await m.commit([commitOf(1, 0, 4)]);
    file = sim.files(`${DIR}/`)[0] as string;
    firstWriteEnd = (sim.readRaw(file) as Buffer).length;
    await m.commit([commitOf(2, 10, 4), commitOf(3, 20, 200)]); // one write: S, C(2), C(3)
    await m.close();
  });

  it('a hole at the start of the last commit write, with its later frames intact, is a torn tail', async () => {
    const raw = Buffer.from(sim.readRaw(file) as Buffer);
    raw.fill(0, firstWriteEnd, firstWriteEnd + FRAME_HEADER + 16 + 40); // the S frame and the start of C(2)
    sim.writeRaw(file, raw);
    const warnings: string[] = [];
    const index = await load(sim, { ...silentLogger, warn: (m: string) => warnings.push(m) });
    assert.equal(index.persistedSeq(0), 101, 'the synced commit is kept');
    assert.equal(index.persistedSeq(20), 0, 'the unsynced commit write is dropped whole, even its intact frame');
    assert.equal(warnings.length, 1);
    assert.equal((sim.readRaw(file) as Buffer).length, firstWriteEnd, 'cut at the damage');
  });

  it('damage inside a commit that a later sync frame proves synced is corruption', async () => {
    const raw = Buffer.from(sim.readRaw(file) as Buffer);
    raw[firstWriteEnd - 10] = (raw[firstWriteEnd - 10] as number) ^ 4; // inside C(1), before the second write's S claim
    sim.writeRaw(file, raw);
    await assert.rejects(load(sim), (err: unknown) => isVbfsError(err, 'VBFS_CORRUPT') && /fdatasync covered/.test(err.message));
  });
});
