/**
 * The writer of test/s3-kill.test.ts, in its own process so that the test can SIGKILL
 * it in the middle of a flush to the bucket. It opens the store (the local WAL in
 * `dir`, metadata, maps and chunks in the bucket), writes the seeded sequence of
 * stamped writes of its round (s3-kill-model.ts) and fsyncs every few writes (batched
 * durability); after each fsync it sends the parent the writes that fsync covered. It
 * tells the parent when a flush reaches the bucket (the failpoint before a chunk PUT),
 * so that the kill lands during one. It never decides what the test expects.
 *
 * argv[2]: JSON { dir, backend: S3BackendOptions, seed, round, writes, closeAtEnd, durability? }.
 */
import { S3Backend, type S3BackendOptions } from '../../src/backend/s3-backend';
import { Store } from '../../src/store/store';
import { KILL_LEASE_TTL_MS, killTunables, stampedWrite, writeOf } from './s3-kill-model';

interface Args {
  dir: string;
  backend: S3BackendOptions;
  seed: number;
  round: number;
  writes: number;
  closeAtEnd: boolean;
  /** Default batched; `remote`: each fsync acknowledged only once the bucket has it. */
  durability?: 'batched' | 'remote';
}

const send = (m: unknown): Promise<void> =>
  new Promise((resolve) => {
    if (!process.send) return resolve();
    process.send(m, () => resolve());
  });

async function main(): Promise<void> {
  /** Chunk PUTs between their before- and after-write failpoints (a failed PUT never decrements: an upper bound). */
  let putsInFlight = 0;
  const a = JSON.parse(process.argv[2] as string) as Args;
  const backend = new S3Backend(a.backend);
  const store = await Store.open(a.dir, {
    backend,
    metadata: 'backend',
    // Short: after each SIGKILL the test waits for this lease to expire before it reopens.
    // A writer that closes cleanly releases it: longer, so that a loaded machine's late
    // renewals do not fence the proxy round (10 s, as the test's own reopens).
    leaseTtlMs: a.closeAtEnd ? 10_000 : KILL_LEASE_TTL_MS,
    ...(process.env['VBFS_S3_KILL_LOG']
      ? {
          logger: {
            error: (m: string, meta?: unknown) => console.error(`[child r${a.round}] ERROR ${m} ${meta ? JSON.stringify(meta) : ''}`),
            warn: (m: string, meta?: unknown) => console.error(`[child r${a.round}] WARN ${m} ${meta ? JSON.stringify(meta) : ''}`),
            info: (m: string, meta?: unknown) => console.error(`[child r${a.round}] info ${m} ${meta ? JSON.stringify(meta) : ''}`),
            debug: () => undefined,
          },
        }
      : {}),
    failpoint: (name) => {
      if (name === 'flush:beforeChunkWrite') {
        putsInFlight++;
        process.send?.({ type: 'flushing' });
      } else if (name === 'flush:afterChunkWrite') putsInFlight--;
      // A wave's map delta committed while the next wave's chunk PUTs were in flight
      // (overlapping waves): the parent counts these, so a run shows that a kill can
      // land between two waves' PUTs and commits.
      else if (name === 'flush:afterMapCommit' && putsInFlight > 0) process.send?.({ type: 'overlap' });
    },
  });
  const vol = await store.openVolume('v', { ...killTunables(a.round), durability: a.durability ?? 'batched' });
  await send({ type: 'open' });
  let pending: number[] = [];
  for (let i = 0; i < a.writes; i++) {
    const w = writeOf(a.seed, a.round, i);
    await vol.write(w.block * 4096, stampedWrite(a.seed, a.round, i));
    pending.push(i);
    if (pending.length >= w.fsyncEvery || i === a.writes - 1) {
      await vol.fsync();
      // Acknowledged: every write before this fsync returned.
      await send({ type: 'ack', writes: pending });
      pending = [];
    }
  }
  if (a.closeAtEnd) {
    await vol.close();
    await store.close();
    await send({ type: 'closed', stats: backend.stats });
  } else {
    await send({ type: 'done' });
  }
  process.disconnect();
}

main().catch(async (err: unknown) => {
  await send({ type: 'error', code: String((err as { code?: string }).code ?? ''), message: String((err as Error)?.stack ?? err) });
  process.exit(1);
});
