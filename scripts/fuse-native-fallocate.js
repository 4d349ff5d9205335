#!/usr/bin/env node
/*
 * postinstall: give fuse-native 2.2.6 the FUSE `fallocate` operation, so that TRIM
 * from a loop-mounted filesystem (fstrim, mount -o discard, blkdiscard) reaches vbfs.
 *
 * libfuse 2.9 has the operation; fuse-native 2.2.6 does not bind it, and its
 * prebuilt binary cannot be taught it. This script applies patches/fuse-native+2.2.6.patch
 * (about 40 lines of C and JS: one more opcode, free in the 35-entry handler table)
 * to the installed package and rebuilds the addon from its bundled sources with
 * node-gyp, against the libfuse headers fuse-native already ships (a few seconds).
 * node-gyp-build then loads build/Release/fuse.node ahead of the prebuilt binary.
 *
 * Nothing here may fail an install: if patching or building fails, the sources are
 * restored, the prebuilt binary stays in use, and one warning says that discard is
 * unavailable (vbfs answers fallocate with EOPNOTSUPP, as before). Set
 * VBFS_SKIP_FUSE_PATCH=1 to skip it on purpose. Idempotent: a second run sees the
 * patched build and does nothing.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const VERSION = '2.2.6';
const PATCH = path.join(__dirname, '..', 'patches', `fuse-native+${VERSION}.patch`);
const MARK = 'vbfs patch: fallocate';

function warn(why) {
  process.stderr.write(`vbfs: discard (TRIM) through the mount is unavailable: ${why}\n`);
  process.stderr.write('vbfs: fuse-native keeps its prebuilt binary; everything else works. See README "Dependencies".\n');
}

function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, NODE_PATH: nodePath(cwd) } });
  const out = `${r.stdout || ''}${r.stderr || ''}`.trim();
  if (r.error) return { ok: false, out: r.error.message };
  return { ok: r.status === 0, out };
}

/** node_modules directories above fuse-native, so the build's `require('napi-macros')` resolves when hoisted. */
function nodePath(dir) {
  const dirs = [];
  for (let d = dir; d !== path.dirname(d); d = path.dirname(d)) if (path.basename(d) === 'node_modules') dirs.push(d);
  return [...dirs, process.env.NODE_PATH].filter(Boolean).join(path.delimiter);
}

function nodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && fs.existsSync(fromNpm)) return fromNpm;
  const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return fs.existsSync(bundled) ? bundled : null;
}

/** Where this node's headers are, so node-gyp needs no download (the network may be closed). */
function nodeDir() {
  const root = path.resolve(path.dirname(process.execPath), '..');
  return fs.existsSync(path.join(root, 'include', 'node', 'node_api.h')) ? root : null;
}

function builtWithFallocate(dir) {
  const bin = path.join(dir, 'build', 'Release', 'fuse.node');
  if (!fs.existsSync(bin)) return false;
  const r = spawnSync(process.execPath, ['-e', `process.stdout.write(String(require(${JSON.stringify(bin)}).op_fallocate))`], { encoding: 'utf8' });
  return r.status === 0 && r.stdout === '34';
}

function main() {
  if (process.env.VBFS_SKIP_FUSE_PATCH === '1') return warn('VBFS_SKIP_FUSE_PATCH=1');
  let dir;
  try {
    dir = path.dirname(require.resolve('fuse-native/package.json', { paths: [path.join(__dirname, '..')] }));
  } catch {
    return warn('fuse-native is not installed');
  }
  const version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  if (version !== VERSION) return warn(`the patch is for fuse-native ${VERSION}, found ${version}`);
  const patched = fs.readFileSync(path.join(dir, 'fuse-native.c'), 'utf8').includes(MARK);
  if (patched && builtWithFallocate(dir)) return;

  if (!patched) {
    const dry = run('patch', ['-p1', '--forward', '--dry-run', '-i', PATCH], dir);
    if (!dry.ok) return warn(`patch does not apply (${dry.out.split('\n')[0] || 'is the patch command installed?'})`);
    const applied = run('patch', ['-p1', '--forward', '-i', PATCH], dir);
    if (!applied.ok) return warn(`patch failed: ${applied.out.split('\n')[0]}`);
  }
  const gyp = nodeGyp();
  const args = ['rebuild'];
  const nd = nodeDir();
  if (nd) args.push(`--nodedir=${nd}`);
  const built = gyp ? run(process.execPath, [gyp, ...args], dir) : { ok: false, out: 'node-gyp not found (npm bundles it)' };
  if (built.ok && builtWithFallocate(dir)) {
    process.stderr.write('vbfs: fuse-native rebuilt with fallocate (discard through the mount enabled)\n');
    return;
  }
  // Back to the package as published: the prebuilt binary and its own sources.
  run('patch', ['-p1', '--reverse', '-i', PATCH], dir);
  fs.rmSync(path.join(dir, 'build'), { recursive: true, force: true });
  const lines = built.out.split('\n').filter((l) => /error|not found|ERR!/i.test(l));
  warn(`building fuse-native failed: ${(lines[0] || built.out.split('\n').pop() || 'unknown').trim()} (needs make, a C compiler and python3)`);
}

main();
