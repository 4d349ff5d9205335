import * as assert from 'node:assert/strict';
import { CrashError, PAGE_BYTES, SimFS, isCrash } from './helpers/sim-fs';
import { Rng } from './helpers/rng';
import { isVbfsError } from '../src/errors';

const b = (s: string): Buffer => Buffer.from(s);

async function writeFile(fs: SimFS, p: string, data: string, opts: { sync?: boolean; dirSync?: boolean } = {}): Promise<void> {
  const fh = await fs.open(p, 'w+');
  await fh.write(b(data), 0);
  if (opts.sync) await fh.datasync();
  await fh.close();
  if (opts.dirSync) await fs.fsyncDir(p.slice(0, p.lastIndexOf('/')) || '/');
}

async function expectCrash(p: Promise<unknown>): Promise<void> {
  await assert.rejects(p, (err) => err instanceof CrashError);
}

describe('SimFS', () => {
  describe('as a file system (no crash)', () => {
    it('reads back writes, sparse gaps as zeros, short reads at EOF', async () => {
      const fs = new SimFS();
      await fs.mkdir('/a/b');
      const fh = await fs.open('/a/b/f', 'wx');
      await fh.write(b('hello'), 0);
      await fh.writev([b('xy'), b('z')], 8);
      assert.equal(await fh.size(), 11);
      const buf = Buffer.alloc(16);
      assert.equal(await fh.read(buf, 0), 11);
      assert.deepEqual(buf.subarray(0, 11), Buffer.concat([b('hello'), Buffer.alloc(3), b('xyz')]));
      await fh.truncate(2);
      assert.deepEqual(await fs.readFile('/a/b/f'), b('he'));
      await fh.close();
      await assert.rejects(fh.read(buf, 0), (e) => isVbfsError(e, 'VBFS_IO'));
    });

    it('follows NodeFileIO error conventions (ENOENT/EEXIST as VbfsError with errno)', async () => {
      const fs = new SimFS();
      await assert.rejects(fs.open('/missing', 'r'), (e) => isVbfsError(e, 'VBFS_IO') && e.details.errno === 'ENOENT');
      await assert.rejects(fs.open('/nodir/f', 'w+'), (e) => isVbfsError(e) && e.details.errno === 'ENOENT');
      await writeFile(fs, '/f', 'x');
      await assert.rejects(fs.open('/f', 'wx'), (e) => isVbfsError(e) && e.details.errno === 'EEXIST');
      assert.equal(await fs.stat('/nope'), null);
      assert.deepEqual(await fs.readdir('/nope'), []);
      await fs.unlink('/nope');
      await fs.rmdir('/nope');
      assert.deepEqual(await fs.stat('/f'), { size: 1, isDirectory: false });
      assert.deepEqual(await fs.stat('/'), { size: 0, isDirectory: true });
      const ro = await fs.open('/f', 'r');
      await assert.rejects(ro.write(b('y'), 0), (e) => isVbfsError(e) && e.details.errno === 'EBADF');
    });

    it('renames, unlinks, lists sorted, removes trees', async () => {
      const fs = new SimFS();
      await fs.mkdir('/d/sub');
      await writeFile(fs, '/d/b', '2');
      await writeFile(fs, '/d/a', '1');
      await writeFile(fs, '/d/sub/x', '3');
      assert.deepEqual(await fs.readdir('/d'), ['a', 'b', 'sub']);
      await fs.rename('/d/a', '/d/b');
      assert.deepEqual(await fs.readFile('/d/b'), b('1'));
      assert.deepEqual(await fs.readdir('/d'), ['b', 'sub']);
      await fs.unlink('/d/b');
      assert.deepEqual(fs.files(), ['/d/sub/x']);
      await fs.rmdir('/d');
      assert.deepEqual(fs.files(), []);
    });

    it('keeps an unlinked file readable through an open handle', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/f', 'data');
      const fh = await fs.open('/f', 'r');
      await fs.unlink('/f');
      const buf = Buffer.alloc(4);
      assert.equal(await fh.read(buf, 0), 4);
      assert.deepEqual(buf, b('data'));
    });
  });

  describe('durability', () => {
    const rng = new Rng(1);

    it('loses unsynced data and keeps synced data', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/synced', 'AAAA', { sync: true });
      await writeFile(fs, '/unsynced', 'BBBB');
      await fs.fsyncDir('/');
      const after = fs.afterCrash(rng, 'none');
      assert.deepEqual(after.readRaw('/synced'), b('AAAA'));
      assert.deepEqual(after.readRaw('/unsynced'), b(''), 'the entry is durable, the content is not');
    });

    it('loses a synced file whose directory entry was never fsynced', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/f', 'AAAA', { sync: true });
      assert.deepEqual(fs.unsynced().dirs, ['/']);
      const after = fs.afterCrash(rng, 'all');
      assert.equal(after.readRaw('/f'), undefined);
      assert.deepEqual(after.files(), []);
    });

    it('makes a rename durable only with fsyncDir of the target directory', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/obj', 'old', { sync: true, dirSync: true });
      await writeFile(fs, '/obj.tmp', 'new', { sync: true });
      await fs.rename('/obj.tmp', '/obj');
      const before = fs.clone().afterCrash(rng, 'all');
      assert.deepEqual(before.readRaw('/obj'), b('old'), 'rename not durable yet');
      await fs.fsyncDir('/');
      const after = fs.afterCrash(rng, 'none');
      assert.deepEqual(after.readRaw('/obj'), b('new'));
      assert.deepEqual(after.files(), ['/obj']);
    });

    it('brings back an unlinked file when the unlink was not made durable', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/f', 'keep', { sync: true, dirSync: true });
      await fs.unlink('/f');
      assert.deepEqual(fs.afterCrash(rng, 'none').readRaw('/f'), b('keep'));
    });

    it('loses a whole directory (and what is inside) if its own entry is not durable', async () => {
      const fs = new SimFS();
      await fs.mkdir('/a/b');
      await fs.fsyncDir('/a'); // b is durable in a, but a is not durable in /
      await writeFile(fs, '/a/b/f', 'x', { sync: true, dirSync: true });
      assert.deepEqual(fs.clone().afterCrash(rng, 'all').files(), []);
      const fs2 = new SimFS();
      await fs2.mkdir('/a/b');
      await fs2.fsyncDir('/');
      await fs2.fsyncDir('/a');
      await writeFile(fs2, '/a/b/f', 'x', { sync: true, dirSync: true });
      assert.deepEqual(fs2.afterCrash(rng, 'none').files(), ['/a/b/f']);
    });

    it('truncates are volatile until synced', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/f', '0123456789', { sync: true, dirSync: true });
      const fh = await fs.open('/f', 'r+');
      await fh.truncate(3);
      assert.deepEqual(fs.clone().afterCrash(rng, 'none').readRaw('/f'), b('0123456789'));
    });

    it('reopen() keeps volatile state, and a later crash can still lose it', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/f', 'volatile', { dirSync: true });
      const again = fs.reopen();
      assert.deepEqual(again.readRaw('/f'), b('volatile'));
      assert.deepEqual(again.afterCrash(rng, 'none').readRaw('/f'), b(''));
      await expectCrash(fs.stat('/f')); // the old one is frozen
    });

    it('tears only the unsynced tail: a prefix of the first unsynced write, never a hole before later data', async () => {
      const seen = new Set<string>();
      for (let seed = 0; seed < 300; seed++) {
        const fs = new SimFS({ yieldEachOp: false });
        const fh = await fs.open('/log', 'w+');
        await fs.fsyncDir('/');
        await fh.write(b('SYNCED|'), 0);
        await fh.datasync();
        await fh.write(b('first-unsynced|'), 7);
        await fh.write(b('second|'), 22);
        const got = fs.afterCrash(new Rng(seed)).readRaw('/log');
        assert.ok(got !== undefined);
        const full = 'SYNCED|first-unsynced|second|';
        const s = got.toString('latin1');
        assert.ok(s.startsWith('SYNCED|'), `synced part lost: ${JSON.stringify(s)}`);
        // Either a prefix of the full log, or a prefix followed by zeros only (zero-filled extension).
        const realEnd = [...s].findIndex((c, i) => c !== full[i]);
        if (realEnd !== -1) assert.match(s.slice(realEnd), /^\0+$/, `hole or garbage in ${JSON.stringify(s)}`);
        const kind = realEnd === -1 ? (s.length === 7 ? 'nothing' : s.length <= 22 ? 'torn-first' : 'torn-second') : 'zeros';
        seen.add(kind);
      }
      assert.deepEqual([...seen].sort(), ['nothing', 'torn-first', 'torn-second', 'zeros']);
    });

    describe("'reorder' (pages reach the disk in any order, torn or not at all)", () => {
      const P = PAGE_BYTES;
      /** A file of `pages` synced pages of 'S', then unsynced writes of 'A' (pages 1..3, extending it) and 'B' (pages 4..5). */
      const setup = async (): Promise<SimFS> => {
        const fs = new SimFS({ yieldEachOp: false });
        const fh = await fs.open('/log', 'w+');
        await fs.fsyncDir('/');
        await fh.write(Buffer.alloc(P + 100, 'S'), 0);
        await fh.datasync();
        await fh.write(Buffer.alloc(3 * P - 100, 'A'), P + 100);
        await fh.write(Buffer.alloc(2 * P, 'B'), 4 * P);
        return fs;
      };

      it('leaves holes followed by later data, torn pages, and every size between durable and volatile', async () => {
        const seen = new Set<string>();
        for (let seed = 0; seed < 300; seed++) {
          const got = (await setup()).afterCrash(new Rng(seed), 'reorder').readRaw('/log');
          assert.ok(got !== undefined);
          assert.ok(got.length >= P + 100 && got.length <= 6 * P, `size ${got.length} outside [durable, volatile]`);
          assert.ok(got.subarray(0, P + 100).equals(Buffer.alloc(P + 100, 'S')), `seed ${seed}: synced bytes changed`);
          // Page by page (from the end of the synced bytes): new data, a hole (zeros), or a torn page (a prefix of new data, then zeros).
          const pages: string[] = [];
          for (let a = P + 100; a < got.length; a = (Math.floor(a / P) + 1) * P) {
            const piece = got.subarray(a, Math.min(got.length, (Math.floor(a / P) + 1) * P)).toString('latin1');
            const m = /^([AB]*)(\0*)$/.exec(piece);
            assert.ok(m !== null, `seed ${seed}: page at ${a} holds ${JSON.stringify(piece.slice(0, 40))}`);
            pages.push(m[2] === '' ? 'data' : m[1] === '' ? 'hole' : 'torn');
          }
          const firstHole = pages.indexOf('hole');
          if (firstHole !== -1 && pages.slice(firstHole + 1).includes('data')) seen.add('hole before data');
          if (pages.includes('torn')) seen.add('torn page');
          if (got.length === P + 100) seen.add('durable size');
          else if (got.length === 6 * P) seen.add('volatile size');
          else seen.add('size in between');
          if (got.length === 6 * P && !pages.includes('data')) seen.add('size without data');
        }
        assert.deepEqual([...seen].sort(), ['durable size', 'hole before data', 'size in between', 'size without data', 'torn page', 'volatile size']);
      });

      it('keeps stale old bytes where an overwrite of synced data did not reach the disk', async () => {
        const seen = new Set<string>();
        for (let seed = 0; seed < 100; seed++) {
          const fs = new SimFS({ yieldEachOp: false });
          const fh = await fs.open('/f', 'w+');
          await fs.fsyncDir('/');
          await fh.write(Buffer.alloc(3 * P, 'o'), 0);
          await fh.datasync();
          await fh.write(Buffer.alloc(3 * P, 'n'), 0);
          const got = fs.afterCrash(new Rng(seed), 'reorder').readRaw('/f');
          assert.equal(got?.length, 3 * P);
          for (let p = 0; p < 3; p++) {
            const s = got.subarray(p * P, (p + 1) * P).toString('latin1');
            assert.match(s, /^n*o*$/, `seed ${seed} page ${p}: not a prefix of new bytes over old ones`);
            seen.add(s[0] === 'o' ? 'old' : s.endsWith('o') ? 'torn' : 'new');
          }
        }
        assert.deepEqual([...seen].sort(), ['new', 'old', 'torn']);
      });

      it('never changes synced bytes and only shows bytes once written at that offset, or zeros (random ops)', async () => {
        for (let seed = 0; seed < 150; seed++) {
          const rng = new Rng(seed);
          const fs = new SimFS({ yieldEachOp: false });
          const fh = await fs.open('/f', 'w+');
          await fs.fsyncDir('/');
          // Bit (x, v) set: offset x has held byte value v (0 is always allowed: holes, extensions, truncates).
          const ever = new Uint8Array(8 * P * 32);
          const record = (off: number, data: Buffer): void => {
            for (let i = 0; i < data.length; i++) {
              const v = data[i] as number;
              const at = (off + i) * 32 + (v >> 3);
              ever[at] = (ever[at] as number) | (1 << (v & 7));
            }
          };
          const wasWritten = (x: number, v: number): boolean => v === 0 || ((ever[x * 32 + (v >> 3)] as number) & (1 << (v & 7))) !== 0;
          let durable = Buffer.alloc(0);
          let current = Buffer.alloc(0);
          // Offsets an unsynced op touched: only those may differ from the durable content.
          let touched = new Uint8Array(8 * P);
          for (let k = rng.range(1, 12); k > 0; k--) {
            const what = rng.weighted<string>([
              ['write', 6],
              ['sync', 2],
              ['truncate', 1],
            ]);
            if (what === 'write') {
              const off = rng.int(5 * P);
              const data = rng.bytes(rng.range(1, 2 * P));
              record(off, data);
              touched.fill(1, off, off + data.length);
              await fh.write(data, off);
              const next = Buffer.alloc(Math.max(current.length, off + data.length));
              current.copy(next);
              data.copy(next, off);
              current = next;
            } else if (what === 'sync') {
              await fh.datasync();
              durable = Buffer.from(current);
              touched = new Uint8Array(8 * P);
            } else {
              const len = rng.int(current.length + P);
              await fh.truncate(len);
              touched.fill(1, len);
              const next = Buffer.alloc(len);
              current.copy(next, 0, 0, Math.min(len, current.length));
              current = next;
            }
          }
          const got = fs.afterCrash(rng.fork(), 'reorder').readRaw('/f');
          assert.ok(got !== undefined);
          const lo = Math.min(durable.length, current.length);
          assert.ok(got.length >= lo && got.length <= Math.max(durable.length, current.length), `seed ${seed}: size ${got.length}`);
          for (let x = 0; x < Math.min(lo, got.length); x++) {
            if (touched[x] === 0) assert.equal(got[x], durable[x], `seed ${seed}: synced byte ${x} changed`);
          }
          for (let x = 0; x < got.length; x++) {
            if (!wasWritten(x, got[x] as number)) assert.fail(`seed ${seed}: byte ${x} = ${got[x]} was never written there`);
          }
        }
      });
    });

    it("'all' keeps every unsynced write, 'none' keeps none", async () => {
      const fs = new SimFS();
      const fh = await fs.open('/f', 'w+');
      await fs.fsyncDir('/');
      await fh.write(b('abc'), 0);
      await fh.write(b('def'), 3);
      const again = fs.clone();
      assert.deepEqual(fs.afterCrash(rng, 'all').readRaw('/f'), b('abcdef'));
      assert.deepEqual(again.afterCrash(rng, 'none').readRaw('/f'), b(''));
    });
  });

  describe('crash plans', () => {
    it('crashAt(n) fails the n-th mutating op and everything after it; the fs is frozen', async () => {
      const fs = new SimFS();
      const fh = await fs.open('/f', 'w+');
      await fs.fsyncDir('/');
      const m = fs.mutatingOps;
      fs.crashAt(m + 3);
      await fh.write(b('one'), 0); // m+1
      await fh.datasync(); // m+2
      await expectCrash(fh.write(b('two'), 3)); // m+3
      assert.ok(fs.crashed);
      await expectCrash(fh.datasync());
      await expectCrash(fs.readFile('/f'));
      await expectCrash(fs.stat('/'));
      assert.match(fs.crashInfo ?? '', /write \/f/);
      for (let seed = 0; seed < 50; seed++) {
        const s = fs.afterCrash(new Rng(seed)).readRaw('/f')?.toString('latin1') ?? '';
        assert.ok(['one', 'onet', 'onetw', 'onetwo', 'one\0', 'one\0\0', 'one\0\0\0'].includes(s), JSON.stringify(s));
      }
    });

    it('a sync in flight at the crash may or may not have completed', async () => {
      const outcomes = new Set<string>();
      for (let seed = 0; seed < 40; seed++) {
        const fs = new SimFS({ yieldEachOp: false });
        const fh = await fs.open('/f', 'w+');
        await fs.fsyncDir('/');
        await fh.write(b('data'), 0);
        fs.crashWhen((op) => op.kind === 'datasync');
        await expectCrash(fh.datasync());
        outcomes.add(fs.afterCrash(new Rng(seed), 'none').readRaw('/f')?.toString() ?? '?');
      }
      assert.deepEqual([...outcomes].sort(), ['', 'data']);
    });

    it('an op already in flight when another crashes does not take effect', async () => {
      const fs = new SimFS();
      const fh = await fs.open('/f', 'w+');
      await fs.fsyncDir('/');
      fs.crashWhen((op) => op.kind === 'rename');
      const w = fh.write(b('late'), 0);
      await expectCrash(fs.rename('/f', '/g'));
      await expectCrash(w);
      assert.deepEqual(fs.afterCrash(new Rng(1), 'all').readRaw('/f'), b(''));
    });

    it('crashAtFailpoint crashes on the nth hit and counts hits', async () => {
      const fs = new SimFS();
      fs.crashAtFailpoint('flush:afterChunkWrite', 2);
      fs.hit('flush:afterChunkWrite');
      fs.hit('checkpoint:beforeRename');
      assert.throws(() => fs.hit('flush:afterChunkWrite'), CrashError);
      assert.ok(fs.crashed);
      assert.throws(() => fs.hit('checkpoint:beforeRename'), CrashError);
      assert.equal(fs.failpointHits.get('flush:afterChunkWrite'), 2);
      await expectCrash(fs.mkdir('/x'));
    });

    it('isCrash sees through wrapping errors', () => {
      const inner = new CrashError('x');
      assert.ok(isCrash(new Error('wrapped', { cause: new Error('again', { cause: inner }) })));
      assert.ok(!isCrash(new Error('other')));
    });
  });

  describe('counting', () => {
    it('counts ops per kind and path prefix', async () => {
      const fs = new SimFS();
      await fs.mkdir('/vol/wal');
      const wal = await fs.open('/vol/wal/000001.wal', 'w+');
      const other = await fs.open('/vol/map.log', 'w+');
      for (let i = 0; i < 5; i++) await wal.write(b('x'), i);
      await wal.writev([b('a'), b('b')], 5);
      await other.write(b('y'), 0);
      await wal.datasync();
      assert.equal(fs.count('write', '/vol/wal/'), 5);
      assert.equal(fs.count(['write', 'writev'], '/vol/wal/'), 6);
      assert.equal(fs.count('write'), 6);
      assert.equal(fs.count('datasync', '/vol/wal/'), 1);
      assert.equal(fs.count('open'), 2);
      assert.equal(fs.count(undefined, '/vol/map'), 2);
      fs.resetCounts();
      assert.equal(fs.count(), 0);
    });
  });

  describe('corruption helpers', () => {
    it('flipBit changes exactly one bit, durably', async () => {
      const fs = new SimFS();
      await writeFile(fs, '/f', 'AAAA', { sync: true, dirSync: true });
      fs.flipBit('/f', 2, 1);
      assert.deepEqual(fs.readRaw('/f'), b('AACA'));
      assert.deepEqual(fs.afterCrash(new Rng(1), 'none').readRaw('/f'), b('AACA'));
    });
  });
});
