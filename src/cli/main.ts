/**
 * The vbfs command line. The only code that reads argv, writes to the console and
 * calls process.exit (in `run`, after the log file has been flushed).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { DURABILITY_MODES, COMPRESSIONS, type Durability } from '../types';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, exitCodeFor } from './exit-codes';
import { closeLogger, createCliLogger, LOG_LEVELS, type CliLogger, type LogLevel } from './logger';
import { runFsck } from './fsck-command';
import { runCompact } from './compact-command';
import { READY_FD_ENV, runMount, runUnmount, type CliContext } from './mount-command';
import { KEY_ENV_HELP, KEY_FILE_HELP } from './key-options';
import {
  COMPACT_OPTIONS,
  compactOptionStrings,
  parseMountFuseForm,
  parseMountOptions,
  parseLeaseTtl,
  parseStopTimeout,
  type MountFlags,
} from './mount-options';
import { parseSize, parseSizeOrZero } from './size';
import { defaultStoreDir } from './store';
import { runCreate, runDelete, runInfo, runList, runStats } from './volume-commands';

/**
 * The version of the package this file was built in: package.json sits three levels
 * above dist/src/cli/, in a checkout and in an installed package alike.
 */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

const COMMANDS = new Set(['create', 'list', 'ls', 'info', 'delete', 'rm', 'fsck', 'compact', 'mount', 'unmount', 'umount', 'stats', 'help']);

export interface MainIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** stderr is a terminal (progress bars go there only then). */
  stderrIsTTY?: boolean;
}

const defaultIO: MainIO = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  env: process.env,
  stderrIsTTY: process.stderr.isTTY === true,
};

interface GlobalArgs {
  store?: string;
  backend?: string;
  's3-path-style'?: boolean;
  'log-level': LogLevel;
  'log-file'?: string;
}

/**
 * `vbfs <store> <mountpoint> -o opts` (mount(8), /etc/fstab) becomes
 * `vbfs mount <mountpoint> --store <store> --daemon ...`.
 */
export function rewriteArgv(argv: string[]): string[] | 'fake' {
  const first = argv[0];
  if (first === undefined || first.startsWith('-') || COMMANDS.has(first)) return argv;
  // One stray word is a mistyped command, not a store: let the parser say so.
  if (argv.filter((a) => !a.startsWith('-')).length < 2) return argv;
  const form = parseMountFuseForm(argv);
  if (form.fake) return 'fake';
  const flags = parseMountOptions(form.options, form.sloppy);
  const out = ['mount', form.mountpoint, '--store', path.resolve(form.store), '--daemon'];
  if (flags.readOnly) out.push('--read-only');
  if (flags.allowOther) out.push('--allow-other');
  if (flags.allowRoot) out.push('--allow-root');
  if (flags.defaultPermissions) out.push('--default-permissions');
  if (flags.durability) out.push('--durability', flags.durability);
  if (flags.memoryBytes !== undefined) out.push('--memory', String(flags.memoryBytes));
  if (flags.diskCacheBytes !== undefined) out.push('--disk-cache-bytes', String(flags.diskCacheBytes));
  if (flags.logFile) out.push('--log-file', flags.logFile);
  if (flags.nonempty) out.push('-o', 'nonempty');
  if (flags.stopTimeoutSeconds !== undefined) out.push('--stop-timeout', String(flags.stopTimeoutSeconds));
  if (flags.leaseTtlSeconds !== undefined) out.push('--lease-ttl', String(flags.leaseTtlSeconds));
  if (flags.keyFile !== undefined) out.push('--key-file', flags.keyFile);
  if (flags.keyEnv !== undefined) out.push('--key-env', flags.keyEnv);
  for (const o of compactOptionStrings(flags.compact)) out.push('-o', o);
  if (flags.walPreallocate !== undefined) out.push('-o', `wal_prealloc=${flags.walPreallocate ? 'on' : 'off'}`);
  // fstab: a mistyped store path must not silently become a new, empty store.
  if (!flags.create) out.push('--require-store');
  if (flags.logLevel) out.push('--log-level', flags.logLevel);
  else if (form.verbose) out.push('--log-level', 'info');
  // mount(8) helpers are silent on success unless asked to be verbose.
  if (!form.verbose) out.push('--quiet');
  return out;
}

/** Parse and run one command line. Resolves with the exit status; never exits itself. */
export async function main(rawArgv: string[], io: MainIO = defaultIO): Promise<number> {
  let logger: CliLogger | null = null;
  let debug = rawArgv.includes('debug');
  const out = (line: string): void => io.stdout(line + '\n');

  const context = (a: GlobalArgs): CliContext => {
    const level = a['log-level'];
    debug = level === 'debug';
    if (!logger) {
      // A daemon child's stderr is its log file: no human copy there.
      logger = createCliLogger({ level, file: a['log-file'], console: !io.env[READY_FD_ENV] });
    }
    return {
      storeDir: path.resolve(a.store ?? defaultStoreDir(io.env)),
      logger,
      logFile: a['log-file'] ? path.resolve(a['log-file']) : undefined,
      logLevel: level,
      out,
      backend: a.backend,
      s3PathStyle: a['s3-path-style'],
    };
  };

  let status = EXIT_OK;
  let commandRan = false;
  try {
    const argv = rewriteArgv(rawArgv);
    if (argv === 'fake') return EXIT_OK;

    const mountOptionsFrom = (a: {
      o?: string[];
      'read-only'?: boolean;
      'allow-other'?: boolean;
      'allow-root'?: boolean;
      'default-permissions'?: boolean;
      durability?: string;
      'key-file'?: string;
      'key-env'?: string;
    }): MountFlags => {
      const fromO = parseMountOptions(a.o ?? []);
      return {
        keyFile: a['key-file'] ?? fromO.keyFile,
        keyEnv: a['key-env'] ?? fromO.keyEnv,
        ...fromO,
        readOnly: a['read-only'] || fromO.readOnly,
        allowOther: a['allow-other'] || fromO.allowOther,
        allowRoot: a['allow-root'] || fromO.allowRoot,
        defaultPermissions: a['default-permissions'] || fromO.defaultPermissions,
        durability: (a.durability as Durability | undefined) ?? fromO.durability,
      };
    };

    const parser = yargs(argv)
      .scriptName('vbfs')
      .usage(
        'vbfs: log-structured block store; every volume is one sparse file in a FUSE mount\n\n' +
          'Usage: vbfs <command> [options]\n' +
          '       vbfs <store> <mountpoint> [-o opt,...]   (mount.fuse form, for /etc/fstab)',
      )
      .env(false)
      .option('store', {
        type: 'string',
        describe: 'store directory',
        defaultDescription: '$VBFS_STORE or ~/.local/share/vbfs',
        global: true,
      })
      .option('backend', {
        type: 'string',
        describe:
          'keep the volumes (metadata, chunks, map) in an S3 bucket: s3://BUCKET/PREFIX; the store directory keeps the WAL, lock and caches ' +
          'and remembers the backend (later commands need no --backend). Credentials, region and endpoint from AWS_ACCESS_KEY_ID, ' +
          'AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_PROFILE; never written to disk',
        global: true,
      })
      .option('s3-path-style', {
        type: 'boolean',
        describe: 'path-style S3 URLs (default: on with a custom endpoint, e.g. RGW or MinIO; --s3-path-style=false for virtual-hosted)',
        global: true,
      })
      .option('log-level', { choices: LOG_LEVELS, default: 'warn' as const, describe: 'stderr/log-file verbosity', global: true })
      .option('log-file', { type: 'string', describe: 'also log JSON lines to this file', global: true })
      .command(
        'create <volume>',
        'create a volume',
        (y) =>
          y
            .positional('volume', { type: 'string', demandOption: true, describe: 'volume name (letters, digits, . _ -)' })
            .option('size', { type: 'string', demandOption: true, describe: 'size in bytes or with K/M/G/T (binary)' })
            .option('durability', { choices: DURABILITY_MODES, describe: 'what write()/fsync() wait for (default batched)' })
            .option('compression', { choices: COMPRESSIONS, describe: 'chunk compression (default none)' })
            .option('block-size', { type: 'string', describe: 'block size, power of two 512..65536 (default 4096)' })
            .option('encrypt', {
              type: 'boolean',
              default: false,
              describe: 'encrypt every block at rest (AES-256-GCM); needs --key-file or --key-env, now and at every mount and fsck',
            })
            .option('key-file', { type: 'string', describe: KEY_FILE_HELP })
            .option('key-env', { type: 'string', describe: KEY_ENV_HELP }),
        async (a) => {
          commandRan = true;
          status = await runCreate(context(a), {
            volume: a.volume,
            size: a.size,
            durability: a.durability,
            compression: a.compression,
            blockSize: a['block-size'],
            encrypt: a.encrypt,
            keyFile: a['key-file'],
            keyEnv: a['key-env'],
          });
        },
      )
      .command(
        ['list', 'ls'],
        'list volumes',
        (y) => y.option('json', { type: 'boolean', default: false }),
        async (a) => {
          commandRan = true;
          status = await runList(context(a), { json: a.json });
        },
      )
      .command(
        'info <volume>',
        'show one volume',
        (y) => y.positional('volume', { type: 'string', demandOption: true }).option('json', { type: 'boolean', default: false }),
        async (a) => {
          commandRan = true;
          status = await runInfo(context(a), { volume: a.volume, json: a.json });
        },
      )
      .command(
        ['delete <volume>', 'rm <volume>'],
        'delete a volume and its data (refused while it is mounted)',
        (y) =>
          y.positional('volume', { type: 'string', demandOption: true }).option('yes', { alias: 'y', type: 'boolean', default: false, describe: 'do not ask' }),
        async (a) => {
          commandRan = true;
          status = await runDelete(context(a), { volume: a.volume, yes: a.yes });
        },
      )
      .command(
        'fsck <volume>',
        'verify a volume end to end without mounting it (refused while it is open for writing); exit 1 if damaged',
        (y) =>
          y
            .positional('volume', { type: 'string', demandOption: true })
            .option('repair', {
              type: 'boolean',
              default: false,
              describe: 'cut torn WAL/map tails and delete orphan chunks (never rewrites damaged data); takes the volume lock',
            })
            .option('json', { type: 'boolean', default: false, describe: 'print the report as one JSON object' })
            .option('key-file', { type: 'string', describe: `${KEY_FILE_HELP}; with it, every record is authenticated, without it only CRCs are checked` })
            .option('key-env', { type: 'string', describe: KEY_ENV_HELP }),
        async (a) => {
          commandRan = true;
          status = await runFsck(context(a), {
            volume: a.volume,
            json: a.json,
            repair: a.repair,
            keyFile: a['key-file'],
            keyEnv: a['key-env'],
            progress: io.stderrIsTTY ? io.stderr : null,
          });
        },
      )
      .command(
        'compact <volume>',
        'rewrite the live blocks of mostly-dead chunks into new chunks and delete the old ones, now (a mount does it in the background)',
        (y) =>
          y
            .positional('volume', { type: 'string', demandOption: true })
            .option('full', { type: 'boolean', default: false, describe: 'rewrite every chunk that holds dead blocks, not only down to the target' })
            .option('json', { type: 'boolean', default: false, describe: 'print the result as one JSON object' })
            .option('key-file', { type: 'string', describe: KEY_FILE_HELP })
            .option('key-env', { type: 'string', describe: KEY_ENV_HELP }),
        async (a) => {
          commandRan = true;
          status = await runCompact(context(a), {
            volume: a.volume,
            full: a.full,
            json: a.json,
            keyFile: a['key-file'],
            keyEnv: a['key-env'],
            progress: io.stderrIsTTY ? io.stderr : null,
          });
        },
      )
      .command(
        'mount <mountpoint>',
        'show every volume as the file <mountpoint>/<volume>; foreground until unmounted or SIGTERM/SIGINT ' +
          '(deferred while busy, see --stop-timeout; SIGHUP is ignored, SIGUSR2 forces)',
        (y) =>
          y
            .positional('mountpoint', { type: 'string', demandOption: true })
            .option('daemon', { alias: 'd', type: 'boolean', default: false, describe: 'run in the background; return once the mount is ready' })
            .option('read-only', { alias: 'ro', type: 'boolean', default: false })
            .option('durability', { choices: DURABILITY_MODES, describe: "override every volume's durability for this mount" })
            .option('allow-other', {
              type: 'boolean',
              default: false,
              describe:
                'let every local user open the volume files: without --default-permissions any user can read AND overwrite every volume (vbfs checks no permissions); needs user_allow_other in /etc/fuse.conf for non-root',
            })
            .option('allow-root', { type: 'boolean', default: false, describe: 'let root (only) open the volume files too' })
            .option('default-permissions', {
              type: 'boolean',
              default: false,
              describe: 'kernel checks the shown modes (volumes 0644): with --allow-other, others can read but not write',
            })
            .option('o', {
              type: 'string',
              array: true,
              describe: 'mount options: ro,allow_other,nonempty,stop_timeout=SECONDS,durability=MODE,... (see docs/cli.md)',
            })
            .option('disk-cache-bytes', {
              type: 'string',
              describe: 'local disk cache of chunk objects in front of a bucket, in <store>/cache (e.g. 4G; default 1G, 0 = off; ignored for a local store)',
            })
            .option('key-file', {
              type: 'string',
              describe: `key of the encrypted volumes: ${KEY_FILE_HELP}. Encrypted volumes it does not open are not served (one warning each)`,
            })
            .option('key-env', { type: 'string', describe: KEY_ENV_HELP })
            .option('memory', {
              type: 'string',
              describe: 'memory for write buffers + read caches of all volumes together (e.g. 512M; default a quarter of RAM, 256M..1G)',
            })
            .option('timeout', { type: 'number', default: 120, describe: '--daemon: seconds to wait for the mount to be ready' })
            .option('stop-timeout', {
              type: 'string',
              describe:
                'seconds a SIGTERM/SIGINT waits for open files and loop devices to let go (new opens are refused meanwhile); ' +
                'then it unmounts lazily if only files are open, or keeps serving while a loop device is attached (default 60)',
            })
            .option('lease-ttl', {
              type: 'string',
              describe:
                'seconds the lease of a volume kept in a bucket lives without renewal (1..3600, default 30): a mount that cannot renew it ' +
                'for that long stops writing (EIO), and another machine may take the volume over after it',
            })
            .option('compact-interval', {
              type: 'string',
              describe: 'background compaction: check every SECONDS (default 5; 0 = off, `vbfs compact` still works)',
            })
            .option('compact-start', { type: 'string', describe: 'start compacting when stored bytes > live bytes x RATIO (default 1.5)' })
            .option('compact-target', { type: 'string', describe: 'compact until stored bytes <= live bytes x RATIO (default 1.25)' })
            .option('compact-chunk-live', { type: 'string', describe: 'also compact any chunk less than FRACTION live (default 0.25)' })
            .option('compact-rate', { type: 'string', describe: 'bytes/s compaction moves while reads or writes run (e.g. 64M; default 32M; 0 = no limit)' })
            .option('require-store', { type: 'boolean', default: false, hidden: true })
            .option('debug-fuse', { type: 'boolean', default: false, hidden: true })
            .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'print nothing on success' }),
        async (a) => {
          commandRan = true;
          const flags = mountOptionsFrom(a);
          for (const o of COMPACT_OPTIONS) {
            const v = (a as Record<string, unknown>)[o.flag];
            if (typeof v === 'string') flags.compact = { ...flags.compact, [o.key]: o.parse(v, `--${o.flag}`) };
          }
          const g = { ...(a as GlobalArgs) };
          if (flags.logFile && !g['log-file']) g['log-file'] = flags.logFile;
          if (flags.logLevel) {
            if (!(LOG_LEVELS as readonly string[]).includes(flags.logLevel)) throw new UsageError(`invalid log_level '${flags.logLevel}'`);
            g['log-level'] = flags.logLevel as LogLevel;
          }
          const ctx = context(g);
          if (a.quiet) ctx.out = () => undefined;
          const stopTimeout = a['stop-timeout'] !== undefined ? parseStopTimeout(a['stop-timeout'], '--stop-timeout') : flags.stopTimeoutSeconds;
          status = await runMount(ctx, {
            ...flags,
            mountpoint: a.mountpoint,
            daemon: a.daemon,
            timeoutSeconds: a.timeout,
            stopTimeoutSeconds: stopTimeout,
            leaseTtlSeconds: a['lease-ttl'] !== undefined ? parseLeaseTtl(a['lease-ttl'], '--lease-ttl') : flags.leaseTtlSeconds,
            memoryBytes: a.memory !== undefined ? parseSize(a.memory, '--memory') : flags.memoryBytes,
            diskCacheBytes: a['disk-cache-bytes'] !== undefined ? parseSizeOrZero(a['disk-cache-bytes'], '--disk-cache-bytes') : flags.diskCacheBytes,
            requireStore: a['require-store'],
            debugFuse: a['debug-fuse'],
          });
        },
      )
      .command(
        ['unmount <mountpoint>', 'umount <mountpoint>'],
        'flush, sync and unmount cleanly (refused while a loop device uses a volume file)',
        (y) =>
          y
            .positional('mountpoint', { type: 'string', demandOption: true })
            .option('force', {
              alias: 'f',
              type: 'boolean',
              default: false,
              describe: 'unmount lazily even if busy or a loop device is attached (the loop device gets I/O errors)',
            })
            .option('timeout', { type: 'number', default: 300, describe: 'seconds to wait for the mount process to close its volumes' }),
        async (a) => {
          commandRan = true;
          status = await runUnmount(context(a), { mountpoint: a.mountpoint, force: a.force, timeoutSeconds: a.timeout });
        },
      )
      .command(
        'stats <mountpoint>',
        'print the live counters of a mount (<mountpoint>/.stats)',
        (y) => y.positional('mountpoint', { type: 'string', demandOption: true }).option('json', { type: 'boolean', default: false }),
        async (a) => {
          commandRan = true;
          status = await runStats(context(a), { mountpoint: a.mountpoint, json: a.json });
        },
      )
      .demandCommand(1, 'no command given')
      .recommendCommands()
      .strict()
      .help()
      .alias('help', 'h')
      .version(packageVersion())
      .showHelpOnFail(false)
      .exitProcess(false)
      .wrap(Math.min(110, process.stdout.columns ?? 100))
      .fail((msg, err) => {
        if (err) throw err;
        throw new UsageError(msg);
      });
    let helpText = '';
    await parser.parseAsync(argv, {}, (_err, _argv, output) => {
      helpText = output;
    });
    if (!commandRan && helpText) io.stdout(helpText + '\n');
    return status;
  } catch (err) {
    const code = exitCodeFor(err);
    // One line: yargs messages span several.
    const message = ((err as Error)?.message ?? String(err)).replace(/\s*\n\s*/g, ' ');
    const hint = code === EXIT_USAGE ? " (see 'vbfs --help')" : '';
    if (logger) {
      (logger as CliLogger).error(`${message}${hint}`, { code: (err as { code?: string }).code, stack: (err as Error)?.stack });
    } else {
      io.stderr(`vbfs: error: ${message}${hint}\n`);
      if (debug && (err as Error)?.stack) io.stderr(`${(err as Error).stack}\n`);
    }
    return code;
  } finally {
    if (logger) await closeLogger(logger);
  }
}

/** bin/vbfs entry point. */
export function run(): void {
  // Logging must never be fatal: with no 'error' listener, EPIPE (the reader of a
  // `| tee` pipe exited) or EIO (the terminal went away) on stdout/stderr is thrown,
  // and a mount process dies under its users. Lost log lines are the lesser harm.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`vbfs: error: ${(err as Error)?.message ?? String(err)}\n`);
      process.exit(EXIT_FAILURE);
    },
  );
}
