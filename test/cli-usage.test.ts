/**
 * The command line without mounting: exit statuses (0 ok, 2 usage, 1 failure),
 * one clear line on stderr, and the argument parsers (sizes, -o options, the
 * mount.fuse form, the mount table, loop devices, .stats).
 */
import * as assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { constants } from 'node:os';
import { VbfsError } from '../src/errors';
import { rewriteArgv } from '../src/cli/main';
import { exitCodeFor, UsageError, EXIT_BY_CODE } from '../src/cli/exit-codes';
import { parseLeaseTtl, parseMountFuseForm, parseMountOptions } from '../src/cli/mount-options';
import { formatSize, parseSize } from '../src/cli/size';
import { ERRNO_BY_CODE, toErrno } from '../src/fuse/errno';
import { parseStats, renderStats } from '../src/fuse/stats-file';
import { fsnameFor, loadFuse } from '../src/fuse/mount';
import { canonicalMountpoint, loopDevicesUnder, parseMountInfo, storeFromMount } from '../src/os/mounts';
import { tmpDir, vbfs } from './helpers/fuse-env';

function oneLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace without --log-level debug');
  return lines[0]!;
}

describe('vbfs command line: exit statuses and messages', function () {
  this.timeout(60_000);
  let root = '';
  let store = '';

  before(async () => {
    root = await tmpDir('cli');
    store = path.join(root, 'store');
  });
  after(async () => {
    await fsp.rm(root, { recursive: true, force: true });
  });

  it('--help exits 0 everywhere', async () => {
    for (const args of [['--help'], ['create', '--help'], ['mount', '--help'], ['unmount', '--help'], ['stats', '--help']]) {
      const r = await vbfs(args, store);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /vbfs/);
    }
  });

  it('--version prints the version of package.json and exits 0', async () => {
    const pkg = JSON.parse(await fsp.readFile(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
    const r = await vbfs(['--version'], store);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), pkg.version);
  });

  const usage: Array<[string, string[], RegExp]> = [
    ['no command', [], /no command given/],
    ['unknown command', ['frobnicate'], /Unknown argument: frobnicate/],
    ['missing --size', ['create', 'v'], /Missing required argument: size/],
    ['bad size', ['create', 'v', '--size', '10X'], /invalid size '10X'/],
    ['zero size', ['create', 'v', '--size', '0'], /invalid size '0'/],
    ['size not a block multiple', ['create', 'v', '--size', '1000'], /not a multiple of the block size/],
    ['bad durability', ['create', 'v', '--size', '1M', '--durability', 'sometimes'], /durability/],
    ['bad name', ['create', '../x', '--size', '1M'], /invalid volume name/],
    ['unknown option', ['list', '--colour'], /Unknown argument/],
    ['bad -o option', ['mount', '/nonexistent-mnt', '-o', 'frob'], /unknown mount option 'frob'/],
    ['bad --lease-ttl', ['mount', '/nonexistent-mnt', '--lease-ttl', '0'], /invalid --lease-ttl '0'/],
    ['bad -o lease_ttl', ['mount', '/nonexistent-mnt', '-o', 'lease_ttl=soon'], /invalid mount option 'lease_ttl=soon'/],
    ['delete without --yes and no terminal', ['delete', 'v1'], /without --yes/],
  ];
  for (const [what, args, msg] of usage) {
    it(`exits 2 with one line for a usage error: ${what}`, async () => {
      if (what.startsWith('delete')) await vbfs(['create', 'v1', '--size', '1M'], store);
      const r = await vbfs(args, store);
      assert.equal(r.code, 2, `exit status for ${args.join(' ')}; stderr: ${r.stderr}`);
      assert.match(oneLine(r.stderr), msg);
    });
  }

  it('exits 1 with one line when the request fails: unknown volume, duplicate, not mounted', async () => {
    const unknown = await vbfs(['info', 'nope'], store);
    assert.equal(unknown.code, 1);
    assert.match(oneLine(unknown.stderr), /nope/);
    const del = await vbfs(['delete', 'nope', '--yes'], store);
    assert.equal(del.code, 1);
    oneLine(del.stderr);
    assert.equal((await vbfs(['create', 'dup', '--size', '1M'], store)).code, 0);
    const dup = await vbfs(['create', 'dup', '--size', '1M'], store);
    assert.equal(dup.code, 1);
    assert.match(oneLine(dup.stderr), /dup/);
    const um = await vbfs(['unmount', path.join(root, 'not-a-mount')], store);
    assert.equal(um.code, 1);
    assert.match(oneLine(um.stderr), /is not mounted/);
    const st = await vbfs(['stats', root], store);
    assert.equal(st.code, 1);
    assert.match(oneLine(st.stderr), /not a vbfs mount/);
  });

  it('shows the stack only with --log-level debug', async () => {
    const r = await vbfs(['info', 'nope', '--log-level', 'debug'], store);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /\n\s+at /);
  });

  it('create, list, info, delete round trip (text and --json)', async () => {
    const c = await vbfs(['create', 'rt', '--size', '2G', '--durability', 'strict', '--compression', 'lz4', '--block-size', '8K'], store);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, /created volume rt: 2GiB/);
    const list = JSON.parse((await vbfs(['list', '--json'], store)).stdout) as Array<Record<string, unknown>>;
    const rt = list.find((v) => v['name'] === 'rt')!;
    assert.equal(rt['size'], 2 * 2 ** 30);
    assert.equal(rt['blockSize'], 8192);
    assert.equal(rt['durability'], 'strict');
    assert.equal(rt['compression'], 'lz4');
    assert.equal(rt['open'], false);
    const info = await vbfs(['info', 'rt'], store);
    assert.match(info.stdout, /durability\s+strict/);
    const d = await vbfs(['delete', 'rt', '--yes'], store);
    assert.equal(d.code, 0, d.stderr);
    assert.equal((await vbfs(['info', 'rt'], store)).code, 1);
  });

  it('writes JSON lines to --log-file, complete at exit', async () => {
    const logFile = path.join(root, 'log.json');
    const r = await vbfs(['info', 'missing-volume', '--log-file', logFile], store);
    assert.equal(r.code, 1);
    const lines = (await fsp.readFile(logFile, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const err = lines.find((l) => l['level'] === 'error')!;
    assert.match(String(err['message']), /missing-volume/);
    assert.equal(err['code'], 'VBFS_NOT_FOUND');
  });
});

describe('vbfs argument parsing', () => {
  it('parses sizes with binary suffixes and rejects the rest', () => {
    assert.equal(parseSize('4096'), 4096);
    assert.equal(parseSize('512K'), 512 * 1024);
    assert.equal(parseSize('10G'), 10 * 2 ** 30);
    assert.equal(parseSize('1.5T'), 1.5 * 2 ** 40);
    assert.equal(parseSize('2GiB'), 2 * 2 ** 30);
    assert.equal(parseSize('64mb'), 64 * 2 ** 20);
    for (const bad of ['', 'G', '-1M', '1.5', '10X', '1e9', '9999999P']) {
      assert.throws(() => parseSize(bad), UsageError, bad);
    }
    assert.equal(formatSize(10 * 2 ** 30), '10GiB');
  });

  it('rewrites the mount.fuse form into a daemon mount', () => {
    assert.deepEqual(rewriteArgv(['/var/lib/vbfs', '/mnt/v', '-o', 'rw,_netdev,allow_other,durability=strict']), [
      'mount',
      '/mnt/v',
      '--store',
      '/var/lib/vbfs',
      '--daemon',
      '--allow-other',
      '--durability',
      'strict',
      '--require-store',
      '--quiet',
    ]);
    // fstab: only `-o create` may create a store that does not exist yet.
    assert.deepEqual(rewriteArgv(['/s', '/m', '-o', 'create,nonempty,stop_timeout=5,lease_ttl=12']), [
      'mount',
      '/m',
      '--store',
      '/s',
      '--daemon',
      '-o',
      'nonempty',
      '--stop-timeout',
      '5',
      '--lease-ttl',
      '12',
      '--quiet',
    ]);
    assert.deepEqual(rewriteArgv(['list', '--json']), ['list', '--json']);
    assert.deepEqual(rewriteArgv(['typo']), ['typo']); // left to the parser: "Unknown argument"
    assert.equal(rewriteArgv(['/s', '/m', '-f']), 'fake');
    const f = parseMountFuseForm(['vbfs#/s', '/m', '-oro', '-t', 'fuse.vbfs', '-n', '-s']);
    assert.equal(f.store, '/s');
    assert.deepEqual(f.options, ['ro']);
    assert.equal(f.sloppy, true);
    assert.throws(() => parseMountFuseForm(['/only-one']), UsageError);
  });

  it('parses -o options: known ones, ignorable fstab ones, unknown ones refused unless sloppy', () => {
    assert.deepEqual(parseMountOptions(['ro,allow_root', 'default_permissions,log_level=debug']), {
      readOnly: true,
      allowRoot: true,
      defaultPermissions: true,
      logLevel: 'debug',
    });
    assert.deepEqual(parseMountOptions(['defaults,noauto,nofail,x-systemd.requires=network.target,comment=x']), {});
    assert.throws(() => parseMountOptions(['durability=maybe']), UsageError);
    assert.throws(() => parseMountOptions(['frob']), /unknown mount option 'frob'/);
    assert.deepEqual(parseMountOptions(['frob'], true), {});
    assert.deepEqual(parseMountOptions(['nonempty,create,stop_timeout=2.5']), { nonempty: true, create: true, stopTimeoutSeconds: 2.5 });
    assert.throws(() => parseMountOptions(['stop_timeout=soon']), UsageError);
    assert.throws(() => parseMountOptions(['stop_timeout=-1']), UsageError);
    assert.deepEqual(parseMountOptions(['lease_ttl=10']), { leaseTtlSeconds: 10 });
    assert.deepEqual(parseMountOptions(['wal_prealloc=off']), { walPreallocate: false });
    assert.deepEqual(parseMountOptions(['wal_prealloc=on']), { walPreallocate: true });
    assert.throws(() => parseMountOptions(['wal_prealloc=maybe']), UsageError);
    const walArgv = rewriteArgv(['/s', '/m', '-o', 'wal_prealloc=off']);
    assert.ok(Array.isArray(walArgv));
    assert.equal(walArgv[walArgv.indexOf('wal_prealloc=off') - 1], '-o');
    assert.deepEqual(parseMountOptions(['disk_cache=2G']), { diskCacheBytes: 2 * 1024 ** 3 });
    assert.deepEqual(parseMountOptions(['disk_cache=0']), { diskCacheBytes: 0 });
    assert.throws(() => parseMountOptions(['disk_cache=-1']), UsageError);
    const cacheArgv = rewriteArgv(['/s', '/m', '-o', 'disk_cache=512M']);
    assert.ok(Array.isArray(cacheArgv));
    assert.equal(cacheArgv[cacheArgv.indexOf('--disk-cache-bytes') + 1], String(512 * 1024 ** 2));
    assert.equal(parseLeaseTtl('2.5', '--lease-ttl'), 2.5);
    for (const bad of ['0', '0.5', '3601', 'soon', '', '1.0001', '-5']) assert.throws(() => parseLeaseTtl(bad, '--lease-ttl'), UsageError, bad);
  });

  it('takes the key of encrypted volumes from -o key_file=PATH / key_env=NAME, and passes the source (never a key) to the daemon', () => {
    assert.deepEqual(parseMountOptions(['key_file=/etc/vbfs/disk.key']), { keyFile: '/etc/vbfs/disk.key' });
    assert.deepEqual(parseMountOptions(['key_env=VBFS_KEY']), { keyEnv: 'VBFS_KEY' });
    assert.throws(() => parseMountOptions(['key_file=']), UsageError);
    assert.throws(() => parseMountOptions(['key_env']), UsageError);
    const argv = rewriteArgv(['/s', '/m', '-o', 'key_file=/k']);
    assert.ok(Array.isArray(argv));
    const i = argv.indexOf('--key-file');
    assert.equal(argv[i + 1], '/k');
  });

  it('has one exit status and one errno for every error code', () => {
    const codes = Object.keys(ERRNO_BY_CODE).sort();
    assert.deepEqual(Object.keys(EXIT_BY_CODE).sort(), codes);
    assert.equal(exitCodeFor(new UsageError('x')), 2);
    assert.equal(exitCodeFor(new VbfsError('VBFS_INVALID_NAME', 'x')), 2);
    assert.equal(exitCodeFor(new VbfsError('VBFS_NOT_FOUND', 'x')), 1);
    assert.equal(exitCodeFor(new VbfsError('VBFS_LEASE_HELD', 'x')), 1);
    assert.equal(toErrno(new VbfsError('VBFS_LEASE_LOST', 'x')), -constants.errno.EIO, 'a fenced writer gets EIO');
    assert.equal(exitCodeFor(new Error('bug')), 1);
    assert.equal(toErrno(new VbfsError('VBFS_NOT_FOUND', 'x')), -constants.errno.ENOENT);
    assert.equal(toErrno(new VbfsError('VBFS_READ_ONLY', 'x')), -constants.errno.EROFS);
    assert.equal(toErrno(new VbfsError('VBFS_IO', 'disk full', { errno: 'ENOSPC' })), -constants.errno.ENOSPC);
    assert.equal(toErrno(new VbfsError('VBFS_IO', 'x', { errno: 'EBADF' })), -constants.errno.EIO);
    assert.equal(toErrno(new TypeError('bug')), -constants.errno.EIO);
    for (const code of codes) assert.ok(toErrno(new VbfsError(code as never, 'x')) < 0);
  });
});

describe('mount table, loop devices, .stats text', () => {
  it('names the Debian package when libfuse.so.2 is missing', () => {
    const missing = (): never => {
      throw new Error('libfuse.so.2: cannot open shared object file: No such file or directory');
    };
    assert.throws(
      () => loadFuse(missing),
      (err: Error) => {
        assert.equal((err as VbfsError).code, 'VBFS_IO');
        assert.match(err.message, /install the Debian package 'libfuse2'/);
        assert.doesNotMatch(err.message, /\n/);
        return true;
      },
    );
  });

  it('parses /proc/self/mountinfo lines, with escaped spaces', () => {
    const text =
      '44 27 0:41 / /tmp/m\\0401 rw,nosuid,nodev,relatime - fuse.vbfs vbfs:/var/lib/vbfs rw,user_id=0,group_id=0\n' +
      '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n';
    const [m, r] = parseMountInfo(text);
    assert.equal(m!.mountpoint, '/tmp/m 1');
    assert.equal(m!.fstype, 'fuse.vbfs');
    assert.equal(storeFromMount(m!), '/var/lib/vbfs');
    assert.equal(r!.mountpoint, '/');
    assert.equal(r!.fstype, 'ext4');
    assert.equal(fsnameFor('/var/lib/vbfs'), 'vbfs:/var/lib/vbfs,big_writes,max_write=131072');
    assert.equal(fsnameFor('/a,b'), 'vbfs,big_writes,max_write=131072');
    // --read-only reaches the kernel (the mount table says ro); -o nonempty reaches libfuse.
    assert.equal(fsnameFor('/s', { readOnly: true, nonempty: true }), 'vbfs:/s,big_writes,max_write=131072,ro,nonempty');
  });

  it('canonicalMountpoint resolves a symlink in the last component too', async () => {
    const dir = await tmpDir('canon');
    try {
      const real = path.join(dir, 'real');
      await fsp.mkdir(real);
      await fsp.symlink(real, path.join(dir, 'link'));
      await fsp.symlink('link', path.join(dir, 'link2')); // relative, and a chain
      assert.equal(canonicalMountpoint(path.join(dir, 'link')), await fsp.realpath(real));
      assert.equal(canonicalMountpoint(path.join(dir, 'link2')), await fsp.realpath(real));
      // A dangling link (or a dead mount) still gives the path the kernel would record.
      await fsp.symlink(path.join(dir, 'gone'), path.join(dir, 'dangling'));
      assert.equal(canonicalMountpoint(path.join(dir, 'dangling')), path.join(await fsp.realpath(dir), 'gone'));
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('finds loop devices backed by files under a mountpoint (from /sys/block)', async () => {
    const sys = await tmpDir('sys');
    try {
      for (const [dev, file] of [
        ['loop0', '/mnt/v/disk\n'],
        ['loop1', '/mnt/vother/x\n'],
        ['loop2', '/mnt/v/old (deleted)\n'],
      ]) {
        await fsp.mkdir(path.join(sys, dev!, 'loop'), { recursive: true });
        await fsp.writeFile(path.join(sys, dev!, 'loop', 'backing_file'), file!);
      }
      await fsp.mkdir(path.join(sys, 'loop3')); // detached: no loop/backing_file
      await fsp.mkdir(path.join(sys, 'sda'));
      const loops = await loopDevicesUnder('/mnt/v', sys);
      assert.deepEqual(loops, [
        { device: '/dev/loop0', backingFile: '/mnt/v/disk' },
        { device: '/dev/loop2', backingFile: '/mnt/v/old' },
      ]);
    } finally {
      await fsp.rm(sys, { recursive: true, force: true });
    }
  });

  it('renders .stats with a size that does not depend on the counter values', () => {
    const zero = { writes: 0, writeBytes: 0, fsyncP50Ms: 0 } as never;
    const big = { writes: 123456789, writeBytes: 2 ** 50, fsyncP50Ms: 12.3456 } as never;
    const a = renderStats({ uptimeSeconds: 1, openHandles: 0, fuseErrors: 0 }, [{ name: 'v', durability: 'batched', size: 1, stats: zero }]);
    const b = renderStats({ uptimeSeconds: 99999, openHandles: 12, fuseErrors: 3 }, [{ name: 'v', durability: 'strict', size: 2 ** 40, stats: big }]);
    assert.equal(a.length, b.length);
    const parsed = parseStats(b);
    assert.equal(parsed.volumes['v']!['writes'], 123456789);
    assert.equal(parsed.volumes['v']!['fsync_p50_ms'], 12.346);
    assert.equal(parsed.mount['open_handles'], 12);
  });

  it('stats --json keeps a volume named "mount" apart from the mount-wide counters', () => {
    const text = renderStats({ uptimeSeconds: 5, openHandles: 7, fuseErrors: 0 }, [
      { name: 'mount', durability: 'batched', size: 4096, stats: { writes: 3 } as never },
      { name: 'volumes', durability: 'strict', size: 8192, stats: { writes: 4 } as never },
    ]);
    const parsed = parseStats(text);
    assert.equal(parsed.mount['open_handles'], 7);
    assert.equal(parsed.mount['volumes'], 2);
    assert.equal(parsed.volumes['mount']!['writes'], 3);
    assert.equal(parsed.volumes['mount']!['size'], 4096);
    assert.equal(parsed.volumes['volumes']!['writes'], 4);
  });
});
