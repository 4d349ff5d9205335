import * as assert from 'node:assert/strict';
import { inspect } from 'node:util';
import type { Backend } from '../src/backend/backend';
import { isVbfsError, type VbfsErrorCode } from '../src/errors';

/**
 * The one conformance suite every Backend passes (memory, file, later S3). Each
 * implementation runs it in one line:
 *   backendSuite('MemoryBackend', async () => new MemoryBackend());
 * makeBackend is called once per test and must return an empty backend.
 */
export function backendSuite(name: string, makeBackend: () => Promise<Backend>): void {
  describe(`Backend conformance: ${name}`, () => {
    let be: Backend;
    beforeEach(async () => {
      be = await makeBackend();
    });
    afterEach(async () => {
      await be.close();
    });

    it('gets back what was put, whole', async () => {
      const data = pattern(10_000, 1);
      await be.put('v1/chunks/0001', data);
      assert.deepEqual(await be.get('v1/chunks/0001'), data);
    });

    it('stores an empty object', async () => {
      await be.put('empty', new Uint8Array(0));
      assert.equal((await be.get('empty')).length, 0);
      assert.deepEqual(await be.list(''), ['empty']);
    });

    it('serves ranged reads, including ranges that run past the end', async () => {
      const data = pattern(5000, 2);
      await be.put('a/b', data);
      assert.deepEqual(await be.get('a/b', 0, 10), data.subarray(0, 10));
      assert.deepEqual(await be.get('a/b', 4096, 100), data.subarray(4096, 4196));
      assert.deepEqual(await be.get('a/b', 4990, 100), data.subarray(4990), 'past the end: the bytes that exist');
      assert.equal((await be.get('a/b', 5000, 10)).length, 0, 'at the end: nothing');
      assert.equal((await be.get('a/b', 9000, 10)).length, 0, 'beyond the end: nothing');
      assert.deepEqual(await be.get('a/b', 1234), data.subarray(1234), 'offset without length: to the end');
      assert.equal((await be.get('a/b', 10, 0)).length, 0);
    });

    it('refuses negative or fractional ranges', async () => {
      await be.put('k', pattern(10, 3));
      await rejectsWith(() => be.get('k', -1, 4), 'VBFS_INVALID_ARGUMENT');
      await rejectsWith(() => be.get('k', 0, -4), 'VBFS_INVALID_ARGUMENT');
      await rejectsWith(() => be.get('k', 1.5, 4), 'VBFS_INVALID_ARGUMENT');
    });

    it('overwrites an existing key with the new object', async () => {
      await be.put('x/y', pattern(8000, 4));
      const second = pattern(100, 5);
      await be.put('x/y', second);
      assert.deepEqual(await be.get('x/y'), second);
      assert.deepEqual(await be.list('x/'), ['x/y']);
    });

    it('delete removes the object and is idempotent', async () => {
      await be.put('d/1', pattern(10, 6));
      await be.put('d/2', pattern(10, 7));
      await be.delete('d/1');
      await rejectsWith(() => be.get('d/1'), 'VBFS_NOT_FOUND');
      await be.delete('d/1');
      await be.delete('never/existed/at/all');
      assert.deepEqual(await be.list(''), ['d/2']);
      assert.deepEqual(await be.get('d/2'), pattern(10, 7));
    });

    it('get of a missing key is VBFS_NOT_FOUND, also with a range', async () => {
      await rejectsWith(() => be.get('nope'), 'VBFS_NOT_FOUND');
      await rejectsWith(() => be.get('no/such/dir', 0, 10), 'VBFS_NOT_FOUND');
    });

    it('lists by prefix, sorted, across levels', async () => {
      const keys = ['v2/chunks/000b', 'v1/chunks/0002', 'v1/chunks/0001', 'v1/map', 'v10/chunks/0001', 'top', 'v1/chunks/0001x'];
      for (const k of keys) await be.put(k, pattern(3, k.length));
      assert.deepEqual(await be.list(''), [...keys].sort());
      assert.deepEqual(await be.list('v1/'), ['v1/chunks/0001', 'v1/chunks/0001x', 'v1/chunks/0002', 'v1/map']);
      assert.deepEqual(await be.list('v1'), ['v1/chunks/0001', 'v1/chunks/0001x', 'v1/chunks/0002', 'v1/map', 'v10/chunks/0001']);
      assert.deepEqual(await be.list('v1/chunks/0001'), ['v1/chunks/0001', 'v1/chunks/0001x']);
      assert.deepEqual(await be.list('v1/ch'), ['v1/chunks/0001', 'v1/chunks/0001x', 'v1/chunks/0002']);
      assert.deepEqual(await be.list('zzz'), []);
    });

    it('sorts list output by key, not by discovery order', async () => {
      // '-' sorts before '/', so "a-b" comes between "a" subtree keys and "a/..." in
      // plain string order; a depth-first walk would get this wrong.
      for (const k of ['a/z', 'a-b', 'a/a', 'a.c']) await be.put(k, pattern(1, 1));
      assert.deepEqual(await be.list(''), ['a-b', 'a.c', 'a/a', 'a/z']);
    });

    it('validates keys on every operation', async () => {
      for (const bad of ['', '/abs', 'a//b', 'a/', './a', 'a/../b', '..', 'a/./b']) {
        await rejectsWith(() => be.put(bad, pattern(1, 1)), 'VBFS_INVALID_ARGUMENT', `put '${bad}'`);
        await rejectsWith(() => be.get(bad), 'VBFS_INVALID_ARGUMENT', `get '${bad}'`);
        await rejectsWith(() => be.delete(bad), 'VBFS_INVALID_ARGUMENT', `delete '${bad}'`);
      }
      assert.deepEqual(await be.list(''), [], 'a refused put stores nothing');
    });

    it('copies data in: changing the caller buffer after put does not change the object', async () => {
      const data = pattern(64, 8);
      const keep = Buffer.from(data);
      await be.put('c', data);
      data.fill(0xff);
      assert.deepEqual(await be.get('c'), keep);
    });

    it('copies data out: changing a returned buffer does not change the object', async () => {
      const data = pattern(64, 9);
      await be.put('c', data);
      const got = await be.get('c');
      got.fill(0xee);
      const ranged = await be.get('c', 8, 8);
      ranged.fill(0xdd);
      assert.deepEqual(await be.get('c'), data);
    });

    it('accepts a Uint8Array that is a view into a larger buffer', async () => {
      const big = pattern(100, 10);
      const view = new Uint8Array(big.buffer, big.byteOffset + 10, 20);
      await be.put('view', view);
      assert.deepEqual(await be.get('view'), big.subarray(10, 30));
    });

    it('keeps concurrent puts to different keys apart', async () => {
      const puts = [];
      for (let i = 0; i < 20; i++) puts.push(be.put(`p/${String(i).padStart(2, '0')}`, pattern(1000 + i, i)));
      await Promise.all(puts);
      const keys = await be.list('p/');
      assert.equal(keys.length, 20);
      for (let i = 0; i < 20; i++) assert.deepEqual(await be.get(`p/${String(i).padStart(2, '0')}`), pattern(1000 + i, i));
    });

    it('a get racing with an overwrite never leaves later gets seeing the old object', async () => {
      // Objects may be cached or kept open by an implementation: an overwrite must
      // still win for every get that starts after put() resolved.
      for (let i = 0; i < 60; i++) {
        const key = `race/${i % 4}`;
        await be.put(key, pattern(256, i));
        const racing: Promise<Buffer>[] = [be.get(key), be.get(key, 8, 16)];
        let done = false;
        const put = be.put(key, pattern(256, i + 1000)).finally(() => {
          done = true;
        });
        // Start gets all along the put, so one of them overlaps its rename.
        while (!done) {
          racing.push(be.get(key));
          await new Promise((r) => setImmediate(r));
        }
        await put;
        await Promise.all(racing);
        assert.deepEqual(await be.get(key), pattern(256, i + 1000), `iteration ${i}: a get after the overwrite returned the old object`);
      }
    });

    it('refuses operations after close with VBFS_CLOSED', async () => {
      await be.put('k', pattern(1, 1));
      await be.close();
      await rejectsWith(() => be.get('k'), 'VBFS_CLOSED');
      await rejectsWith(() => be.put('k', pattern(1, 1)), 'VBFS_CLOSED');
      await rejectsWith(() => be.list(''), 'VBFS_CLOSED');
    });
  });
}

/** Deterministic, position- and seed-dependent bytes (never all zeros). */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export async function rejectsWith(fn: () => Promise<unknown>, code: VbfsErrorCode, what = ''): Promise<unknown> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `${what}: expected ${code}, but it resolved`);
  assert.ok(isVbfsError(caught, code), `${what}: expected ${code}, got ${String((caught as { code?: string }).code)}: ${inspect(caught)}`);
  return caught;
}
