/** `vbfs compact <volume> [--full] [--json]`: reclaim the space of dead records now (store/compactor.ts). */
import { VbfsError, isVbfsError } from '../errors';
import type { CompactionProgress } from '../store/compactor';
import { EXIT_OK } from './exit-codes';
import type { CliContext } from './mount-command';
import { keyFromArgs } from './key-options';
import { progressBar } from './progress';
import { formatSize } from './size';
import { openStore, readMountRecord } from './store';

export interface CompactArgs {
  volume: string;
  full: boolean;
  json: boolean;
  /** Where a progress bar goes (a terminal's stderr), or null for none. */
  progress: ((text: string) => void) | null;
  keyFile?: string;
  keyEnv?: string;
}

export async function runCompact(ctx: CliContext, args: CompactArgs): Promise<number> {
  const key = await keyFromArgs(args);
  const store = await openStore(ctx.storeDir, ctx.logger, { backend: { url: ctx.backend, pathStyle: ctx.s3PathStyle } });
  const bar = args.progress
    ? progressBar(args.progress, (p: CompactionProgress) => ({
        label: 'compact',
        fraction: p.reclaimable > 0 ? p.reclaimed / p.reclaimable : 1,
        text: `${formatSize(p.reclaimed)} of ${formatSize(p.reclaimable)} dead, ${p.chunksCompacted} chunks`,
      }))
    : null;
  try {
    let vol;
    try {
      // No background compaction in this process: the run below is the one.
      vol = await store.openVolume(args.volume, { compactIntervalMs: 0, ...(key ? { key } : {}) });
    } catch (err) {
      const m = isVbfsError(err, 'VBFS_LOCKED') ? await readMountRecord(ctx.storeDir) : null;
      if (m && (err as VbfsError).details['pid'] === m.pid) {
        throw new VbfsError(
          'VBFS_LOCKED',
          `volume ${args.volume} is open by the mount at ${m.mountpoint} (pid ${m.pid}), which compacts it in the background; ` +
            `'vbfs stats ${m.mountpoint}' shows its progress (or unmount it first)`,
          (err as VbfsError).details,
        );
      }
      throw err;
    }
    try {
      const before = await vol.space();
      const r = await vol.compact({ full: args.full, onProgress: bar?.update });
      bar?.clear();
      const amp = (b: number, l: number): string => (l > 0 ? (b / l).toFixed(2) : '-');
      if (args.json) {
        ctx.out(JSON.stringify({ volume: args.volume, before: { liveBytes: before.liveBytes, storedBytes: before.storedBytes }, ...r }, null, 2));
      } else {
        ctx.out(
          `compacted volume ${args.volume}: ${r.chunksCompacted} chunks emptied in ${r.rounds} rounds, ${formatSize(r.bytesReclaimed)} reclaimed; ` +
            `stored ${formatSize(before.storedBytes)} -> ${formatSize(r.storedBytes)} for ${formatSize(r.liveBytes)} live ` +
            `(space amplification ${amp(before.storedBytes, before.liveBytes)} -> ${amp(r.storedBytes, r.liveBytes)})`,
        );
      }
    } finally {
      await vol.close();
    }
  } finally {
    bar?.clear();
    key?.bytes.fill(0);
    await store.close();
  }
  return EXIT_OK;
}
