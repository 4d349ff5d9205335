/** What fuse-native hands to our handlers and expects back (the engine's side is store/ports.ts). */

/** The callback shapes (see node_modules/fuse-native/index.js). */
export type ErrCb = (err: number) => void;
export type ValueCb<T> = (err: number, value?: T) => void;

export interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  blocks: number;
  blksize: number;
  mtime: Date;
  atime: Date;
  ctime: Date;
}

export interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

export interface FuseOps {
  init(cb: ErrCb): void;
  getattr(path: string, cb: ValueCb<FuseStat>): void;
  fgetattr(path: string, fd: number, cb: ValueCb<FuseStat>): void;
  readdir(path: string, cb: (err: number, names?: string[]) => void): void;
  statfs(path: string, cb: ValueCb<FuseStatfs>): void;
  open(path: string, flags: number, cb: ValueCb<number>): void;
  release(path: string, fd: number, cb: ErrCb): void;
  read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: ErrCb): void;
  write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: ErrCb): void;
  flush(path: string, fd: number, cb: ErrCb): void;
  fsync(path: string, datasync: number, fd: number, cb: ErrCb): void;
  truncate(path: string, size: number, cb: ErrCb): void;
  ftruncate(path: string, fd: number, size: number, cb: ErrCb): void;
  utimens(path: string, atime: number, mtime: number, cb: ErrCb): void;
  chmod(path: string, mode: number, cb: ErrCb): void;
  chown(path: string, uid: number, gid: number, cb: ErrCb): void;
  create(path: string, mode: number, cb: ValueCb<number>): void;
  unlink(path: string, cb: ErrCb): void;
  rename(src: string, dest: string, cb: ErrCb): void;
  mkdir(path: string, mode: number, cb: ErrCb): void;
  /** Only with the fuse-native patch (scripts/fuse-native-fallocate.js): Fuse.supportsFallocate. */
  fallocate?(path: string, mode: number, offset: number, length: number, fd: number, cb: ErrCb): void;
}
