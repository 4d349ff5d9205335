/**
 * Private by default: a volume holds whole filesystems (home directories, keys,
 * databases), so everything vbfs creates is readable by its owner only. Files are
 * created with mode 0600 and directories with 0700 in the create call itself (no
 * window in which another user could open them), then set to exactly that mode
 * with chmod, so an odd umask (one that drops owner bits) changes nothing either.
 *
 * What already exists is never loosened or tightened behind the user's back: a
 * store made by an older version, or one opened up on purpose, is reported instead
 * (`findExposed`: one warning at open, a warning finding in `vbfs fsck`).
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { FileIO } from './file-io';

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;

/** mkdir -p where every directory it creates is 0700; existing ones are left as they are. */
export async function mkdirPrivate(dir: string): Promise<void> {
  const first = await fsp.mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  if (first === undefined) return;
  for (const d of createdDirs(first, dir)) await fsp.chmod(d, PRIVATE_DIR_MODE);
}

export function mkdirPrivateSync(dir: string): void {
  const first = fs.mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  if (first === undefined) return;
  for (const d of createdDirs(first, dir)) fs.chmodSync(d, PRIVATE_DIR_MODE);
}

/** The directories from `first` (the top one mkdir created) down to `dir`. */
export function createdDirs(first: string, dir: string): string[] {
  const out: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    out.push(d);
    if (d === path.resolve(first) || d === path.dirname(d)) break;
  }
  return out.reverse();
}

/** Write a new file (replacing nothing: the caller renames it into place) with mode 0600. */
export async function writeNewPrivateFile(file: string, data: string | Uint8Array): Promise<void> {
  const fh = await fsp.open(file, 'wx', PRIVATE_FILE_MODE);
  try {
    await fh.chmod(PRIVATE_FILE_MODE);
    await fh.writeFile(data);
  } finally {
    await fh.close();
  }
}

/**
 * Open `file` for appending (a log), creating it 0600 if it does not exist. An
 * existing file keeps its mode: the user may have chosen one (a log read by a
 * monitoring group).
 */
export function openAppendPrivateSync(file: string): number {
  try {
    const fd = fs.openSync(file, 'ax', PRIVATE_FILE_MODE);
    fs.fchmodSync(fd, PRIVATE_FILE_MODE);
    return fd;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return fs.openSync(file, 'a');
  }
}

export interface ExposedEntry {
  path: string;
  /** Permission bits (mode & 0o777). */
  mode: number;
}

export interface ExposureReport {
  /** Entries other users can reach and use, in walk order, at most `limit`. */
  entries: ExposedEntry[];
  /** All such entries found (the walk stops early with `limit` and `stopAtLimit`). */
  count: number;
}

export interface FindExposedOptions {
  /**
   * Relative paths (below `root`) to look at; '' is everything. An entry is walked
   * when it lies on the way to one of them or inside one.
   */
  scopes?: string[];
  /** Entries kept in the report (default 10). */
  limit?: number;
  /** Stop walking once `limit` entries are found (the count is then a lower bound). */
  stopAtLimit?: boolean;
}

const GROUP = 0o070;
const OTHER = 0o007;
const MAX_DEPTH = 16; // a store is 5 levels deep; a symlink loop must not hang the walk

/**
 * The files and directories under `root` (root included) that a user other than
 * the owner can reach and use: an entry counts when it grants its group or others
 * any permission AND every directory from `root` down to it lets that same class
 * through (x). So a 0700 store directory keeps everything in it private, whatever
 * the modes inside, and the walk then costs one stat. Directories above `root` are
 * not considered (the store is its own boundary). A file layer that does not know
 * modes (the simulator) reports nothing.
 */
export async function findExposed(fileIO: FileIO, root: string, opts: FindExposedOptions = {}): Promise<ExposureReport> {
  const scopes = (opts.scopes ?? ['']).map((s) => s.replace(/^\/+|\/+$/g, ''));
  const limit = opts.limit ?? 10;
  const report: ExposureReport = { entries: [], count: 0 };
  const wanted = (rel: string): boolean => scopes.some((s) => s === '' || rel === s || s.startsWith(`${rel}/`) || rel.startsWith(`${s}/`));

  // `reach`: the classes (GROUP and/or OTHER bits) that can get down to this entry.
  const visit = async (abs: string, rel: string, reach: number, depth: number): Promise<boolean> => {
    const st = await fileIO.stat(abs);
    if (!st || st.mode === undefined) return true;
    const perm = st.mode & 0o777;
    if (perm & reach) {
      report.count++;
      if (report.entries.length < limit) report.entries.push({ path: abs, mode: perm });
      if (opts.stopAtLimit && report.count >= limit) return false;
    }
    if (!st.isDirectory || depth >= MAX_DEPTH) return true;
    // A class passes a directory only with its x bit.
    let through = 0;
    if (reach & GROUP && perm & 0o010) through |= GROUP;
    if (reach & OTHER && perm & 0o001) through |= OTHER;
    if (through === 0) return true;
    for (const name of await fileIO.readdir(abs)) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      if (!wanted(childRel)) continue;
      if (!(await visit(`${abs}/${name}`, childRel, through, depth + 1))) return false;
    }
    return true;
  };
  await visit(path.resolve(root), '', GROUP | OTHER, 0);
  return report;
}

/** `0755`: a mode as people write it. */
export function formatMode(mode: number): string {
  return `0${(mode & 0o777).toString(8).padStart(3, '0')}`;
}
