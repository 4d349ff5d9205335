/**
 * Store.open cleans up temp directories of creates, but only those whose creator is
 * provably gone: never the one a `create` in another process is building right now.
 */
import * as assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Store } from '../src/store/store';
import { tmpDir } from './helpers/fuse-env';

const CHILD = path.join(__dirname, 'helpers', 'create-child.js');

async function tmpDirs(store: string): Promise<string[]> {
  return (await fsp.readdir(path.join(store, 'volumes'))).filter((n) => n.startsWith('.tmp-'));
}

/** Start a create in another process and wait until it has built its temp directory. */
async function pausedCreate(store: string): Promise<{ child: ChildProcess; result: Promise<{ ok: boolean; message?: string }> }> {
  const child = fork(CHILD, [store], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  const result = new Promise<{ ok: boolean; message?: string }>((resolve) =>
    child.on('message', (m: { type: string; ok: boolean; message?: string }) => m.type === 'result' && resolve(m)),
  );
  await new Promise<void>((resolve, reject) => {
    child.on('message', (m: { type: string }) => m.type === 'paused' && resolve());
    child.on('exit', (code) => reject(new Error(`create process exited (${code}) before pausing`)));
  });
  return { child, result };
}

describe('Store: temp directories of creates', function () {
  this.timeout(60_000);
  let root = '';
  let n = 0;
  const fresh = async (): Promise<string> => {
    const s = path.join(root, `s${++n}`);
    await (await Store.open(s)).close();
    return s;
  };
  before(async () => {
    root = await tmpDir('storetmp');
  });
  after(async () => {
    await fsp.rm(root, { recursive: true, force: true });
  });

  it("another process's Store.open leaves a running create's temp directory alone; the create completes", async () => {
    const store = await fresh();
    const { child, result } = await pausedCreate(store);
    try {
      assert.equal((await tmpDirs(store)).length, 1);
      const other = await Store.open(store); // e.g. `vbfs list` while `vbfs create` runs
      assert.deepEqual(await other.listVolumes(), []);
      await other.close();
      assert.equal((await tmpDirs(store)).length, 1, 'the temp directory of a live create is kept');
      child.send({ type: 'go' });
      const r = await result;
      assert.equal(r.ok, true, r.message);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    const s = await Store.open(store);
    assert.deepEqual(
      (await s.listVolumes()).map((v) => v.name),
      ['v'],
    );
    await s.close();
    assert.deepEqual(await tmpDirs(store), []);
  });

  it('the temp directory of a create whose process died is removed by the next open', async () => {
    const store = await fresh();
    const { child } = await pausedCreate(store);
    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGKILL');
    await exited;
    assert.equal((await tmpDirs(store)).length, 1);
    await (await Store.open(store)).close();
    assert.deepEqual(await tmpDirs(store), []);
  });

  it('a temp directory named by an older version is removed only if it is older than this boot', async () => {
    const store = await fresh();
    const recent = path.join(store, 'volumes', '.tmp-old-0123abcd');
    const ancient = path.join(store, 'volumes', '.tmp-older-89abcdef');
    await fsp.mkdir(recent);
    await fsp.mkdir(ancient);
    await fsp.utimes(ancient, new Date(0), new Date(0));
    await (await Store.open(store)).close();
    assert.deepEqual(await tmpDirs(store), ['.tmp-old-0123abcd']);
  });
});
