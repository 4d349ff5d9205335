/**
 * A `create` in its own process for test/store-tmp.test.ts: it stops just before
 * renaming its temp directory into place, says so, and goes on when told.
 */
import { Store } from '../../src/store/store';

const dir = process.argv[2]!;
const send = (m: unknown): void => {
  process.send?.(m);
};

(async () => {
  const store = await Store.open(dir, {
    failpoint: async (name) => {
      if (name !== 'create:beforeRename') return;
      send({ type: 'paused' });
      await new Promise<void>((resolve) => process.once('message', () => resolve()));
    },
  });
  try {
    await store.createVolume('v', { size: 1 << 20 });
    send({ type: 'result', ok: true });
  } catch (err) {
    send({ type: 'result', ok: false, message: (err as Error).message });
  } finally {
    await store.close();
    process.disconnect();
  }
})().catch((err: unknown) => {
  // Say what failed and exit, rather than leave it to the unhandled-rejection crash.
  process.stderr.write(`create-child: ${(err as Error)?.stack ?? 'non-Error rejection'}\n`);
  process.exit(1);
});
