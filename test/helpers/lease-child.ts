/**
 * A lease holder in its own process, for the two-process fencing test in
 * test/lease.test.ts: the parent can SIGSTOP it past its TTL, take the lease over,
 * SIGCONT it and then ask it to write. It reports every outcome (and its lease's
 * loss) as a message; it never decides what the test expects.
 *
 * Messages in: acquire, begin (write the epoch record), write (a fenced create: lease check, then If-None-Match),
 * check (assertLive now), late-write (a create WITHOUT a new check: what a writer
 * that passed its check and then stalled before its PUT does), exit.
 */
import { S3Backend, type S3BackendOptions } from '../../src/backend/s3-backend';
import { acquireLease, beginEpoch, createFenced, type Lease } from '../../src/backend/lease';

type In =
  | { type: 'acquire'; backend: S3BackendOptions; volumeKey: string; ttlMs: number }
  | { type: 'write' | 'late-write'; key: string; data: string }
  | { type: 'check' }
  | { type: 'begin' }
  | { type: 'exit' };

let backend: S3Backend | null = null;
let lease: Lease | null = null;
const send = (m: unknown): void => {
  process.send?.(m);
};
const codeOf = (err: unknown): string => String((err as { code?: string }).code ?? err);

process.on('message', (m: In) => {
  void (async () => {
    switch (m.type) {
      case 'acquire':
        backend = new S3Backend(m.backend);
        try {
          lease = await acquireLease(backend, m.volumeKey, { ttlMs: m.ttlMs });
          lease.onLost((err) => send({ type: 'lost', code: err.code, reason: err.details['reason'] }));
          send({ type: 'acquired', epoch: lease.epoch });
        } catch (err) {
          send({ type: 'error', code: codeOf(err) });
        }
        return;
      case 'write':
        try {
          const created = await createFenced(backend!, lease!, m.key, Buffer.from(m.data, 'base64'));
          send({ type: 'wrote', key: m.key, created });
        } catch (err) {
          send({ type: 'write-failed', key: m.key, code: codeOf(err) });
        }
        return;
      case 'begin':
        try {
          const { record } = await beginEpoch(backend!, lease!);
          send({ type: 'begun', firstSeq: record.firstSeq, adopted: record.adopted });
        } catch (err) {
          send({ type: 'begin-failed', code: codeOf(err) });
        }
        return;
      case 'check':
        try {
          lease!.assertLive();
          send({ type: 'checked' });
        } catch (err) {
          send({ type: 'check-failed', code: codeOf(err) });
        }
        return;
      case 'late-write': {
        const created = await backend!.createIfAbsent(m.key, Buffer.from(m.data, 'base64'));
        let code: string | null = null;
        if (!created) await lease!.verify().catch((err: unknown) => (code = codeOf(err)));
        send({ type: 'late-wrote', key: m.key, created, code });
        return;
      }
      case 'exit':
        await backend?.close();
        process.disconnect();
        return;
    }
  })();
});
send({ type: 'ready' });
