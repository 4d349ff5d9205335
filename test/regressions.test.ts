import * as path from 'node:path';
import { runInWorker } from './helpers/in-worker';

/** Engine bugs found by the randomized tests, pinned as small deterministic cases (see helpers/regressions.ts). */
const BODIES = path.join(__dirname, 'helpers', 'regressions.js');

describe('regressions', function () {
  this.timeout(20_000);

  it('a read-modify-write during a finishing background flush does not spin the flusher (model VBFS_SEED=2)', () =>
    runInWorker(BODIES, 'rmwDuringFinishingFlush', [], 10_000));

  it('a WAL I/O error during flush rejects flush() and leaves no unhandled promise rejection', () =>
    runInWorker(BODIES, 'walErrorDuringFlushIsHandled', [], 10_000));
});
