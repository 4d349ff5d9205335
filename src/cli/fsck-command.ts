/** `vbfs fsck <volume> [--repair] [--json]`: the report of store/fsck.ts, for people and scripts. */
import { VbfsError, isVbfsError } from '../errors';
import type { FsckProgress, FsckReport } from '../store/fsck';
import { EXIT_FAILURE, EXIT_OK } from './exit-codes';
import type { CliContext } from './mount-command';
import { keyFromArgs } from './key-options';
import { progressBar } from './progress';
import { formatSize } from './size';
import { openStore, readMountRecord } from './store';

export interface FsckArgs {
  volume: string;
  json: boolean;
  repair: boolean;
  /** Where a progress bar goes (a terminal's stderr), or null for none. */
  progress: ((text: string) => void) | null;
  /** An encrypted volume's key: every record is then authenticated, not only CRC-checked. */
  keyFile?: string;
  keyEnv?: string;
}

/** Exit 0 when no damage was found (warnings allowed), 1 when some was. */
export async function runFsck(ctx: CliContext, args: FsckArgs): Promise<number> {
  const key = await keyFromArgs(args);
  const store = await openStore(ctx.storeDir, ctx.logger, { backend: { url: ctx.backend, pathStyle: ctx.s3PathStyle } });
  const bar = args.progress
    ? progressBar(args.progress, (p: FsckProgress) => ({
        label: p.phase.padEnd(7),
        fraction: p.total > 0 ? p.done / p.total : 1,
        text: `${p.done}/${p.total}`,
        done: p.done === p.total,
      }))
    : null;
  let report: FsckReport;
  try {
    report = await store.fsckVolume(args.volume, { repair: args.repair, onProgress: bar?.update, ...(key ? { key } : {}) });
  } catch (err) {
    // Open for writing: most likely by this store's mount, which the user can name.
    const m = isVbfsError(err, 'VBFS_LOCKED') ? await readMountRecord(ctx.storeDir) : null;
    if (m && (err as VbfsError).details['pid'] === m.pid) {
      throw new VbfsError(
        'VBFS_LOCKED',
        `volume ${args.volume} is open for writing by the mount at ${m.mountpoint} (pid ${m.pid}): run 'vbfs unmount ${m.mountpoint}' first, then fsck`,
        (err as VbfsError).details,
      );
    }
    throw err;
  } finally {
    bar?.clear();
    key?.bytes.fill(0);
    await store.close();
  }
  if (args.json) ctx.out(JSON.stringify(report, null, 2));
  else for (const line of renderReport(report)) ctx.out(line);
  return report.errors > 0 ? EXIT_FAILURE : EXIT_OK;
}

/** One line per problem (severity, object, offset, kind, message), then the figures and a verdict. */
function renderReport(r: FsckReport): string[] {
  const out: string[] = [];
  for (const p of r.problems) {
    out.push(`${p.severity}: ${p.object}${p.offset === null ? '' : ` offset ${p.offset}`}: [${p.kind}]${p.repaired ? ' [repaired]' : ''} ${p.message}`);
  }
  if (r.problemsOmitted > 0) out.push(`... and ${r.problemsOmitted} more problems (use --json for the counts)`);
  const amp = r.spaceAmplification === null ? '-' : r.spaceAmplification.toFixed(2);
  out.push(`volume ${r.volume} (${r.id}): ${formatSize(r.size)}, block size ${r.blockSize}`);
  out.push(
    `  mapped blocks  ${r.mappedBlocks} (${formatSize(r.liveBytes)} live), ${r.walBlocks} more only in the WAL (${r.walRecords} records, ${formatSize(r.walBytes)})`,
  );
  out.push(`  chunks         ${r.chunks} (${r.orphanChunks} orphan, ${formatSize(r.orphanBytes)}), ${r.checkedRecords} records checked`);
  out.push(`  stored         ${formatSize(r.storedBytes)}, space amplification ${amp}`);
  if (r.encrypted) {
    out.push(
      r.authenticated
        ? '  encryption     AES-256-GCM: every record authenticated with the key'
        : '  encryption     AES-256-GCM: CRCs checked only; give --key-file/--key-env to authenticate every record',
    );
  }
  const verdict = r.clean ? 'clean' : r.errors > 0 ? `DAMAGED: ${r.errors} error(s), ${r.warnings} warning(s)` : `no damage, ${r.warnings} warning(s)`;
  const repair =
    !r.repair || r.clean ? '' : r.errors > 0 ? '; changed nothing (it never repairs a damaged volume)' : `; repaired ${r.repaired}: run fsck again to confirm`;
  out.push(`${r.repair ? 'fsck --repair' : 'fsck'}: ${verdict}${repair}`);
  return out;
}
