/**
 * What the FUSE mount needs from the host beyond os/: libfuse's prerequisites, and
 * whether this process still holds its FUSE connection. The mount table, loop
 * devices and unmount helpers, which the CLI uses too, are in os/mounts.ts.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VbfsError } from '../errors';
import { commandExists } from '../os/mounts';

/**
 * Does this process still hold a FUSE connection (an open /dev/fuse)? libfuse closes
 * it only when the kernel has released the connection (a read returned ENODEV):
 * after a lazy unmount by someone else that happens once the last user (an open
 * file, a loop device) lets go, not when the mount leaves the mount table.
 */
export async function holdsFuseConnection(fdDir = '/proc/self/fd'): Promise<boolean> {
  let fds: string[];
  try {
    fds = await fsp.readdir(fdDir);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      if ((await fsp.readlink(path.join(fdDir, fd))) === '/dev/fuse') return true;
    } catch {
      // closed while we looked
    }
  }
  return false;
}

/** Same checks libfuse would fail on, turned into one line naming the package. */
export function checkFuseAvailable(): void {
  if (process.platform !== 'linux') {
    throw new VbfsError('VBFS_IO', `vbfs mount supports Linux only (this is ${process.platform})`);
  }
  if (!fs.existsSync('/dev/fuse')) {
    throw new VbfsError(
      'VBFS_IO',
      '/dev/fuse is missing: load the kernel module (modprobe fuse) or, in a container, pass --device /dev/fuse --cap-add SYS_ADMIN',
    );
  }
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  // libfuse2 mounts through the setuid helper fusermount unless we are root.
  if (!isRoot && !commandExists('fusermount')) {
    throw new VbfsError('VBFS_IO', "fusermount not found: install the Debian package 'fuse' (apt-get install fuse)");
  }
}
