/** `vbfs create | list | info | delete | stats`. */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as readline from 'node:readline/promises';
import { VbfsError, isVbfsError } from '../errors';
import { parseStats } from '../fuse/stats-file';
import { STATS_NAME } from '../fuse/volume-fs';
import type { VolumeState } from '../store/types';
import { checkBlockSize } from '../store/volume-rules';
import type { Compression, Durability, VolumeInfo } from '../types';
import { EXIT_FAILURE, EXIT_OK, UsageError } from './exit-codes';
import type { CliContext } from './mount-command';
import { hasKey, keyFromArgs } from './key-options';
import { formatSize, parseSize } from './size';
import { openStore, readMountRecord, type CliStore } from './store';

async function withStore<T>(ctx: CliContext, fn: (store: CliStore) => Promise<T>, ensureBucket = false): Promise<T> {
  const store = await openStore(ctx.storeDir, ctx.logger, { backend: { url: ctx.backend, pathStyle: ctx.s3PathStyle, ensureBucket } });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export interface CreateArgs {
  volume: string;
  size: string;
  durability?: Durability;
  compression?: Compression;
  blockSize?: string;
  /** --encrypt, with the key from --key-file / --key-env. */
  encrypt?: boolean;
  keyFile?: string;
  keyEnv?: string;
}

export async function runCreate(ctx: CliContext, args: CreateArgs): Promise<number> {
  const size = parseSize(args.size, 'size');
  // Checked before the size: "not a multiple of 1000" hides what is wrong with 1000.
  const blockSize = args.blockSize === undefined ? undefined : checkBlockSize(parseSize(args.blockSize, 'block size'));
  if (blockSize !== undefined && size % blockSize !== 0) {
    throw new UsageError(`size ${size} is not a multiple of the block size ${blockSize}`);
  }
  if (blockSize === undefined && size % 4096 !== 0) {
    throw new UsageError(`size ${size} is not a multiple of the block size 4096`);
  }
  if (args.encrypt && !hasKey(args)) throw new UsageError('--encrypt needs the key: --key-file PATH or --key-env NAME');
  if (!args.encrypt && hasKey(args)) throw new UsageError('a key was given without --encrypt: add --encrypt to create an encrypted volume');
  const key = await keyFromArgs(args);
  try {
    const info = await withStore(
      ctx,
      (s) =>
        s.createVolume(args.volume, { size, blockSize, durability: args.durability, compression: args.compression, ...(key ? { encryption: { key } } : {}) }),
      true,
    );
    ctx.out(
      `created volume ${info.name}: ${formatSize(info.size)}, block size ${info.blockSize}, ${info.durability}, compression ${info.compression}` +
        (info.encrypted ? `, encrypted (${encryptionText(info)})` : ''),
    );
    const mounted = await readMountRecord(ctx.storeDir);
    if (mounted) {
      // The running mount re-reads the volume list on lookup, so the file just appears.
      ctx.out(
        `the store is mounted: the volume is available as ${path.join(mounted.mountpoint, info.name)}` +
          (info.encrypted ? ' if that mount was given this key (a mount serves the encrypted volumes its key opens)' : ''),
      );
    }
  } finally {
    key?.bytes.fill(0);
  }
  return EXIT_OK;
}

/** How an encrypted volume's key is turned into keys, for people: no secret in it. */
export function encryptionText(info: VolumeInfo): string {
  const e = info.encryption;
  if (!e) return 'aes-256-gcm';
  return e.kdf === 'scrypt' && e.scrypt ? `${e.cipher}, passphrase via scrypt N=${e.scrypt.N} r=${e.scrypt.r} p=${e.scrypt.p}` : `${e.cipher}, raw 256-bit key`;
}

function infoRecord(v: VolumeInfo, open: boolean): Record<string, unknown> {
  return { ...v, open };
}

/** A row of `vbfs list`: a healthy volume's metadata with state 'ok', or a damaged one's name and reason. */
function stateRecord(v: VolumeState, open: boolean): Record<string, unknown> {
  return v.info ? { ...infoRecord(v.info, open), state: 'ok' } : { name: v.name, open, state: 'damaged', reason: v.damaged };
}

export async function runList(ctx: CliContext, args: { json: boolean }): Promise<number> {
  const rows = await withStore(ctx, async (s) => {
    const list = await s.listVolumeStates();
    return Promise.all(list.map(async (v) => stateRecord(v, await s.isVolumeOpen(v.name))));
  });
  if (args.json) {
    ctx.out(JSON.stringify(rows, null, 2));
    return EXIT_OK;
  }
  if (rows.length === 0) {
    ctx.out(`no volumes in ${ctx.storeDir} (create one: vbfs create <name> --size 10G)`);
    return EXIT_OK;
  }
  const table = [['NAME', 'SIZE', 'BLOCK', 'DURABILITY', 'COMPRESSION', 'ENCRYPTED', 'OPEN', 'STATE']].concat(
    rows.map((r) =>
      r['state'] === 'ok'
        ? [
            String(r['name']),
            formatSize(r['size'] as number),
            String(r['blockSize']),
            String(r['durability']),
            String(r['compression']),
            r['encrypted'] ? 'yes' : 'no',
            r['open'] ? 'yes' : 'no',
            'ok',
          ]
        : [String(r['name']), '-', '-', '-', '-', '-', r['open'] ? 'yes' : 'no', `damaged: ${String(r['reason'])}`],
    ),
  );
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table)
    ctx.out(
      row
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    );
  return EXIT_OK;
}

/**
 * Live and stored bytes from the volume's map (a read-only open: the durable state,
 * without what a mount holds in memory; `vbfs stats` has the live figures), or
 * null where it cannot be opened without a key.
 */
async function spaceRecord(s: CliStore, info: VolumeInfo): Promise<Record<string, unknown> | null> {
  if (info.encrypted) return null;
  const vol = await s.openVolume(info.name, { readOnly: true });
  try {
    const sp = await vol.space();
    return {
      liveBytes: sp.liveBytes,
      storedBytes: sp.storedBytes,
      spaceAmplification: sp.liveBytes > 0 ? Math.round((sp.storedBytes / sp.liveBytes) * 1000) / 1000 : null,
      chunks: sp.chunks,
    };
  } finally {
    await vol.close();
  }
}

export async function runInfo(ctx: CliContext, args: { volume: string; json: boolean }): Promise<number> {
  const rec = await withStore(ctx, async (s) => {
    const info = await s.volumeInfo(args.volume);
    return { ...infoRecord(info, await s.isVolumeOpen(args.volume)), ...(await spaceRecord(s, info)) };
  });
  if (args.json) {
    ctx.out(JSON.stringify(rec, null, 2));
    return EXIT_OK;
  }
  for (const [k, v] of Object.entries(rec)) {
    if (k === 'encryption') continue; // summarized on the `encrypted` line
    const shown =
      k === 'size' || k === 'liveBytes' || k === 'storedBytes'
        ? `${v as number} (${formatSize(v as number)})`
        : k === 'open'
          ? v
            ? 'yes'
            : 'no'
          : k === 'encrypted'
            ? v
              ? `yes (${encryptionText(rec as unknown as VolumeInfo)})`
              : 'no'
            : String(v);
    ctx.out(`${k.padEnd(Math.max(14, k.length + 1))}${shown}`);
  }
  return EXIT_OK;
}

export interface DeleteArgs {
  volume: string;
  yes: boolean;
  /** Where to ask; tests pass a stream. */
  input?: NodeJS.ReadableStream & { isTTY?: boolean };
}

export async function runDelete(ctx: CliContext, args: DeleteArgs): Promise<number> {
  const input = args.input ?? process.stdin;
  return withStore(ctx, async (s) => {
    // NOT_FOUND before asking; a damaged volume can be deleted too.
    const state = await s.volumeState(args.volume);
    const info = { name: state.name };
    if (await s.isVolumeOpen(info.name)) throw await busyError(ctx, info.name);
    if (!args.yes) {
      if (!input.isTTY) throw new UsageError(`refusing to delete volume ${info.name} without --yes (no terminal to ask on)`);
      const rl = readline.createInterface({ input, output: process.stderr });
      const what = state.info ? formatSize(state.info.size) : `damaged: ${state.damaged}`;
      const answer = await rl.question(`delete volume ${info.name} (${what}) and all its data? [y/N] `);
      rl.close();
      if (!/^y(es)?$/i.test(answer.trim())) {
        ctx.out('not deleted');
        return EXIT_FAILURE;
      }
    }
    try {
      await s.deleteVolume(info.name);
    } catch (err) {
      if (isVbfsError(err, 'VBFS_BUSY') || isVbfsError(err, 'VBFS_LOCKED')) throw await busyError(ctx, info.name);
      throw err;
    }
    ctx.out(`deleted volume ${info.name}`);
    return EXIT_OK;
  });
}

async function busyError(ctx: CliContext, name: string): Promise<VbfsError> {
  const m = await readMountRecord(ctx.storeDir);
  return new VbfsError(
    'VBFS_BUSY',
    m
      ? `volume ${name} is in use by the mount at ${m.mountpoint} (pid ${m.pid}): run 'vbfs unmount ${m.mountpoint}' first`
      : `volume ${name} is open in another process: close it first`,
  );
}

export async function runStats(ctx: CliContext, args: { mountpoint: string; json: boolean }): Promise<number> {
  const file = path.join(path.resolve(args.mountpoint), STATS_NAME);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new VbfsError('VBFS_NOT_FOUND', `${args.mountpoint} is not a vbfs mount (no ${STATS_NAME})`);
    if (code === 'ENOTCONN') throw new VbfsError('VBFS_IO', `${args.mountpoint} is a dead mount (its process died): run 'vbfs unmount ${args.mountpoint}'`);
    throw new VbfsError('VBFS_IO', `cannot read ${file}: ${(err as Error).message}`);
  }
  ctx.out(args.json ? JSON.stringify(parseStats(text), null, 2) : text.trimEnd());
  return EXIT_OK;
}
