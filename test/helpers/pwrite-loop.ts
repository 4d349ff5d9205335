/**
 * A writer process for real-mount tests: pwrite loops with O_DIRECT (each write is
 * one FUSE request, no page cache in between) and an fdatasync every 16 writes,
 * over [offset, offset + span), until `seconds` have passed or a call fails.
 * Prints "started" after its first write, then one JSON line:
 * {"writes": n, "error": null | "EIO" | ...}. Exit status 0 either way: the test
 * judges the answer, and a hung request shows as a process that does not exit.
 *
 *   node pwrite-loop.js <file> <offset> <span> <seconds>
 */
import * as fs from 'node:fs';

function main(): void {
  const [file, offArg, spanArg, secArg] = process.argv.slice(2);
  const offset = Number(offArg);
  const span = Number(spanArg);
  const deadline = Date.now() + Number(secArg) * 1000;
  const bs = 128 * 1024;
  const buf = Buffer.alloc(bs);
  let writes = 0;
  let error: string | null = null;
  const fd = fs.openSync(file as string, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  try {
    while (Date.now() < deadline) {
      buf.fill(writes & 255);
      fs.writeSync(fd, buf, 0, bs, offset + ((writes * bs) % span));
      writes++;
      if (writes === 1) process.stdout.write('started\n');
      if (writes % 16 === 0) fs.fdatasyncSync(fd);
    }
  } catch (err) {
    error = (err as NodeJS.ErrnoException).code ?? String(err);
  }
  try {
    fs.closeSync(fd);
  } catch {
    // the mount may be gone: the answer we report is the one above
  }
  process.stdout.write(JSON.stringify({ writes, error }) + '\n');
}

main();
