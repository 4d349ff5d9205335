import { spawn } from 'node:child_process';

/**
 * Run `fn` exported by the compiled module `modulePath` in a child process, with a
 * deadline. A test that spins synchronously (an engine busy loop, a microtask loop)
 * blocks every timer of its own thread, mocha's timeout included, and would hang CI
 * instead of failing. In a child process it is killed and reported, with the last
 * progress message it sent (e.g. the crash point it was running). (A child process
 * rather than a worker thread: terminating a busy worker can abort all of Node 20.)
 *
 * The function receives its args plus a `progress(msg)` callback as last argument;
 * what it resolves with (JSON) is what runInWorker resolves with.
 */
export function runInWorker<T = unknown>(modulePath: string, fn: string, args: readonly unknown[], timeoutMs: number): Promise<T> {
  const code = `
    const job = JSON.parse(process.env.VBFS_JOB);
    const send = (m) => new Promise((r) => process.send(m, r));
    const progress = (msg) => { process.send({ progress: String(msg) }); };
    // Unhandled rejections would kill the child. Those caused by a simulated crash
    // (background work of a store whose file system just died) are tolerated here;
    // test/regressions.test.ts checks the engine handles real I/O errors. Any other
    // one fails the job.
    const unhandled = [];
    let value;
    const crashCaused = (e) => { for (let d = 0; e && d < 10; d++, e = e.cause) if (e.name === 'CrashError') return true; return false; };
    process.on('unhandledRejection', (e) => { if (!crashCaused(e)) unhandled.push(e); });
    Promise.resolve()
      .then(() => require(job.mod)[job.fn](...job.args, progress))
      .then((v) => { value = v; return new Promise((r) => setTimeout(r, 20)); })
      .then(() => { if (unhandled.length > 0) throw new Error('unhandled promise rejection(s): ' + unhandled.map((e) => e && e.stack ? e.stack : String(e)).join(' /// ')); })
      .then(
        () => send({ done: true, value }),
        (e) => send({ error: e && e.stack ? String(e.stack) : String(e), message: e && e.message ? String(e.message) : String(e) }),
      )
      .then(() => process.exit(0));
  `;
  return new Promise<T>((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', code], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, VBFS_JOB: JSON.stringify({ mod: modulePath, fn, args }) },
    });
    let last = '(no progress reported)';
    let settled = false;
    const finish = (err?: Error, value?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null) child.kill('SIGKILL');
      if (err) reject(err);
      else resolve(value as T);
    };
    const timer = setTimeout(() => {
      finish(
        new Error(
          `${fn}(${args.map((a) => JSON.stringify(a)).join(', ')}) did not finish in ${timeoutMs} ms: an engine hang or a synchronous spin. Last progress: ${last}`,
        ),
      );
    }, timeoutMs);
    child.on('message', (m: { progress?: string; done?: boolean; value?: unknown; error?: string; message?: string }) => {
      if (m.progress !== undefined) last = m.progress;
      else if (m.done) finish(undefined, m.value);
      else {
        const e = new Error(m.message ?? 'child failed');
        e.stack = m.error;
        finish(e);
      }
    });
    child.on('error', (e) => finish(e));
    child.on('exit', (code, signal) => finish(new Error(`${fn}: child exited (${code ?? signal}) without an answer; last progress: ${last}`)));
  });
}
