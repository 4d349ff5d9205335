/**
 * Encryption at rest through the command line a user runs: `vbfs create --encrypt
 * --key-file/--key-env`, `vbfs mount` with and without the key, ext4 on a loop
 * device over an encrypted volume, `vbfs fsck` with and without the key. Then every
 * file of the store is searched for the written pattern and for the key (raw and
 * hex): neither may appear. Real FUSE mounts through bin/vbfs.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupUnder, isMounted, loopsUnder, must, requireFuse, sha256, tmpDir, vbfs, waitFor, verifyExt4OnLoop } from './helpers/fuse-env';

const MiB = 1024 * 1024;

/** Every regular file under `dir`, with its mode; directories with theirs. */
async function walk(dir: string): Promise<Array<{ path: string; mode: number; dir: boolean }>> {
  const st = await fsp.lstat(dir);
  const out = [{ path: dir, mode: st.mode & 0o7777, dir: st.isDirectory() }];
  if (st.isDirectory()) for (const n of await fsp.readdir(dir)) out.push(...(await walk(path.join(dir, n))));
  return out;
}

/** The files under `dir` whose bytes contain `needle`. */
async function filesContaining(dir: string, needle: Buffer): Promise<string[]> {
  const hits: string[] = [];
  for (const e of await walk(dir)) {
    if (e.dir) continue;
    const buf = await fsp.readFile(e.path);
    if (buf.indexOf(needle) >= 0) hits.push(path.relative(dir, e.path));
  }
  return hits;
}

/** `count` copies of a recognisable 32-byte line. */
function pattern(count: number): Buffer {
  const line = Buffer.from('vbfs-plaintext-canary-0123456789\n');
  return Buffer.concat(Array.from({ length: count }, () => line));
}

describe('FUSE CLI encryption: create --encrypt, mount with the key, nothing readable in the store', function () {
  this.timeout(300_000);
  let root = '';
  let store = '';
  let mnt = '';
  let ext = '';
  let keyFile = '';
  let key = Buffer.alloc(0);
  const mounts: string[] = [];

  before(async function () {
    requireFuse(this);
    root = await tmpDir('cli-enc');
    store = path.join(root, 'store');
    mnt = path.join(root, 'mnt');
    ext = path.join(root, 'ext');
    await fsp.mkdir(mnt);
    await fsp.mkdir(ext);
    mounts.push(mnt);
    key = randomBytes(32);
    keyFile = path.join(root, 'volume.key');
    await fsp.writeFile(keyFile, key, { mode: 0o600 });
  });

  after(async () => {
    if (!root) return;
    await cleanupUnder(root, mounts, [ext], store);
    await fsp.rm(root, { recursive: true, force: true });
  });

  const mount = async (extra: string[]): Promise<void> => {
    const r = await vbfs(['mount', mnt, '--daemon', ...extra], store);
    assert.equal(r.code, 0, `mount failed: ${r.stdout}${r.stderr}`);
  };
  const unmount = async (): Promise<void> => {
    const r = await vbfs(['unmount', mnt], store);
    assert.equal(r.code, 0, `unmount failed: ${r.stdout}${r.stderr}`);
  };

  it('create: --encrypt needs a key, a key needs --encrypt (exit 2); with both, info and list say encrypted', async () => {
    let r = await vbfs(['create', 'sec', '--size', '256M', '--encrypt'], store);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--key-file/);
    r = await vbfs(['create', 'sec', '--size', '256M', '--key-file', keyFile], store);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--encrypt/);
    r = await vbfs(['create', 'sec', '--size', '256M', '--encrypt', '--key-file', path.join(root, 'missing.key')], store);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /missing\.key/);

    r = await vbfs(['create', 'sec', '--size', '256M', '--encrypt', '--key-file', keyFile], store);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /encrypted \(aes-256-gcm, raw 256-bit key\)/);
    r = await vbfs(['create', 'plain', '--size', '64M'], store);
    assert.equal(r.code, 0, r.stderr);

    r = await vbfs(['info', 'sec', '--json'], store);
    assert.equal(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout) as { encrypted: boolean; encryption: { kdf: string; keyCheck: string } };
    assert.equal(info.encrypted, true);
    assert.equal(info.encryption.kdf, 'none');
    assert.ok(!r.stdout.includes(key.toString('hex')), 'info shows the key');
    r = await vbfs(['list'], store);
    assert.match(r.stdout, /^sec\s.*\byes\b/m);
    assert.match(r.stdout, /^plain\s.*\bno\b/m);
  });

  it('ext4 on a loop device over the encrypted volume: remount with the key, fsck.ext4 clean, same files', async () => {
    await mount(['--key-file', keyFile]);
    const disk = path.join(mnt, 'sec');
    const loop = (await must('losetup', ['-f', '--show', disk])).trim();
    const sums = new Map<string, string>();
    try {
      await must('mkfs.ext4', ['-q', '-F', loop]);
      await must('mount', [loop, ext]);
      try {
        for (let f = 0; f < 12; f++) {
          const data = f === 0 ? pattern(64 * 1024) : randomBytes(1 + ((f * 104729) % (512 * 1024)));
          await fsp.writeFile(path.join(ext, `file${f}`), data);
          sums.set(`file${f}`, sha256(data));
        }
      } finally {
        await must('umount', [ext]);
      }
    } finally {
      await must('losetup', ['-d', loop]); // before the FUSE unmount, never after
      await waitFor('loop device to detach', async () => (await loopsUnder(mnt)).length === 0, 10_000);
    }
    // The plain volume next to it gets the same canary: it must show up there (the search works).
    const fh = await fsp.open(path.join(mnt, 'plain'), 'r+');
    try {
      await fh.write(pattern(1024), 0, 32 * 1024, 4 * MiB);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await unmount();

    await mount(['--key-file', keyFile]);
    await verifyExt4OnLoop(disk, ext, mnt, sums);
    await unmount();
  });

  it('no file of the store holds the written pattern or the key; every file 0600, every directory 0700', async () => {
    const canary = pattern(4);
    const ids = JSON.parse((await vbfs(['list', '--json'], store)).stdout) as Array<{ name: string; id: string }>;
    const plainId = ids.find((v) => v.name === 'plain')!.id;
    const hits = await filesContaining(store, canary);
    assert.ok(hits.length > 0, 'the canary written to the plain volume was not found: the search finds nothing');
    assert.deepEqual(
      hits.filter((h) => !h.includes(plainId) && !h.startsWith(path.join('volumes', 'plain') + path.sep)),
      [],
      'plaintext of the encrypted volume in the store',
    );
    for (const needle of [key, Buffer.from(key.toString('hex')), Buffer.from(key.toString('base64'))]) {
      assert.deepEqual(await filesContaining(store, needle), [], 'the key is in the store');
    }
    const loose = (await walk(store)).filter((e) => e.mode !== (e.dir ? 0o700 : 0o600)).map((e) => `${e.path} ${e.mode.toString(8)}`);
    assert.deepEqual(loose, []);
  });

  it('mount without the key serves the other volumes and not the encrypted one; a wrong key is refused (exit 1, no mount)', async () => {
    await mount([]);
    try {
      const names = (await fsp.readdir(mnt)).filter((n) => !n.startsWith('.'));
      assert.deepEqual(names.sort(), ['plain']);
      const log = await fsp.readFile(path.join(store, 'mount.log'), 'utf8');
      assert.match(log, /volume sec is encrypted and not served/);
    } finally {
      await unmount();
    }
    const wrong = path.join(root, 'wrong.key');
    await fsp.writeFile(wrong, randomBytes(32));
    const r = await vbfs(['mount', mnt, '--daemon', '--key-file', wrong], store);
    assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /opens none of the encrypted volumes \(sec\)/);
    assert.equal(await isMounted(mnt), false);
  });

  it('vbfs fsck: with the key every record is authenticated; without it CRCs only; a wrong key exits 1', async () => {
    let r = await vbfs(['fsck', 'sec', '--key-file', keyFile, '--json'], store);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    const rep = JSON.parse(r.stdout) as { clean: boolean; encrypted: boolean; authenticated: boolean; checkedRecords: number };
    assert.deepEqual([rep.clean, rep.encrypted, rep.authenticated], [true, true, true]);
    assert.ok(rep.checkedRecords > 0);
    r = await vbfs(['fsck', 'sec'], store);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /CRCs checked only/);
    const wrong = path.join(root, 'wrong.key');
    r = await vbfs(['fsck', 'sec', '--key-file', wrong], store);
    assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
  });

  it('--key-env with a passphrase: create, mount from fstab-style -o key_env=NAME, write, read back', async () => {
    const env = { ...process.env, VBFS_TEST_PASSPHRASE: 'correct horse battery staple' };
    let r = await vbfs(['create', 'pass', '--size', '16M', '--encrypt', '--key-env', 'VBFS_TEST_PASSPHRASE'], store, { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /passphrase via scrypt/);
    // The mount(8) form: `vbfs <store> <mountpoint> -o key_env=NAME` (a daemon, quiet).
    r = await vbfs([store, mnt, '-o', 'key_env=VBFS_TEST_PASSPHRASE'], store, { env });
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    try {
      const data = randomBytes(256 * 1024);
      const fh = await fsp.open(path.join(mnt, 'pass'), 'r+');
      try {
        await fh.write(data, 0, data.length, MiB);
        await fh.sync();
        const back = Buffer.alloc(data.length);
        await fh.read(back, 0, back.length, MiB);
        assert.ok(back.equals(data));
      } finally {
        await fh.close();
      }
      // The sec volume takes another key: not served by this mount.
      assert.deepEqual((await fsp.readdir(mnt)).filter((n) => !n.startsWith('.')).sort(), ['pass', 'plain']);
    } finally {
      await unmount();
    }
    r = await vbfs(['fsck', 'pass', '--key-env', 'VBFS_TEST_PASSPHRASE'], store, { env: { ...process.env, VBFS_TEST_PASSPHRASE: 'wrong horse' } });
    assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
  });
});
