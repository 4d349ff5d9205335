/**
 * The package as a user gets it. The checkout's files (what a fresh clone holds: no
 * dist/) are copied aside and packed there, so `prepack` must build everything the
 * tarball needs from scratch; the tarball is then installed from the registry into an
 * empty directory with `npm install <tgz>`, and the installed CLI and library run.
 *
 * Slow (a TypeScript build and a real install of every dependency): about a minute
 * on an idle machine.
 */
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { REPO, tmpDir } from './helpers/fuse-env';

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

// npm passes its own settings to scripts as npm_config_* / npm_package_*; when this
// runs under `npm test`, they would describe the checkout, not the directories here.
// Under `npm run coverage`, tsc and npm themselves need no coverage files.
const childEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([k]) => !/^npm_(config_(local_prefix|prefix|global)|package_|lifecycle_)/i.test(k) && k !== 'INIT_CWD' && k !== 'NODE_V8_COVERAGE',
  ),
);

function sh(cmd: string, args: string[], cwd: string, timeoutMs = 600_000): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, env: childEnv, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function must(cmd: string, args: string[], cwd: string, timeoutMs?: number): Promise<Ran> {
  const r = await sh(cmd, args, cwd, timeoutMs);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} in ${cwd} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

describe('npm pack: the tarball installs and runs', function () {
  this.timeout(20 * 60_000);
  let root = '';
  let app = '';
  let packed: { filename: string; files: Array<{ path: string }> } | undefined;
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };

  before(async function () {
    root = await tmpDir('pack');
    const checkout = path.join(root, 'checkout');
    // Tracked files plus new ones not ignored: a clone of this tree once committed.
    const listed = await must('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], REPO);
    for (const rel of listed.stdout.split('\0')) {
      if (rel === '' || rel === 'node_modules' || rel.startsWith('node_modules/')) continue;
      const src = path.join(REPO, rel);
      if (!fs.existsSync(src)) continue; // deleted in the working tree, not yet committed
      await fsp.mkdir(path.dirname(path.join(checkout, rel)), { recursive: true });
      await fsp.copyFile(src, path.join(checkout, rel));
    }
    // The build tools, without an install: prepack needs typescript.
    await fsp.symlink(path.join(REPO, 'node_modules'), path.join(checkout, 'node_modules'));
    assert.ok(!fs.existsSync(path.join(checkout, 'dist')), 'the copy starts without dist/');

    const out = path.join(root, 'out');
    await fsp.mkdir(out);
    const pack = await must('npm', ['pack', '--json', '--pack-destination', out], checkout);
    const json = JSON.parse(pack.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
    packed = json[0];
    assert.ok(packed, `npm pack --json printed no package:\n${pack.stdout}`);

    app = path.join(root, 'app');
    await fsp.mkdir(app);
    await must('npm', ['install', '--no-audit', '--no-fund', path.join(out, packed.filename)], app);
  });

  after(async () => {
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  it('holds the built library, its types, the CLI, LICENSE and CHANGELOG, and no tests, TypeScript sources or source maps', () => {
    assert.ok(packed);
    const files = new Set(packed.files.map((f) => f.path));
    for (const f of [
      'package.json',
      'README.md',
      'LICENSE',
      'CHANGELOG.md',
      'bin/vbfs',
      'dist/src/index.js',
      'dist/src/index.d.ts',
      'dist/src/cli/main.js',
      'scripts/fuse-native-fallocate.js',
      'patches/fuse-native+2.2.6.patch',
    ]) {
      assert.ok(files.has(f), `${f} is missing from the tarball`);
    }
    const stray = [...files].filter(
      (f) => f.startsWith('test/') || f.startsWith('dist/test/') || f.endsWith('.map') || (f.endsWith('.ts') && !f.endsWith('.d.ts')),
    );
    assert.deepEqual(stray, []);
  });

  it('npx vbfs --version prints the package version', async () => {
    const r = await must('npx', ['vbfs', '--version'], app);
    assert.equal(r.stdout.trim(), pkg.version);
  });

  it('npx vbfs --help lists the commands', async () => {
    const r = await must('npx', ['vbfs', '--help'], app);
    for (const cmd of ['create', 'list', 'mount', 'unmount', 'fsck']) assert.match(r.stdout, new RegExp(`vbfs ${cmd}\\b`));
  });

  it("require('vbfs') gives the library: a volume written, fsynced, reopened and read back", async () => {
    const script = `
      const { Store, isVbfsError } = require('vbfs');
      const assert = require('node:assert/strict');
      (async () => {
        const store = await Store.open(process.argv[1]);
        await store.createVolume('v', { size: 1 << 20 });
        let vol = await store.openVolume('v');
        await vol.write(4097, Buffer.from('packed'));
        await vol.fsync();
        await vol.close();
        vol = await store.openVolume('v');
        assert.equal((await vol.read(4097, 6)).toString(), 'packed');
        await vol.close();
        await store.openVolume('nope').catch((e) => assert.ok(isVbfsError(e, 'VBFS_NOT_FOUND')));
        await store.close();
        process.stdout.write(require('vbfs/package.json').version);
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const storeDir = path.join(root, 'store');
    const r = await must(process.execPath, ['-e', script, storeDir], app);
    assert.equal(r.stdout, pkg.version);
  });

  it("loads fuse-native: rebuilt with fallocate by vbfs's postinstall, or its prebuilt addon when install scripts are blocked", async function () {
    if (process.platform !== 'linux' || process.arch !== 'x64') this.skip();
    // npm 11 runs unreviewed install scripts of dependencies (fuse-native's
    // node-gyp-build, vbfs's postinstall) with a warning. vbfs's postinstall patches
    // fuse-native and rebuilds it with fallocate (scripts/fuse-native-fallocate.js);
    // with scripts blocked (`npm install-scripts deny`, or a future default) the
    // prebuilt addon still loads and only discard is missing.
    const fuseDir = path.join(app, 'node_modules', 'fuse-native');
    assert.ok(fs.existsSync(path.join(fuseDir, 'prebuilds', 'linux-x64', 'node.napi.node')), 'fuse-native ships no linux-x64 prebuild');
    const built = fs.existsSync(path.join(fuseDir, 'build', 'Release', 'fuse.node'));
    const r = await must(process.execPath, ['-e', "const F = require('fuse-native'); process.stdout.write(typeof F + ' ' + F.supportsFallocate)"], app);
    assert.equal(r.stdout, built ? 'function true' : 'function undefined');
    // This machine has make, a compiler and python3: here the rebuild must have happened.
    if (process.env['CI'] === 'true') assert.ok(built, 'the postinstall did not rebuild fuse-native with fallocate');
  });
});
