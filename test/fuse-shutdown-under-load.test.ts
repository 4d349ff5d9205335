/**
 * Every FUSE request is answered exactly once, also while the mount goes away:
 * 4 writer processes (O_DIRECT pwrite loops with fdatasync) are mid-write when the
 * mount is unmounted (`vbfs unmount`, then `--force`) or its process gets SIGTERM.
 * Every writer must get an answer (success or an error) and exit in bounded time
 * (an unanswered request leaves it in D state), the mount process must exit 0 and
 * leave no mount behind, and its log must show no reply that threw (a reply that
 * throws is a request the kernel never hears back about). Needs root and /dev/fuse.
 */
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupUnder, isMounted, requireFuse, spawnForegroundMount, tmpDir, vbfs, waitFor, type ForegroundMount } from './helpers/fuse-env';

const MiB = 1024 * 1024;
const WRITER = path.join(__dirname, 'helpers', 'pwrite-loop.js');
/** What a writer may legitimately hear once the mount is going away. */
const ANSWERS = new Set([null, 'EIO', 'ENOTCONN', 'ECONNABORTED']);
/** A writer must be answered and exit within this after the unmount or signal. */
const BOUND_MS = 30_000;

interface Writer {
  child: ChildProcess;
  out: () => string;
  exited: Promise<void>;
}

function startWriter(file: string, offset: number, seconds: number): Writer {
  let out = '';
  const child = spawn(process.execPath, [WRITER, file, String(offset), String(64 * MiB), String(seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  return { child, out: () => out, exited };
}

/** Resolves with `value` after `ms`, without keeping the process alive. */
function delayed<T>(ms: number, value: T): Promise<T> {
  return new Promise((r) => setTimeout(() => r(value), ms).unref());
}

async function procState(pid: number | undefined): Promise<string> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '?';
}

/** The writer's report, or a failure naming its state if it did not exit in time. */
async function answerOf(w: Writer, ms: number): Promise<{ writes: number; error: string | null }> {
  const inTime = await Promise.race([w.exited.then(() => true), delayed(ms, false)]);
  if (!inTime) {
    assert.fail(`writer ${w.child.pid} did not exit within ${ms} ms (state ${await procState(w.child.pid)}: a request it sent was never answered)`);
  }
  const last = w.out().trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as { writes: number; error: string | null };
  } catch {
    return assert.fail(`writer ${w.child.pid} printed no report: ${w.out()}`);
  }
}

describe('FUSE: unmount and SIGTERM while 4 writers are mid-write (bin/vbfs)', function () {
  this.timeout(180_000);

  let root = '';
  let store = '';
  let mnt = '';
  let conn = ''; // /sys/fs/fuse/connections/<minor> of the current mount
  const writers: Writer[] = [];
  const mounts: ForegroundMount[] = [];

  before(async function () {
    requireFuse(this);
    root = await tmpDir('fuse-load');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    await fsp.mkdir(mnt);
    // strict: every write waits for a WAL sync, so writes are in flight for long.
    const r = await vbfs(['create', 'v', '--size', '512M', '--durability', 'strict'], store);
    assert.equal(r.code, 0, r.stderr);
  });

  afterEach(async () => {
    // A writer stuck on an unanswered request can only be freed by aborting the connection.
    if (writers.some((w) => w.child.exitCode === null && w.child.signalCode === null) && conn) {
      await fsp.writeFile(path.join(conn, 'abort'), '1').catch(() => undefined);
    }
    for (const w of writers.splice(0)) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
    for (const m of mounts.splice(0)) if (m.child.exitCode === null && m.child.signalCode === null) m.child.kill('SIGKILL');
  });

  after(async function () {
    if (!root) return;
    await cleanupUnder(root, [mnt], [], store);
    if (!(await isMounted(mnt))) await fsp.rm(root, { recursive: true, force: true });
  });

  async function mountForeground(): Promise<ForegroundMount> {
    const fg = spawnForegroundMount(store, mnt);
    mounts.push(fg);
    await waitFor(
      'foreground mount',
      async () =>
        (await isMounted(mnt)) &&
        (await fsp.stat(path.join(mnt, 'v')).then(
          () => true,
          () => false,
        )),
    );
    const info = await fsp.readFile('/proc/self/mountinfo', 'utf8');
    const dev =
      info
        .split('\n')
        .find((l) => l.split(' ')[4] === mnt)
        ?.split(' ')[2] ?? '';
    conn = `/sys/fs/fuse/connections/${dev.split(':')[1] ?? ''}`;
    return fg;
  }

  async function startWriters(seconds: number): Promise<Writer[]> {
    const ws = [0, 1, 2, 3].map((i) => startWriter(path.join(mnt, 'v'), i * 128 * MiB, seconds));
    writers.push(...ws);
    await waitFor('all 4 writers to be writing', async () => ws.every((w) => w.out().includes('started')), 30_000);
    await new Promise((r) => setTimeout(r, 500)); // well into their loops
    return ws;
  }

  async function expectAnswered(ws: Writer[], boundMs: number): Promise<void> {
    for (const w of ws) {
      const a = await answerOf(w, boundMs);
      assert.ok(a.writes > 0, `writer ${w.child.pid} wrote nothing`);
      assert.ok(ANSWERS.has(a.error), `writer ${w.child.pid}: unexpected answer ${a.error}`);
    }
  }

  async function expectCleanExit(fg: ForegroundMount): Promise<void> {
    const code = await Promise.race([fg.exited, delayed(BOUND_MS, 'timeout')]);
    assert.equal(code, 0, `mount process exit: ${String(code)}\n${fg.output()}`);
    assert.equal(await isMounted(mnt), false, 'no mount left');
    assert.doesNotMatch(fg.output(), /threw|sent twice/, 'every reply reached the kernel');
  }

  it('vbfs unmount: refused as busy while the writers hold the file; --force: every writer is answered, the process exits 0', async () => {
    const fg = await mountForeground();
    const ws = await startWriters(60);

    const busy = await vbfs(['unmount', mnt], store);
    assert.equal(busy.code, 1, busy.stdout + busy.stderr);
    assert.match(busy.stderr, /busy/);
    assert.ok(await isMounted(mnt), 'a refused unmount stays mounted');
    assert.ok(
      ws.every((w) => w.child.exitCode === null),
      'the writers keep writing',
    );

    const forced = await vbfs(['unmount', mnt, '--force'], store);
    assert.equal(forced.code, 0, forced.stdout + forced.stderr);
    await expectAnswered(ws, BOUND_MS);
    await expectCleanExit(fg);
  });

  it('SIGUSR2 (forced stop, like unmount --force): every writer is answered, the process exits 0', async () => {
    const fg = await mountForeground();
    const ws = await startWriters(60);
    fg.child.kill('SIGUSR2');
    await expectAnswered(ws, BOUND_MS);
    await expectCleanExit(fg);
  });

  it('SIGTERM: every writer is answered, and the process exits 0 once the files are closed', async () => {
    const fg = await mountForeground();
    const seconds = 6;
    const ws = await startWriters(seconds);
    fg.child.kill('SIGTERM');
    await expectAnswered(ws, seconds * 1000 + BOUND_MS);
    // A stop refused while the files were open (busy) leaves the mount serving:
    // once they are closed, a second SIGTERM must end it.
    if (fg.child.exitCode === null) {
      await waitFor('the busy refusal to settle', async () => /still mounted and serving|unmounted/.test(fg.output()), BOUND_MS).catch(() => undefined);
      if (fg.child.exitCode === null) fg.child.kill('SIGTERM');
    }
    await expectCleanExit(fg);
  });
});
