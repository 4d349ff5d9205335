/**
 * The single-writer lock of a volume (src/store/lock.ts) against real processes:
 * openers racing from separate processes, stale locks of dead processes, pid reuse,
 * a lock file that is not complete (never deleted while its writer may be alive).
 */
import * as assert from 'node:assert/strict';
import { fork, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { NodeFileIO } from '../src/io/node-file-io';
import { processStart } from '../src/os/process';
import { currentOwner, readLock, VolumeLock } from '../src/store/lock';
import { tmpDir } from './helpers/fuse-env';

const CHILD = path.join(__dirname, 'helpers', 'lock-child.js');

interface Result {
  won: boolean;
  code?: string;
  message?: string;
}

/** Start `n` opener processes, let them all try to take `lockPath` at one instant, then release. */
async function race(n: number, lockPath: string): Promise<Result[]> {
  const children: ChildProcess[] = [];
  const ready: Array<Promise<void>> = [];
  const results: Array<Promise<Result>> = [];
  const exited: Array<Promise<void>> = [];
  try {
    for (let i = 0; i < n; i++) {
      const c = fork(CHILD, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
      children.push(c);
      exited.push(new Promise((r) => c.on('exit', () => r())));
      ready.push(
        new Promise((r, j) => {
          c.on('message', (m: { type: string }) => m.type === 'ready' && r());
          c.on('exit', (code) => j(new Error(`opener ${i} exited (${code}) before it was ready`)));
        }),
      );
      results.push(new Promise((r) => c.on('message', (m: { type: string } & Result) => m.type === 'result' && r(m))));
    }
    await Promise.all(ready);
    const at = Date.now() + 300;
    for (const c of children) c.send({ type: 'go', path: lockPath, at });
    const out = await Promise.all(results);
    for (const c of children) c.send({ type: 'release' });
    await Promise.all(exited);
    return out;
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}

function lockText(o: Record<string, unknown>): string {
  return JSON.stringify({ host: os.hostname(), token: 'feedfacefeedface', ...o }) + '\n';
}

/** A pid that existed a moment ago and does not any more. */
async function deadPid(): Promise<number> {
  const c = spawn('true');
  await new Promise((r) => c.on('exit', r));
  assert.ok(c.pid);
  return c.pid;
}

describe('VolumeLock: one writer per volume, across processes', function () {
  this.timeout(300_000);
  let dir = '';
  let n = 0;
  const fresh = async (): Promise<string> => {
    const d = path.join(dir, `v${++n}`);
    await fsp.mkdir(d);
    return path.join(d, 'LOCK');
  };

  before(async () => {
    dir = await tmpDir('lock');
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('200 openers in separate processes racing for a free lock: exactly one wins, the others get VBFS_LOCKED', async () => {
    const lock = await fresh();
    const results = await race(200, lock);
    const winners = results.filter((r) => r.won);
    assert.equal(winners.length, 1, `winners: ${winners.length}`);
    const others = results.filter((r) => !r.won);
    assert.deepEqual([...new Set(others.map((r) => r.code))], ['VBFS_LOCKED'], others.map((r) => r.message).join('\n'));
    assert.deepEqual(await fsp.readdir(path.dirname(lock)), [], 'released: no LOCK, no temp file or claim left behind');
  });

  it('50 openers racing for a stale lock of a dead process: exactly one takes it over', async () => {
    const lock = await fresh();
    await fsp.writeFile(lock, lockText({ pid: await deadPid(), boot: currentOwner().boot }));
    const results = await race(50, lock);
    assert.equal(results.filter((r) => r.won).length, 1);
    assert.deepEqual([...new Set(results.filter((r) => !r.won).map((r) => r.code))], ['VBFS_LOCKED']);
    assert.deepEqual(await fsp.readdir(path.dirname(lock)), []);
  });

  describe('who is provably gone', () => {
    let sleeper: ChildProcess;
    before(async () => {
      sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
      await new Promise((r) => sleeper.on('spawn', r));
    });
    after(() => {
      sleeper.kill('SIGKILL');
    });

    const takesOver = async (content: string): Promise<void> => {
      const lock = await fresh();
      await fsp.writeFile(lock, content);
      const io = new NodeFileIO();
      const l = await VolumeLock.acquire(io, lock, 'volume t');
      const now = await readLock(io, lock);
      assert.equal(now?.token, l.token, 'LOCK is now ours');
      assert.equal(now?.pid, process.pid);
      await l.release();
      assert.equal(fs.existsSync(lock), false);
    };
    const refused = async (content: string): Promise<void> => {
      const lock = await fresh();
      await fsp.writeFile(lock, content);
      await assert.rejects(VolumeLock.acquire(new NodeFileIO(), lock, 'volume t'), { code: 'VBFS_LOCKED' });
      assert.equal(await fsp.readFile(lock, 'utf8'), content, 'a held lock is left exactly as it was');
    };

    it('a live process with the recorded start time holds it', async () => {
      const start = processStart(sleeper.pid!);
      assert.ok(start !== null && start > 0);
      await refused(lockText({ pid: sleeper.pid, boot: currentOwner().boot, start }));
    });

    it('a lock of a dead pid is taken over', async () => {
      await takesOver(lockText({ pid: await deadPid(), boot: currentOwner().boot, start: 1 }));
    });

    it('a reused pid (live, but started at another time) is taken over', async () => {
      const start = processStart(sleeper.pid!)!;
      await takesOver(lockText({ pid: sleeper.pid, boot: currentOwner().boot, start: start - 1 }));
    });

    it('a lock from another boot is taken over, even if its pid is alive now', async () => {
      await takesOver(lockText({ pid: sleeper.pid, boot: '00000000-0000-0000-0000-000000000000', start: processStart(sleeper.pid!) }));
    });

    it('a lock of another host is held (cannot be checked from here)', async () => {
      await refused(lockText({ pid: await deadPid(), host: 'some-other-host' }));
    });

    it('an empty LOCK (what an opener of an older version shows between create and write) is not deleted', async () => {
      await refused('');
    });

    it('an empty LOCK older than this boot is taken over', async () => {
      const lock = await fresh();
      await fsp.writeFile(lock, '');
      await fsp.utimes(lock, new Date(0), new Date(0));
      const l = await VolumeLock.acquire(new NodeFileIO(), lock, 'volume t');
      await l.release();
    });

    it('a stale claim of an opener that died mid-takeover does not block the next one', async () => {
      const lock = await fresh();
      const dead = await deadPid();
      await fsp.writeFile(lock, lockText({ pid: dead, boot: currentOwner().boot }));
      await fsp.writeFile(`${lock}.claim-feedfacefeedface`, lockText({ pid: dead, boot: currentOwner().boot, token: '0123456789abcdef' }));
      const l = await VolumeLock.acquire(new NodeFileIO(), lock, 'volume t');
      await l.release();
      assert.deepEqual(await fsp.readdir(path.dirname(lock)), []);
    });
  });

  it("temp and claim files left by openers that died are removed by the next one; a live opener's are kept", async () => {
    const lock = await fresh();
    const dead = await deadPid();
    const boot = currentOwner().boot;
    await fsp.writeFile(`${lock}.tmp-1111111111111111`, lockText({ pid: dead, boot, token: '1111111111111111' }));
    await fsp.writeFile(`${lock}.claim-2222222222222222`, lockText({ pid: dead, boot, token: '3333333333333333' }));
    await fsp.writeFile(`${lock}.tmp-4444444444444444`, lockText({ pid: process.ppid, boot, start: processStart(process.ppid), token: '4444444444444444' }));
    const l = await VolumeLock.acquire(new NodeFileIO(), lock, 'volume t');
    await l.release();
    assert.deepEqual(await fsp.readdir(path.dirname(lock)), ['LOCK.tmp-4444444444444444']);
  });

  it('a full disk while taking the lock fails with VBFS_IO naming the lock and leaves no LOCK behind', async function () {
    if (process.getuid?.() !== 0) return this.skip();
    const mnt = await fsp.mkdtemp(path.join(os.tmpdir(), 'vbfs-lockfull-'));
    const { execFileSync } = await import('node:child_process');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]);
    try {
      await fsp.mkdir(path.join(mnt, 'v'));
      // Fill it: the last write fails with ENOSPC.
      await fsp.writeFile(path.join(mnt, 'fill'), Buffer.alloc(1 << 20)).catch(() => undefined);
      const lock = path.join(mnt, 'v', 'LOCK');
      await assert.rejects(VolumeLock.acquire(new NodeFileIO(), lock, 'volume full'), (err: Error & { code?: string; details?: Record<string, unknown> }) => {
        assert.equal(err.code, 'VBFS_IO');
        assert.equal(err.details?.['errno'], 'ENOSPC');
        assert.match(err.message, /could not take the lock/);
        return true;
      });
      assert.deepEqual(await fsp.readdir(path.join(mnt, 'v')), [], 'no LOCK and no temp file left');
    } finally {
      try {
        execFileSync('umount', [mnt]);
      } catch {
        execFileSync('umount', ['-l', mnt]); // a leaked descriptor (the bug this tests) keeps it busy
      }
      await fsp.rmdir(mnt);
    }
  });
});
