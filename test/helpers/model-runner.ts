import * as assert from 'node:assert/strict';
import { Store } from '../../src/store/store';
import type { Volume } from '../../src/store/volume';
import type { VolumeTunables } from '../../src/store/types';
import type { Durability } from '../../src/types';
import type { FileIO } from '../../src/io/file-io';
import type { KeyMaterial } from '../../src/crypto/key-source';
import { NodeFileIO } from '../../src/io/node-file-io';
import { crc32c } from '../../src/format/crc32c';
import { SimFS } from './sim-fs';
import { Rng, envInt } from './rng';
import { VolumeModel, firstDiff, randomData, randomRange } from './volume-model';

/**
 * The model-based test body (test/model.test.ts runs it in a worker thread, so an
 * engine that spins fails the test instead of hanging CI): thousands of seeded random
 * operations on a volume (unaligned and overlapping writes, bursts of concurrent
 * writes, reads, fsync, flush, close and reopen with another durability mode and
 * other tunables) compared with a plain Buffer after every read. Tiny chunk, segment,
 * buffer and flush sizes make every background path (flush, segment rotation,
 * checkpoint, backpressure, cache eviction) run many times.
 */
const HANG_MS = envInt('VBFS_HANG_MS', 20_000);
const MODES: readonly Durability[] = ['strict', 'batched', 'relaxed', 'async'];

/** Record size in WAL and chunks: 32-byte header + block; files open with a 64-byte header. */
const rec = (blockSize: number): number => 32 + blockSize;

function tinyTunables(rng: Rng, blockSize: number): Partial<VolumeTunables> {
  return {
    chunkBytes: 64 + rec(blockSize) * rng.pick([1, 2, 3, 4, 8, 16]),
    walSegmentBytes: 64 + rec(blockSize) * rng.pick([1, 2, 5, 16, 64]),
    writeBufferBytes: blockSize * rng.pick([8, 16, 64]),
    flushBytes: blockSize * rng.pick([1, 4, 8]),
    flushIntervalMs: rng.pick([5, 20, 1000]),
    batchBlocks: rng.pick([1, 4, 32]),
    batchMs: rng.pick([1, 5]),
    cacheBytes: blockSize * rng.pick([0, 2, 16]),
    checkpointBytes: rng.pick([256, 2048, 1 << 20]),
    readaheadBytes: rng.pick([0, blockSize * 4]),
    // Background compaction: off, racing the ops, or now and then.
    compactIntervalMs: rng.pick([0, 5, 200]),
  };
}

/**
 * Run one seed; `diskDir` set: on the real file system in that (empty) directory,
 * else on SimFS. `encrypted`: the volume is created with a key (every open passes it).
 */
export async function runModel(
  seed: number,
  ops: number,
  diskDir: string | null,
  encrypted: boolean,
  progress: (msg: string) => void = () => {},
): Promise<void> {
  await modelRun(seed, ops, diskDir ?? '/store', progress, diskDir !== null ? () => new NodeFileIO() : undefined, undefined, encrypted);
}

/**
 * Run one seed on SimFS and return its op trace (every op with its arguments, and a
 * digest of the final content). With `otherEngineState` the runner is told the engine
 * holds pending bytes after every flush, as a slower or differently tuned engine
 * would: the ops a seed runs must not depend on what the engine reports, or a seed
 * replayed on another machine (other timing) runs other ops than the one that failed.
 */
export async function modelTrace(seed: number, ops: number, otherEngineState: boolean, progress: (msg: string) => void = () => {}): Promise<string[]> {
  return modelRun(seed, ops, '/store', progress, undefined, otherEngineState ? () => 4096 : undefined);
}

async function modelRun(
  seed: number,
  ops: number,
  dir: string,
  progress: (msg: string) => void,
  realIO?: () => FileIO,
  pendingBytesOverride?: () => number,
  encrypted = false,
): Promise<string[]> {
  const key: KeyMaterial | undefined = encrypted ? { source: '$MODEL_KEY', bytes: Buffer.from('a7'.repeat(32)) } : undefined;
  const keyOpt = key ? { key } : {};
  const rng = new Rng(seed);
  const blockSize = rng.pick([512, 1024, 4096]);
  const blocks = rng.pick([64, 128, 300]);
  const size = blockSize * blocks;
  const compression = rng.pick(['none', 'lz4'] as const);
  let sim = new SimFS();
  const io = (): FileIO => (realIO ? realIO() : sim);
  const model = new VolumeModel(size, blockSize);
  const log: string[] = [];
  if (process.env.VBFS_MODEL_TRACE)
    log.push = (...items: string[]): number => {
      for (const it of items) process.stderr.write(it + '\n');
      return Array.prototype.push.apply(log, items);
    };
  const fail = (msg: string): never => {
    assert.fail(`${msg}\n  replay: VBFS_SEED=${seed} VBFS_MODEL_OPS=${ops}\n  last ops:\n    ${log.slice(-25).join('\n    ')}`);
  };

  let store = await Store.open(dir, { fileIO: io() });
  await store.createVolume('m', { size, blockSize, durability: rng.pick(MODES), compression, ...(key ? { encryption: { key } } : {}) });
  let tun = tinyTunables(rng, blockSize);
  let vol: Volume = await store.openVolume('m', { ...tun, ...keyOpt });
  let finished = false;
  log.push(
    `open durability=${vol.durability} blockSize=${blockSize} blocks=${blocks} compression=${compression}${key ? ' encrypted' : ''} ${JSON.stringify(tun)}`,
  );

  // A hang is a failure too: name the op instead of timing out silently.
  const guard = <T>(p: Promise<T>, what: string): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    const dog = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not complete in ${HANG_MS} ms`)), HANG_MS);
    });
    return Promise.race([p, dog])
      .finally(() => clearTimeout(timer))
      .catch((err: unknown) => fail(`${what}: ${String(err)}`));
  };

  try {
    await body();
    // The op trace: what ran, not what the engine reported (notes are indented).
    return [...log.filter((l) => !l.startsWith(' ')), `final content crc32c ${crc32c(model.data).toString(16)}`];
  } finally {
    // After a failure, stop the volume's timers so mocha can exit (and other seeds run).
    if (!finished)
      await Promise.race([
        vol
          .close()
          .catch(() => {})
          .then(() => store.close())
          .catch(() => {}),
        new Promise((r) => setTimeout(r, 2000)),
      ]);
  }

  async function body(): Promise<void> {
    const checkRead = async (offset: number, length: number, what: string): Promise<void> => {
      const got = await guard(vol.read(offset, length), `${what}: read(${offset}, ${length})`);
      const want = model.data.subarray(offset, offset + length);
      if (got.length !== length) fail(`${what}: read(${offset}, ${length}) returned ${got.length} bytes`);
      const d = firstDiff(got, want);
      if (d !== -1) {
        fail(
          `${what}: read(${offset}, ${length}) differs at volume byte ${offset + d} (block ${Math.floor((offset + d) / blockSize)}): ` +
            `got ${got.subarray(d, d + 8).toString('hex')} want ${want.subarray(d, d + 8).toString('hex')}`,
        );
      }
    };

    for (let i = 0; i < ops; i++) {
      if (i % 25 === 0) progress(`seed ${seed}, op #${i}; recent ops: ${log.slice(-5).join(' / ')}`);
      const op = rng.weighted<string>([
        ['write', 40],
        ['burst', 8],
        ['race', 5],
        ['read', 30],
        ['fsync', 6],
        ['flush', 4],
        ['reopen', 2],
        ['readAll', 1],
        ['trim', 5],
        ['zero', 3],
        ['compact', 2],
      ]);
      // Where chunk boundaries fall in volume space (uncompressed, blocks written in order).
      const chunkBytes = blockSize * Math.max(1, Math.floor(((tun.chunkBytes ?? 4 << 20) - 64) / rec(blockSize)));
      switch (op) {
        case 'write': {
          const { offset, length } = randomRange(rng, size, blockSize, chunkBytes);
          const data = randomData(rng, length);
          log.push(`#${i} write(${offset}, ${length})`);
          model.write(offset, data);
          await guard(vol.write(offset, data), `op #${i} write`);
          // The volume must have taken its own copy once write() resolves: scribble on ours.
          data.fill(0xa5);
          break;
        }
        case 'trim': {
          // Whole blocks: zero records (Empty, no slot); partial blocks: zeroed by RMW.
          const { offset, length } = randomRange(rng, size, blockSize, chunkBytes);
          log.push(`#${i} trim(${offset}, ${length})`);
          model.write(offset, Buffer.alloc(length));
          await guard(vol.trim(offset, length), `op #${i} trim`);
          break;
        }
        case 'zero': {
          // A write of zeros: its full blocks are detected and logged as zero records.
          const { offset, length } = randomRange(rng, size, blockSize, chunkBytes);
          log.push(`#${i} zero(${offset}, ${length})`);
          model.write(offset, Buffer.alloc(length));
          await guard(vol.write(offset, Buffer.alloc(length)), `op #${i} zero`);
          break;
        }
        case 'burst': {
          // Concurrent writes, often overlapping: they must land in arrival order.
          const n = rng.range(2, 6);
          const base = randomRange(rng, size, blockSize, chunkBytes);
          const writes: Promise<void>[] = [];
          const desc: string[] = [];
          for (let k = 0; k < n; k++) {
            const r = rng.bool(0.7)
              ? { offset: Math.min(size - 1, base.offset + rng.int(blockSize)), length: 0 }
              : randomRange(rng, size, blockSize, chunkBytes);
            r.length = r.length || Math.min(size - r.offset, rng.range(1, 2 * blockSize));
            const data = randomData(rng, r.length);
            model.write(r.offset, data);
            writes.push(vol.write(r.offset, data));
            desc.push(`(${r.offset}, ${r.length})`);
          }
          log.push(`#${i} burst ${desc.join(' ')}`);
          await guard(Promise.all(writes), `op #${i} burst`);
          break;
        }
        case 'race': {
          // Writes, reads, a flush and an fsync all in flight at once over the same
          // blocks. The racing reads may see old or new data (not checked); what they
          // must not do is leave stale data behind (e.g. in the read cache) for the
          // reads that follow, which are checked.
          const base = randomRange(rng, size, blockSize, chunkBytes);
          const ps: Promise<unknown>[] = [];
          const desc: string[] = [];
          for (let k = rng.range(3, 8); k > 0; k--) {
            const what = rng.weighted<string>([
              ['w', 4],
              ['r', 4],
              ['flush', 1],
              ['fsync', 1],
              ['t', 1],
              ['compact', 1],
            ]);
            const r = rng.bool(0.6) ? { offset: base.offset, length: base.length } : randomRange(rng, size, blockSize, chunkBytes);
            if (what === 'w') {
              const data = randomData(rng, r.length);
              model.write(r.offset, data);
              ps.push(vol.write(r.offset, data));
              desc.push(`w(${r.offset}, ${r.length})`);
            } else if (what === 't') {
              model.write(r.offset, Buffer.alloc(r.length));
              ps.push(vol.trim(r.offset, r.length));
              desc.push(`t(${r.offset}, ${r.length})`);
            } else if (what === 'r') {
              ps.push(vol.read(r.offset, r.length));
              desc.push(`r(${r.offset}, ${r.length})`);
            } else {
              ps.push(what === 'flush' ? vol.flush() : what === 'compact' ? vol.compact() : vol.fsync());
              desc.push(what);
            }
          }
          log.push(`#${i} race ${desc.join(' ')}`);
          await guard(Promise.all(ps), `op #${i} race`);
          await checkRead(base.offset, base.length, `op #${i} after race`);
          break;
        }
        case 'read': {
          const { offset, length } = randomRange(rng, size, blockSize, chunkBytes);
          log.push(`#${i} read(${offset}, ${length})`);
          await checkRead(offset, length, `op #${i}`);
          break;
        }
        case 'readAll':
          log.push(`#${i} readAll`);
          await checkRead(0, size, `op #${i} readAll`);
          break;
        case 'compact': {
          // Rewrites mostly-dead chunks (or, full, every chunk with dead records): no data may change.
          const full = rng.bool();
          log.push(`#${i} compact${full ? ' full' : ''}`);
          await guard(vol.compact({ full }), `op #${i} compact`);
          break;
        }
        case 'fsync':
          log.push(`#${i} fsync`);
          await guard(vol.fsync(), `op #${i} fsync`);
          break;
        case 'flush':
          log.push(`#${i} flush`);
          await guard(vol.flush(), `op #${i} flush`);
          {
            // A note for the failure report, drawn from no RNG: a draw that depends on
            // the engine's state would make the rest of the seed run other ops.
            const pending = pendingBytesOverride?.() ?? vol.stats().pendingBytes;
            if (pending !== 0) log.push(`  pendingBytes after flush: ${pending}`);
          }
          break;
        case 'reopen': {
          const closeStore = rng.bool(0.5);
          await guard(vol.close(), `op #${i} close`);
          if (closeStore) {
            await guard(store.close(), `op #${i} store close`);
            if (!realIO) sim = sim.reopen();
            store = await Store.open(dir, { fileIO: io() });
          }
          tun = tinyTunables(rng, blockSize);
          const durability = rng.pick(MODES);
          vol = await guard(store.openVolume('m', { ...tun, durability, ...keyOpt }), `op #${i} reopen`);
          log.push(`#${i} reopen${closeStore ? ' (new store)' : ''} durability=${durability} ${JSON.stringify(tun)}`);
          if (rng.bool(0.5)) await checkRead(0, size, `after reopen at op #${i}`);
          break;
        }
      }
    }
    await checkRead(0, size, 'final');
    await vol.close();
    await store.close();
    if (!realIO) sim = sim.reopen();
    store = await Store.open(dir, { fileIO: io() });
    vol = await store.openVolume('m', { readOnly: true, ...keyOpt });
    await checkRead(0, size, 'final, after close and reopen read-only');
    await vol.close();
    await store.close();
    finished = true;
  }
}

/**
 * The same idea on a huge sparse volume (16 TiB or 256 TiB): a Map of written
 * blocks is the model. Writes land near block numbers where index code tends to
 * break (2^24, 2^31, 2^32, the last block, paging boundaries) and anywhere at
 * random; flushes, checkpoints and reopens move them through every state.
 */
export async function runSparseModel(seed: number, ops: number, progress: (msg: string) => void = () => {}): Promise<void> {
  const rng = new Rng(seed);
  // Odd seeds: 256 TiB of 512-byte blocks (2^39 blocks); even seeds: 16 TiB of 4 KiB blocks.
  const { size, blockSize } = seed % 2 === 1 ? { size: 256 * 2 ** 40, blockSize: 512 } : { size: 16 * 2 ** 40, blockSize: 4096 };
  const blocks = size / blockSize;
  const model = new Map<number, Buffer>();
  const blockOf = (b: number): Buffer => model.get(b) ?? Buffer.alloc(blockSize);
  // 2^32 - 1 / 2^35 - 1: the last block of a 16 TiB volume (4 KiB / 512-byte blocks); 2^36 - 1: of 256 TiB in 4 KiB blocks.
  const hot = [0, 2 ** 16, 2 ** 24, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 33, 2 ** 35 - 1, 2 ** 36 - 1, blocks - 1].filter((b) => b < blocks);
  const pickOffset = (): number => {
    const base = rng.bool(0.7) ? rng.pick(hot) : rng.int(blocks);
    const b = Math.min(blocks - 1, Math.max(0, base + rng.range(-3, 3)));
    return b * blockSize + (rng.bool(0.5) ? 0 : rng.int(blockSize));
  };
  const sim = new SimFS();
  let fsNow = sim;
  let store = await Store.open('/store', { fileIO: fsNow });
  await store.createVolume('s', { size, blockSize, durability: 'relaxed' });
  const tun: Partial<VolumeTunables> = { chunkBytes: 64 + 8 * (32 + blockSize), flushBytes: 4 * blockSize, checkpointBytes: 4096, cacheBytes: 4 * blockSize };
  let vol = await store.openVolume('s', tun);
  const log: string[] = [];
  const fail = (msg: string): never =>
    assert.fail(`${msg}\n  replay: sparse VBFS_SEED=${seed} (size ${size}, blockSize ${blockSize})\n  last ops:\n    ${log.slice(-15).join('\n    ')}`);
  const check = async (offset: number, length: number, what: string): Promise<void> => {
    const got = await vol.read(offset, length);
    const want = Buffer.alloc(length);
    for (let b = Math.floor(offset / blockSize); b * blockSize < offset + length; b++) {
      const src = blockOf(b);
      const start = b * blockSize;
      const from = Math.max(offset, start);
      const to = Math.min(offset + length, start + blockSize);
      src.copy(want, from - offset, from - start, to - start);
    }
    const d = firstDiff(got, want);
    if (d !== -1) fail(`${what}: read(${offset}, ${length}) differs at byte ${offset + d} (block ${Math.floor((offset + d) / blockSize)})`);
  };
  try {
    for (let i = 0; i < ops; i++) {
      if (i % 25 === 0) progress(`sparse seed ${seed}, op #${i}`);
      const op = rng.weighted<string>([
        ['write', 40],
        ['run', 10],
        ['read', 30],
        ['flush', 8],
        ['reopen', 4],
        ['fsync', 8],
      ]);
      if (op === 'write' || op === 'run') {
        // 'run': a sequential stretch of blocks (the index keeps it as one extent), often across an edge.
        const offset = op === 'run' ? Math.max(0, pickOffset() - rng.int(40) * blockSize) : pickOffset();
        const length = Math.min(size - offset, op === 'run' ? rng.range(8, 48) * blockSize : rng.range(1, 3 * blockSize));
        const data = randomData(rng, length);
        log.push(`#${i} write(${offset}, ${length})`);
        for (let p = offset; p < offset + length;) {
          const b = Math.floor(p / blockSize);
          const blk = Buffer.from(blockOf(b));
          const n = Math.min(blockSize - (p - b * blockSize), offset + length - p);
          data.copy(blk, p - b * blockSize, p - offset, p - offset + n);
          model.set(b, blk);
          p += n;
        }
        await vol.write(offset, data);
      } else if (op === 'read') {
        const offset = pickOffset();
        const length = Math.min(size - offset, rng.range(1, 3 * blockSize));
        log.push(`#${i} read(${offset}, ${length})`);
        await check(offset, length, `op #${i}`);
      } else if (op === 'flush') {
        log.push(`#${i} flush`);
        await vol.flush();
      } else if (op === 'fsync') {
        log.push(`#${i} fsync`);
        await vol.fsync();
      } else {
        log.push(`#${i} reopen`);
        await vol.close();
        await store.close();
        fsNow = fsNow.reopen();
        store = await Store.open('/store', { fileIO: fsNow });
        vol = await store.openVolume('s', tun);
      }
    }
    for (const b of [...model.keys()].sort((x, y) => x - y)) await check(b * blockSize, blockSize, `final block ${b}`);
    await vol.close();
    await store.close();
  } finally {
    await store.close().catch(() => {});
  }
}
