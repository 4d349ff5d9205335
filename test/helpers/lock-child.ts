/**
 * One racing opener for test/lock.test.ts, in its own process: waits for the
 * parent's "go" (a wall-clock instant shared by all children, so they start
 * together), tries to take the lock, reports, and holds what it got until told
 * to release it.
 */
import { NodeFileIO } from '../../src/io/node-file-io';
import { VolumeLock } from '../../src/store/lock';

interface Go {
  type: 'go';
  path: string;
  at: number;
}

let lock: VolumeLock | null = null;
const send = (m: unknown): void => {
  process.send?.(m);
};

process.on('message', (m: Go | { type: 'release' }) => {
  if (m.type === 'go') {
    const start = (): void => {
      VolumeLock.acquire(new NodeFileIO(), m.path, 'volume race').then(
        (l) => {
          lock = l;
          send({ type: 'result', won: true });
        },
        (err: { code?: string; message?: string }) => send({ type: 'result', won: false, code: err.code, message: err.message }),
      );
    };
    // Sleep most of the way, then spin: a timer alone is off by a millisecond or more.
    setTimeout(
      () => {
        while (Date.now() < m.at);
        start();
      },
      Math.max(0, m.at - Date.now() - 5),
    );
  } else if (m.type === 'release') {
    const done = (): void => {
      send({ type: 'released' });
      process.disconnect();
    };
    if (lock) lock.release().then(done, done);
    else done();
  }
});
send({ type: 'ready' });
