import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as nodePath from 'node:path';
import type { FileHandle, FileIO, FileStat, OpenMode } from './file-io';
import { ioError } from '../errors';
import { createdDirs, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from './private-mode';

const FLAGS: Record<OpenMode, string> = { r: 'r', 'r+': 'r+', wx: 'wx+', 'w+': 'w+' };

class NodeFileHandle implements FileHandle {
  constructor(
    readonly path: string,
    private readonly fd: number,
  ) {}

  write(buf: Uint8Array, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const step = (off: number): void => {
        fs.write(this.fd, buf, off, buf.length - off, position + off, (err, n) => {
          if (err) return reject(ioError(`write ${this.path}`, err, { path: this.path }));
          if (off + n < buf.length) return step(off + n);
          resolve();
        });
      };
      step(0);
    });
  }

  writeSync(buf: Uint8Array, position: number): void {
    try {
      for (let off = 0; off < buf.length;) off += fs.writeSync(this.fd, buf, off, buf.length - off, position + off);
    } catch (err) {
      throw ioError(`write ${this.path}`, err, { path: this.path });
    }
  }

  writev(bufs: readonly Uint8Array[], position: number): Promise<void> {
    const total = bufs.reduce((s, b) => s + b.length, 0);
    return new Promise((resolve, reject) => {
      fs.writev(this.fd, bufs as Uint8Array[], position, (err, n) => {
        if (err) return reject(ioError(`writev ${this.path}`, err, { path: this.path }));
        if (n === total) return resolve();
        // Short gather write (rare): finish the rest with plain writes.
        const rest = Buffer.concat(bufs).subarray(n);
        this.write(rest, position + n).then(resolve, reject);
      });
    });
  }

  read(buf: Uint8Array, position: number): Promise<number> {
    return new Promise((resolve, reject) => {
      let got = 0;
      const step = (): void => {
        fs.read(this.fd, buf, got, buf.length - got, position + got, (err, n) => {
          if (err) return reject(ioError(`read ${this.path}`, err, { path: this.path }));
          got += n;
          if (n === 0 || got >= buf.length) return resolve(got);
          step();
        });
      };
      step();
    });
  }

  datasync(): Promise<void> {
    return new Promise((resolve, reject) =>
      fs.fdatasync(this.fd, (err) => (err ? reject(ioError(`fdatasync ${this.path}`, err, { path: this.path })) : resolve())),
    );
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fsync(this.fd, (err) => (err ? reject(ioError(`fsync ${this.path}`, err, { path: this.path })) : resolve())));
  }

  truncate(length: number): Promise<void> {
    return new Promise((resolve, reject) =>
      fs.ftruncate(this.fd, length, (err) => (err ? reject(ioError(`truncate ${this.path}`, err, { path: this.path })) : resolve())),
    );
  }

  size(): Promise<number> {
    return new Promise((resolve, reject) =>
      fs.fstat(this.fd, (err, st) => (err ? reject(ioError(`stat ${this.path}`, err, { path: this.path })) : resolve(st.size))),
    );
  }

  close(): Promise<void> {
    return new Promise((resolve, reject) => fs.close(this.fd, (err) => (err ? reject(ioError(`close ${this.path}`, err, { path: this.path })) : resolve())));
  }
}

/** The real file layer: plain POSIX calls through node:fs. */
export class NodeFileIO implements FileIO {
  async open(path: string, mode: OpenMode): Promise<FileHandle> {
    try {
      // Created 0600 in the open itself (private from the first instant), then set
      // to exactly 0600 whatever the umask (see private-mode.ts).
      const fd = await new Promise<number>((resolve, reject) => fs.open(path, FLAGS[mode], PRIVATE_FILE_MODE, (err, fd) => (err ? reject(err) : resolve(fd))));
      if (mode === 'wx' || mode === 'w+') {
        await new Promise<void>((resolve, reject) => fs.fchmod(fd, PRIVATE_FILE_MODE, (err) => (err ? fs.close(fd, () => reject(err)) : resolve())));
      }
      return new NodeFileHandle(path, fd);
    } catch (err) {
      throw ioError(`open ${path}`, err, { path });
    }
  }

  async readFile(path: string): Promise<Buffer> {
    try {
      return await fsp.readFile(path);
    } catch (err) {
      throw ioError(`read ${path}`, err, { path });
    }
  }

  async rename(from: string, to: string): Promise<void> {
    try {
      await fsp.rename(from, to);
    } catch (err) {
      throw ioError(`rename ${from} -> ${to}`, err, { path: from });
    }
  }

  async link(from: string, to: string): Promise<void> {
    try {
      await fsp.link(from, to);
    } catch (err) {
      throw ioError(`link ${from} -> ${to}`, err, { path: to });
    }
  }

  async unlink(path: string): Promise<void> {
    try {
      await fsp.unlink(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw ioError(`unlink ${path}`, err, { path });
    }
  }

  async mkdir(path: string): Promise<void> {
    try {
      const first = await fsp.mkdir(path, { recursive: true, mode: PRIVATE_DIR_MODE });
      // Only what this call created is set to 0700; existing directories keep their mode.
      if (first !== undefined) {
        for (const d of createdDirs(first, path)) await fsp.chmod(d, PRIVATE_DIR_MODE);
      }
    } catch (err) {
      throw ioError(`mkdir ${path}`, await mkdirCause(path, err), { path });
    }
  }

  async rmdir(path: string): Promise<void> {
    try {
      await fsp.rm(path, { recursive: true, force: true });
    } catch (err) {
      throw ioError(`remove ${path}`, err, { path });
    }
  }

  async readdir(path: string): Promise<string[]> {
    try {
      return (await fsp.readdir(path)).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw ioError(`readdir ${path}`, err, { path });
    }
  }

  async stat(path: string): Promise<FileStat | null> {
    try {
      const st = await fsp.stat(path);
      return { size: st.size, isDirectory: st.isDirectory(), mtimeMs: st.mtimeMs, mode: st.mode & 0o7777 };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(`stat ${path}`, err, { path });
    }
  }

  async fsyncDir(path: string): Promise<void> {
    let fd: number | undefined;
    try {
      fd = fs.openSync(path, 'r');
      await new Promise<void>((resolve, reject) => fs.fsync(fd as number, (err) => (err ? reject(err) : resolve())));
    } catch (err) {
      throw ioError(`fsync directory ${path}`, err, { path });
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
}

/**
 * Node's recursive mkdir reports ENOENT when a parent cannot be created (on a
 * read-only filesystem, say): make the first missing level ourselves to get the
 * real reason (EROFS, EACCES, ENOSPC ...).
 */
async function mkdirCause(path: string, err: unknown): Promise<unknown> {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return err;
  let missing = path;
  for (let up = nodePath.dirname(missing); up !== missing && !fs.existsSync(up); up = nodePath.dirname(up)) missing = up;
  try {
    await fsp.mkdir(missing);
    await fsp.rmdir(missing);
  } catch (real) {
    return real;
  }
  return err;
}
