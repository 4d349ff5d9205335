/**
 * The WAL's fsync path alone, on the real file system: append one 4 KiB record,
 * sync(), repeat (what `fio --fsync=1` asks of vbfs, without FUSE in between), with
 * the WAL segment appended (the file grows at every sync: ext4 must commit its
 * journal for the new size) and preallocated (zero-filled to full size first: the
 * fdatasync only writes the data). Also a plain file with fio's random-overwrite
 * pattern, for the ratio, and bare files prepared three ways (appendRun). Rounds alternate the variants; medians are printed.
 *
 *   node dist/bench/wal-fsync.js [--dir /path/on/ext4] [--seconds 3] [--rounds 3]
 *
 * Run it under the shared bench lock (flock /work/wt/bench.lock ...).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NodeFileIO } from '../src/io/node-file-io';
import { WalWriter } from '../src/wal/wal-writer';
import { silentLogger } from '../src/types';

const BS = 4096;
const ID = '00112233445566778899aabbccddeeff';

async function walRun(dir: string, preallocate: boolean, seconds: number): Promise<number> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const w = new WalWriter({
    dir,
    fileIO: new NodeFileIO(),
    volumeId: ID,
    blockSize: BS,
    segmentBytes: 64 << 20,
    bufferBytes: 1 << 20,
    nextSegment: 1,
    existingSegments: [],
    logger: silentLogger,
    preallocate,
  });
  const data = Buffer.alloc(BS, 7);
  // The first record opens the segment (and, preallocated, waits for its zero fill): untimed.
  w.append(1, 0, 0, BS, data, 0, BS);
  await w.sync();
  let seq = 1;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  while (performance.now() < end) {
    seq++;
    w.append(seq, seq % 1000, 0, BS, data, 0, BS);
    await w.sync();
  }
  const ops = (seq - 1) / ((performance.now() - t0) / 1000);
  await w.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return ops;
}

/** A plain file: pwrite 4 KiB at a random offset of a 256 MiB file, fdatasync (fio's randwrite --fsync=1 pattern). */
function fileRun(dir: string, seconds: number): number {
  fs.mkdirSync(dir, { recursive: true });
  const p = path.join(dir, 'plain.bin');
  const fd = fs.openSync(p, 'w+');
  const data = Buffer.alloc(BS, 7);
  let n = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  while (performance.now() < end) {
    fs.writeSync(fd, data, 0, BS, Math.floor(Math.random() * 65536) * BS);
    fs.fdatasyncSync(fd);
    n++;
  }
  const ops = n / ((performance.now() - t0) / 1000);
  fs.closeSync(fd);
  fs.rmSync(p, { force: true });
  return ops;
}

/**
 * The same append + fdatasync on a bare file, prepared three ways: grown by each
 * append, fallocate'd (`fallocate -l`: ext4 unwritten extents) and zero-filled. This is
 * what decided zero-filling over fallocate for the WAL's spare segments.
 */
function appendRun(dir: string, prep: 'append' | 'fallocate' | 'zeros', seconds: number): number {
  fs.mkdirSync(dir, { recursive: true });
  const p = path.join(dir, `append-${prep}.bin`);
  const size = 64 << 20;
  const fd = fs.openSync(p, 'w+');
  if (prep === 'fallocate') execFileSync('fallocate', ['-l', String(size), p]);
  if (prep === 'zeros') {
    const z = Buffer.alloc(1 << 20);
    for (let off = 0; off < size; off += z.length) fs.writeSync(fd, z, 0, z.length, off);
  }
  fs.fdatasyncSync(fd);
  const data = Buffer.alloc(BS + 40, 7);
  let off = 64;
  let n = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  while (performance.now() < end && off + data.length < size) {
    fs.writeSync(fd, data, 0, data.length, off);
    fs.fdatasyncSync(fd);
    off += data.length;
    n++;
  }
  const ops = n / ((performance.now() - t0) / 1000);
  fs.closeSync(fd);
  fs.rmSync(p, { force: true });
  return ops;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .option('dir', { type: 'string', default: path.resolve(__dirname, '..', '..', 'bench', 'results', 'tmp', 'wal-fsync') })
    .option('seconds', { type: 'number', default: 3 })
    .option('rounds', { type: 'number', default: 3 })
    .strict()
    .parse();
  const r: Record<string, number[]> = { plain: [], appended: [], preallocated: [], 'file append': [], 'file falloc': [], 'file zeroed': [] };
  for (let i = 0; i < argv.rounds; i++) {
    (r['file append'] as number[]).push(appendRun(argv.dir, 'append', argv.seconds));
    (r['file falloc'] as number[]).push(appendRun(argv.dir, 'fallocate', argv.seconds));
    (r['file zeroed'] as number[]).push(appendRun(argv.dir, 'zeros', argv.seconds));
    (r.plain as number[]).push(fileRun(argv.dir, argv.seconds));
    (r.appended as number[]).push(await walRun(path.join(argv.dir, 'wal'), false, argv.seconds));
    (r.preallocated as number[]).push(await walRun(path.join(argv.dir, 'wal'), true, argv.seconds));
  }
  const plain = median(r.plain as number[]);
  process.stdout.write(`4 KiB append + sync, ${argv.rounds} rounds of ${argv.seconds} s, medians (ops/s):\n`);
  for (const [k, v] of Object.entries(r)) {
    process.stdout.write(
      `  ${k.padEnd(13)} ${median(v).toFixed(0).padStart(7)}  (${v.map((x) => x.toFixed(0)).join(', ')})  ${(median(v) / plain).toFixed(2)}x plain\n`,
    );
  }
  fs.rmSync(argv.dir, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});
