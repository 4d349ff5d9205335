import * as path from 'node:path';
import type { FileHandle, FileIO, FileStat, OpenMode } from '../../src/io/file-io';
import { ioError } from '../../src/errors';
import { Rng } from './rng';

/**
 * SimFS: an in-memory FileIO that simulates power loss, for crash tests.
 *
 * The model is the POSIX durability contract file-io.ts states, taken literally
 * (stricter than ext4 in data=ordered mode, which is the point):
 *  - Files are inodes. Each holds its current (volatile) content and its durable
 *    content; write/writev/truncate change the volatile content and are queued as
 *    "unsynced ops"; datasync()/sync() of a handle makes that file's content durable.
 *  - Directories hold volatile entries and durable entries (name -> inode).
 *    open-create, rename, unlink, mkdir and rmdir change the volatile entries only;
 *    fsyncDir(dir) makes that directory's current entries durable. A file's own
 *    fsync does not make its directory entry durable.
 *  - After a crash, afterCrash(rng, mode) builds what a reboot would find: the durable
 *    namespace from the root down, each file with its durable content plus what the
 *    TearMode lets survive of its unsynced ops:
 *    'random' (the default): nothing more, or its first unsynced ops in order with
 *    the next one torn (a prefix of a write; where the write extended the file,
 *    optionally zeros instead of the real bytes, like a size update that hit the disk
 *    before the data). Never a hole followed by later data.
 *    'reorder': what a real disk can show after a power cut. Writeback sends dirty
 *    pages in any order and a page write can be torn, so every page (PAGE_BYTES of
 *    file offsets) of every unsynced write survives whole, as a prefix, or not at all,
 *    each independently: holes followed by later data, and stale old bytes (or zeros
 *    where the write extended the file) next to new ones. The file size is anything
 *    between the durable and the volatile size (the size update and the data reach
 *    the disk independently). Synced bytes never change; every byte is one that was
 *    written there at some time, or a zero.
 *
 * It counts every operation per kind and per path, and crashes on a plan:
 * crashAt(n) (the n-th mutating op, see mutatingOps), crashWhen(predicate),
 * crashAtFailpoint(name, nth) for the engine's named failpoints (wire `sim.hit`
 * into the store's `failpoint` option), or crashNow(). From the crash on, the
 * crashing op and every later one (on this SimFS) throw CrashError; the state is frozen.
 */

export type OpKind =
  | 'open'
  | 'read'
  | 'write'
  | 'writev'
  | 'datasync'
  | 'sync'
  | 'truncate'
  | 'size'
  | 'close'
  | 'readFile'
  | 'rename'
  | 'link'
  | 'unlink'
  | 'mkdir'
  | 'rmdir'
  | 'readdir'
  | 'stat'
  | 'fsyncDir';

export interface OpInfo {
  /** 1-based number of this op among all ops on this SimFS. */
  n: number;
  /** 1-based number among mutating ops (those that can change what survives a crash), or 0. */
  m: number;
  kind: OpKind;
  path: string;
  /** For open: the mode. */
  mode?: OpenMode;
}

export class CrashError extends Error {
  constructor(readonly op: string) {
    super(`simulated crash (${op})`);
    this.name = 'CrashError';
  }
}

/** True when err is a CrashError or wraps one (the engine may wrap it in a VbfsError). */
export function isCrash(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 10; depth++) {
    if (e instanceof CrashError) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** What survives of a file's unsynced ops in afterCrash(). */
export type TearMode =
  | 'random' // per file: nothing, or some unsynced ops in order with the next one torn
  | 'reorder' // per page of every unsynced write: whole, a prefix, or nothing; any size in between
  | 'none' // only durable content survives
  | 'all'; // every unsynced op survives whole (only the namespace is lost)

/** Writeback granularity of the 'reorder' mode: file offsets are cut into pages of this size. */
export const PAGE_BYTES = 4096;

type PendingOp = { kind: 'write'; off: number; data: Buffer } | { kind: 'truncate'; len: number };

/**
 * A growable byte array: file content without copying the whole file per write.
 * Bytes from `filled` to `len` are zeros and take no memory: a WAL segment zero-filled
 * to its full size (64 MiB by default) costs nothing until records land in it, and is
 * not copied at every crash or reopen.
 */
class Bytes {
  constructor(
    private buf: Buffer = Buffer.alloc(0),
    public len = 0,
    private filled = Math.min(len, buf.length),
  ) {}

  write(off: number, src: Uint8Array): void {
    const end = off + src.length;
    if (off >= this.filled && isAllZero(src)) {
      if (end > this.len) this.len = end;
      return;
    }
    this.reserve(end);
    if (off > this.filled) this.buf.fill(0, this.filled, off);
    this.buf.set(src, off);
    if (end > this.filled) this.filled = end;
    if (end > this.len) this.len = end;
  }

  truncate(n: number): void {
    // Bytes past the old length read as zeros: they are in the unfilled range.
    if (n < this.filled) this.filled = n;
    this.len = n;
  }

  read(dst: Uint8Array, off: number): number {
    if (off >= this.len) return 0;
    const n = Math.min(dst.length, this.len - off);
    const fromBuf = Math.max(0, Math.min(n, this.filled - off));
    if (fromBuf > 0) dst.set(this.buf.subarray(off, off + fromBuf));
    dst.fill(0, fromBuf, n);
    return n;
  }

  /** The whole content, made real (zeros written out). */
  view(): Buffer {
    this.reserve(this.len);
    this.buf.fill(0, this.filled, this.len);
    this.filled = this.len;
    return this.buf.subarray(0, this.len);
  }

  /** A copy of the content (the zeros too), leaving this one sparse. */
  copy(): Buffer {
    const out = Buffer.alloc(this.len);
    this.read(out, 0);
    return out;
  }

  /** Flip bits of one byte (test corruption). */
  flip(off: number, mask: number): void {
    this.view();
    this.buf[off] = (this.buf[off] ?? 0) ^ mask;
  }

  clone(): Bytes {
    return new Bytes(Buffer.from(this.buf.subarray(0, this.filled)), this.len, this.filled);
  }

  private reserve(n: number): void {
    if (n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(n, this.buf.length * 2, 4096));
    next.set(this.buf.subarray(0, this.filled));
    this.buf = next;
  }
}

const ZEROS = Buffer.alloc(65536);

function isAllZero(src: Uint8Array): boolean {
  const b = Buffer.from(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < b.length; i += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - i);
    if (b.compare(ZEROS, 0, n, i, i + n) !== 0) return false;
  }
  return true;
}

function apply(target: Bytes, op: PendingOp): void {
  if (op.kind === 'write') target.write(op.off, op.data);
  else target.truncate(op.len);
}

class FileNode {
  readonly type = 'file';
  data = new Bytes();
  durable = new Bytes();
  pending: PendingOp[] = [];

  change(op: PendingOp): void {
    apply(this.data, op);
    this.pending.push(op);
  }

  sync(): void {
    for (const op of this.pending) apply(this.durable, op);
    this.pending = [];
  }
}

class DirNode {
  readonly type = 'dir';
  entries = new Map<string, Node>();
  durableEntries = new Map<string, Node>();

  sync(): void {
    this.durableEntries = new Map(this.entries);
  }
}

type Node = FileNode | DirNode;

const MUTATING = new Set<OpKind>(['write', 'writev', 'datasync', 'sync', 'truncate', 'rename', 'link', 'unlink', 'mkdir', 'rmdir', 'fsyncDir']);

function fsError(code: string, what: string, p: string): never {
  const err = Object.assign(new Error(`${code}: ${what} '${p}'`), { code });
  throw ioError(`${what} ${p}`, err, { path: p });
}

export interface SimFSOptions {
  /** Yield to the event loop (setImmediate) inside every op, like real async I/O. Default true. */
  yieldEachOp?: boolean;
}

export class SimFS implements FileIO {
  private root = new DirNode();
  private crashPlan: {
    atMutating?: number;
    when?: (op: OpInfo) => boolean;
    failpoint?: { name: string; nth: number };
  } = {};
  private failPlan: { pred: (op: OpInfo) => boolean; code: string } | undefined;
  private frozen: string | undefined;
  /** The op in flight when the crash hit, if it was a sync: it may or may not have completed. */
  private inflightSync: (() => void) | undefined;
  private readonly counts = new Map<OpKind, Map<string, number>>();
  private readonly yieldEachOp: boolean;

  /** Number of ops so far, all kinds. */
  ops = 0;
  /** Number of mutating ops so far (the numbering crashAt() uses). */
  mutatingOps = 0;
  /** How often each named failpoint was reached. */
  readonly failpointHits = new Map<string, number>();
  /** What the crash hit, once it happened. */
  crashInfo: string | undefined;

  constructor(opts: SimFSOptions = {}) {
    this.yieldEachOp = opts.yieldEachOp ?? true;
  }

  get crashed(): boolean {
    return this.frozen !== undefined;
  }

  // ---------------------------------------------------------------- crash plan

  /** Crash at the mutating op with this absolute number (compare `mutatingOps`). */
  crashAt(mutatingOpNumber: number): this {
    this.crashPlan.atMutating = mutatingOpNumber;
    return this;
  }

  /** Crash at the first op (of any kind) for which `pred` returns true. */
  crashWhen(pred: (op: OpInfo) => boolean): this {
    this.crashPlan.when = pred;
    return this;
  }

  /**
   * Make every op for which `pred` returns true fail with an I/O error (errno `code`,
   * as a VbfsError like NodeFileIO's) instead of running: a failing disk, not a crash.
   * The file system goes on working for other ops.
   */
  failWhen(pred: ((op: OpInfo) => boolean) | undefined, code = 'EIO'): this {
    this.failPlan = pred === undefined ? undefined : { pred, code };
    return this;
  }

  /** Crash when the engine reaches failpoint `name` for the nth time (1-based). */
  crashAtFailpoint(name: string, nth = 1): this {
    this.crashPlan.failpoint = { name, nth };
    return this;
  }

  /** Cut the power now: every later op throws CrashError. */
  crashNow(why = 'crashNow()'): void {
    this.freeze(why);
  }

  /**
   * The failpoint hook: pass `sim.hit` as the store's `failpoint` option. Throws
   * CrashError when the plan says so (and after any crash).
   */
  readonly hit = (name: string): void => {
    if (this.frozen !== undefined) throw new CrashError(`failpoint ${name} after crash`);
    const n = (this.failpointHits.get(name) ?? 0) + 1;
    this.failpointHits.set(name, n);
    const fp = this.crashPlan.failpoint;
    if (fp !== undefined && fp.name === name && fp.nth === n) {
      this.freeze(`failpoint ${name} #${n}`);
      throw new CrashError(`failpoint ${name} #${n}`);
    }
  };

  // ---------------------------------------------------------------- after the crash

  /**
   * What a reboot finds after power loss at this moment (freezes this SimFS if it is
   * not already): a new SimFS holding the durable namespace and durable content, plus
   * per file what `mode` lets survive of its unsynced ops ('reorder': cut into pages
   * of `pageBytes`).
   */
  afterCrash(rng: Rng, mode: TearMode = 'random', pageBytes = PAGE_BYTES): SimFS {
    if (this.frozen === undefined) this.freeze('afterCrash()');
    if (this.inflightSync !== undefined && rng.bool()) this.inflightSync();
    this.inflightSync = undefined;
    const copies = new Map<Node, Node>();
    const copyDir = (d: DirNode): DirNode => {
      const done = copies.get(d);
      if (done !== undefined) return done as DirNode;
      const nd = new DirNode();
      copies.set(d, nd);
      for (const [name, child] of d.durableEntries) nd.entries.set(name, child.type === 'dir' ? copyDir(child) : copyFile(child));
      nd.sync();
      return nd;
    };
    const copyFile = (f: FileNode): FileNode => {
      const done = copies.get(f);
      if (done !== undefined) return done as FileNode;
      const nf = new FileNode();
      copies.set(f, nf);
      const content = f.durable.clone();
      survive(content, f.pending, rng, mode, pageBytes);
      nf.data = content;
      nf.durable = content.clone();
      return nf;
    };
    const fs = new SimFS({ yieldEachOp: this.yieldEachOp });
    fs.root = copyDir(this.root);
    return fs;
  }

  /**
   * A clean restart of the process (the OS stays up): a new SimFS with exactly the
   * current state, including what is not yet durable, so a later crash can still lose
   * it. This SimFS is frozen so a store left running on it cannot touch the new one.
   */
  reopen(): SimFS {
    const fs = this.clone();
    if (this.frozen === undefined) this.freeze('reopened');
    return fs;
  }

  /** An exact copy of the current state (durable and volatile); this SimFS goes on unchanged. */
  clone(): SimFS {
    const copies = new Map<Node, Node>();
    const copy = (n: Node): Node => {
      const done = copies.get(n);
      if (done !== undefined) return done;
      if (n.type === 'file') {
        const nf = new FileNode();
        copies.set(n, nf);
        nf.data = n.data.clone();
        nf.durable = n.durable.clone();
        nf.pending = n.pending.map((op) => (op.kind === 'write' ? { ...op, data: Buffer.from(op.data) } : { ...op }));
        return nf;
      }
      const nd = new DirNode();
      copies.set(n, nd);
      for (const [k, v] of n.entries) nd.entries.set(k, copy(v));
      for (const [k, v] of n.durableEntries) nd.durableEntries.set(k, copy(v));
      return nd;
    };
    const fs = new SimFS({ yieldEachOp: this.yieldEachOp });
    fs.root = copy(this.root) as DirNode;
    return fs;
  }

  // ---------------------------------------------------------------- test helpers (no counting, no crash)

  /** Current content of a file (undefined if missing). */
  readRaw(p: string): Buffer | undefined {
    const n = this.lookup(p);
    return n?.type === 'file' ? n.data.copy() : undefined;
  }

  /** Replace a file's content durably (creating it, durably, if needed). */
  writeRaw(p: string, data: Uint8Array): void {
    const abs = norm(p);
    const parent = this.lookup(path.posix.dirname(abs));
    if (parent?.type !== 'dir') throw new Error(`writeRaw: no directory for ${abs}`);
    let f = parent.entries.get(path.posix.basename(abs));
    if (f === undefined) {
      f = new FileNode();
      parent.entries.set(path.posix.basename(abs), f);
      parent.durableEntries.set(path.posix.basename(abs), f);
    }
    if (f.type !== 'file') throw new Error(`writeRaw: ${abs} is a directory`);
    f.data = new Bytes();
    f.data.write(0, data);
    f.durable = f.data.clone();
    f.pending = [];
  }

  /** Flip one bit of a file, in its current and durable content and in queued writes. */
  flipBit(p: string, byteOffset: number, bit = 0): void {
    const f = this.lookup(p);
    if (f?.type !== 'file') throw new Error(`flipBit: no file ${p}`);
    if (byteOffset >= f.data.len) throw new Error(`flipBit: offset ${byteOffset} past the end of ${p} (${f.data.len})`);
    const mask = 1 << bit;
    f.data.flip(byteOffset, mask);
    if (byteOffset < f.durable.len) f.durable.flip(byteOffset, mask);
    for (const op of f.pending) {
      if (op.kind === 'write' && byteOffset >= op.off && byteOffset < op.off + op.data.length) {
        op.data[byteOffset - op.off] = (op.data[byteOffset - op.off] ?? 0) ^ mask;
      }
    }
  }

  /** Every file path (current namespace), sorted; optionally only those under a prefix. */
  files(prefix = '/'): string[] {
    const out: string[] = [];
    const walk = (d: DirNode, at: string): void => {
      for (const [name, child] of d.entries) {
        const p = at === '/' ? `/${name}` : `${at}/${name}`;
        if (child.type === 'dir') walk(child, p);
        else if (p.startsWith(prefix)) out.push(p);
      }
    };
    walk(this.root, '/');
    return out.sort();
  }

  /** Files with unsynced content, and directories with undurable entries (for assertions). */
  unsynced(): { files: string[]; dirs: string[] } {
    const files: string[] = [];
    const dirs: string[] = [];
    const walk = (d: DirNode, at: string): void => {
      if (!sameEntries(d.entries, d.durableEntries)) dirs.push(at);
      for (const [name, child] of d.entries) {
        const p = at === '/' ? `/${name}` : `${at}/${name}`;
        if (child.type === 'dir') walk(child, p);
        else if (child.pending.length > 0) files.push(p);
      }
    };
    walk(this.root, '/');
    return { files, dirs };
  }

  // ---------------------------------------------------------------- counting

  /** Number of ops of these kinds (all kinds if omitted) on paths starting with prefix. */
  count(kinds?: OpKind | readonly OpKind[], pathPrefix = ''): number {
    const ks = kinds === undefined ? [...this.counts.keys()] : typeof kinds === 'string' ? [kinds] : kinds;
    let total = 0;
    for (const k of ks) {
      for (const [p, n] of this.counts.get(k) ?? []) if (p.startsWith(pathPrefix)) total += n;
    }
    return total;
  }

  resetCounts(): void {
    this.counts.clear();
  }

  // ---------------------------------------------------------------- FileIO

  async open(p: string, mode: OpenMode): Promise<FileHandle> {
    const abs = norm(p);
    const creating = mode === 'wx' || mode === 'w+';
    await this.enter({ kind: 'open', path: abs, mode }, creating);
    const parent = this.lookup(path.posix.dirname(abs));
    if (parent?.type !== 'dir') fsError('ENOENT', 'open', abs);
    const name = path.posix.basename(abs);
    let node = parent.entries.get(name);
    if (node?.type === 'dir') fsError('EISDIR', 'open', abs);
    if (mode === 'wx' && node !== undefined) fsError('EEXIST', 'open', abs);
    if (node === undefined) {
      if (!creating) fsError('ENOENT', 'open', abs);
      node = new FileNode();
      parent.entries.set(name, node);
    } else if (mode === 'w+' && node.data.len > 0) {
      node.change({ kind: 'truncate', len: 0 });
    }
    return new SimHandle(this, abs, node, mode !== 'r');
  }

  async readFile(p: string): Promise<Buffer> {
    const abs = norm(p);
    await this.enter({ kind: 'readFile', path: abs });
    const n = this.lookup(abs);
    if (n === undefined) fsError('ENOENT', 'read', abs);
    if (n.type === 'dir') fsError('EISDIR', 'read', abs);
    return n.data.copy();
  }

  async rename(from: string, to: string): Promise<void> {
    const a = norm(from);
    const b = norm(to);
    await this.enter({ kind: 'rename', path: a });
    const src = this.lookup(path.posix.dirname(a));
    const dst = this.lookup(path.posix.dirname(b));
    const node = src?.type === 'dir' ? src.entries.get(path.posix.basename(a)) : undefined;
    if (src?.type !== 'dir' || node === undefined) fsError('ENOENT', 'rename', a);
    if (dst?.type !== 'dir') fsError('ENOENT', 'rename', b);
    if (a === b) return;
    const existing = dst.entries.get(path.posix.basename(b));
    if (existing?.type === 'dir' && node.type === 'file') fsError('EISDIR', 'rename', b);
    if (existing?.type === 'file' && node.type === 'dir') fsError('ENOTDIR', 'rename', b);
    if (existing?.type === 'dir' && existing.entries.size > 0) fsError('ENOTEMPTY', 'rename', b);
    if (node.type === 'dir' && (b + '/').startsWith(a + '/')) fsError('EINVAL', 'rename', b);
    src.entries.delete(path.posix.basename(a));
    dst.entries.set(path.posix.basename(b), node);
  }

  async link(from: string, to: string): Promise<void> {
    const a = norm(from);
    const b = norm(to);
    await this.enter({ kind: 'link', path: b });
    const src = this.lookup(a);
    const dst = this.lookup(path.posix.dirname(b));
    if (src === undefined) fsError('ENOENT', 'link', a);
    if (src.type === 'dir') fsError('EPERM', 'link', a);
    if (dst?.type !== 'dir') fsError('ENOENT', 'link', b);
    if (dst.entries.has(path.posix.basename(b))) fsError('EEXIST', 'link', b);
    // A second name for the same inode: like open-create, durable after fsyncDir.
    dst.entries.set(path.posix.basename(b), src);
  }

  async unlink(p: string): Promise<void> {
    const abs = norm(p);
    await this.enter({ kind: 'unlink', path: abs });
    const parent = this.lookup(path.posix.dirname(abs));
    const node = parent?.type === 'dir' ? parent.entries.get(path.posix.basename(abs)) : undefined;
    if (parent?.type !== 'dir' || node === undefined) return; // like NodeFileIO: missing is fine
    if (node.type === 'dir') fsError('EISDIR', 'unlink', abs);
    parent.entries.delete(path.posix.basename(abs));
  }

  async mkdir(p: string): Promise<void> {
    const abs = norm(p);
    await this.enter({ kind: 'mkdir', path: abs });
    let d = this.root;
    for (const part of parts(abs)) {
      let next = d.entries.get(part);
      if (next === undefined) {
        next = new DirNode();
        d.entries.set(part, next);
      }
      if (next.type !== 'dir') fsError('EEXIST', 'mkdir', abs);
      d = next;
    }
  }

  async rmdir(p: string): Promise<void> {
    const abs = norm(p);
    await this.enter({ kind: 'rmdir', path: abs });
    if (abs === '/') fsError('EBUSY', 'remove', abs);
    const parent = this.lookup(path.posix.dirname(abs));
    if (parent?.type !== 'dir') return; // like rm -rf: missing is fine
    parent.entries.delete(path.posix.basename(abs));
  }

  async readdir(p: string): Promise<string[]> {
    const abs = norm(p);
    await this.enter({ kind: 'readdir', path: abs });
    const n = this.lookup(abs);
    if (n === undefined) return [];
    if (n.type !== 'dir') fsError('ENOTDIR', 'readdir', abs);
    return [...n.entries.keys()].sort();
  }

  async stat(p: string): Promise<FileStat | null> {
    const abs = norm(p);
    await this.enter({ kind: 'stat', path: abs });
    const n = this.lookup(abs);
    if (n === undefined) return null;
    return n.type === 'dir' ? { size: 0, isDirectory: true } : { size: n.data.len, isDirectory: false };
  }

  async fsyncDir(p: string): Promise<void> {
    const abs = norm(p);
    const n = this.lookup(abs);
    await this.enter({ kind: 'fsyncDir', path: abs }, true, n?.type === 'dir' ? () => n.sync() : undefined);
    const now = this.lookup(abs);
    if (now === undefined) fsError('ENOENT', 'fsync directory', abs);
    if (now.type !== 'dir') fsError('ENOTDIR', 'fsync directory', abs);
    now.sync();
  }

  // ---------------------------------------------------------------- internals

  /**
   * Every op starts here: count it, crash if the plan says so, yield like real I/O,
   * and refuse to go on if a crash happened meanwhile. `onCrash` records what the
   * crashing op leaves in flight (a write may land torn, a sync may have completed).
   */
  async enter(
    what: { kind: OpKind; path: string; mode?: OpenMode },
    mutating = MUTATING.has(what.kind),
    inflightSync?: () => void,
    onCrash?: () => void,
  ): Promise<void> {
    if (this.frozen !== undefined) throw new CrashError(`${what.kind} ${what.path} after crash (${this.frozen})`);
    this.ops++;
    if (mutating) this.mutatingOps++;
    let byPath = this.counts.get(what.kind);
    if (byPath === undefined) this.counts.set(what.kind, (byPath = new Map<string, number>()));
    byPath.set(what.path, (byPath.get(what.path) ?? 0) + 1);
    const info: OpInfo = { n: this.ops, m: mutating ? this.mutatingOps : 0, ...what };
    const plan = this.crashPlan;
    if ((mutating && plan.atMutating === this.mutatingOps) || (plan.when !== undefined && plan.when(info))) {
      const desc = `${what.kind} ${what.path} (op ${info.n}, mutating op ${info.m})`;
      onCrash?.();
      this.freeze(desc);
      this.inflightSync = inflightSync;
      throw new CrashError(desc);
    }
    if (this.failPlan !== undefined && this.failPlan.pred(info)) fsError(this.failPlan.code, what.kind, what.path);
    if (this.yieldEachOp) await new Promise<void>((resolve) => setImmediate(resolve));
    // Another op may have frozen this SimFS during the await (TS still narrows frozen to undefined).
    if (this.frozen !== undefined) throw new CrashError(`${what.kind} ${what.path} interrupted by crash (${this.frozen as string})`);
  }

  private freeze(why: string): void {
    if (this.frozen !== undefined) return;
    this.frozen = why;
    this.crashInfo = why;
  }

  private lookup(p: string): Node | undefined {
    let n: Node = this.root;
    for (const part of parts(norm(p))) {
      if (n.type !== 'dir') return undefined;
      const next: Node | undefined = n.entries.get(part);
      if (next === undefined) return undefined;
      n = next;
    }
    return n;
  }
}

class SimHandle implements FileHandle {
  private closed = false;

  constructor(
    private readonly fs: SimFS,
    readonly path: string,
    private readonly node: FileNode,
    private readonly writable: boolean,
  ) {}

  async write(buf: Uint8Array, position: number): Promise<void> {
    const op: PendingOp = { kind: 'write', off: position, data: Buffer.from(buf) };
    await this.fs.enter({ kind: 'write', path: this.path }, true, undefined, () => this.node.change(op));
    this.check('write', true);
    this.node.change(op);
  }

  async writev(bufs: readonly Uint8Array[], position: number): Promise<void> {
    const op: PendingOp = { kind: 'write', off: position, data: Buffer.concat(bufs) };
    await this.fs.enter({ kind: 'writev', path: this.path }, true, undefined, () => this.node.change(op));
    this.check('writev', true);
    this.node.change(op);
  }

  async read(buf: Uint8Array, position: number): Promise<number> {
    await this.fs.enter({ kind: 'read', path: this.path });
    this.check('read', false);
    return this.node.data.read(buf, position);
  }

  async datasync(): Promise<void> {
    await this.fs.enter({ kind: 'datasync', path: this.path }, true, () => this.node.sync());
    this.check('fdatasync', false);
    this.node.sync();
  }

  async sync(): Promise<void> {
    await this.fs.enter({ kind: 'sync', path: this.path }, true, () => this.node.sync());
    this.check('fsync', false);
    this.node.sync();
  }

  async truncate(length: number): Promise<void> {
    await this.fs.enter({ kind: 'truncate', path: this.path }, true);
    this.check('truncate', true);
    this.node.change({ kind: 'truncate', len: length });
  }

  async size(): Promise<number> {
    await this.fs.enter({ kind: 'size', path: this.path });
    this.check('stat', false);
    return this.node.data.len;
  }

  async close(): Promise<void> {
    await this.fs.enter({ kind: 'close', path: this.path });
    this.check('close', false);
    this.closed = true;
  }

  private check(what: string, write: boolean): void {
    if (this.closed) fsError('EBADF', what, this.path);
    if (write && !this.writable) fsError('EBADF', what, this.path);
  }
}

/** Apply to `content` what survives of a file's unsynced ops (see TearMode). */
function survive(content: Bytes, pending: readonly PendingOp[], rng: Rng, mode: TearMode, pageBytes: number): void {
  if (pending.length === 0 || mode === 'none') return;
  if (mode === 'all') {
    for (const op of pending) apply(content, op);
    return;
  }
  if (mode === 'reorder') {
    reorder(content, pending, rng, pageBytes);
    return;
  }
  if (rng.bool(0.35)) return; // nothing of it reached the disk
  // Some whole ops first (usually none), then the next one torn.
  const whole = rng.bool(0.6) ? 0 : rng.int(pending.length);
  for (let i = 0; i < whole; i++) apply(content, pending[i] as PendingOp);
  const torn = pending[whole] as PendingOp;
  if (torn.kind === 'truncate') {
    if (rng.bool()) apply(content, torn);
    return;
  }
  const keep = rng.int(torn.data.length + 1);
  if (rng.bool(0.3)) {
    // The size reached the disk, the data did not: zeros where the file grew.
    const oldLen = content.len;
    const end = torn.off + keep;
    if (end > oldLen) content.truncate(end);
  } else {
    content.write(torn.off, torn.data.subarray(0, keep));
  }
}

/**
 * The 'reorder' power cut: each page piece of each unsynced write independently
 * survives whole, as a prefix (a torn page write), or not at all, leaving what was
 * there before (durable bytes, an older unsynced write that survived, or zeros).
 * Pieces are laid down in op order, which covers every order writeback could have
 * used: a page written back twice shows its newer content, a page written back once,
 * early, shows the older. A truncate's loss of data reaches the disk or not. Then
 * the size: anything between the durable and the volatile size, bytes past it lost,
 * zeros where it grew past the data that arrived.
 */
function reorder(content: Bytes, pending: readonly PendingOp[], rng: Rng, pageBytes: number): void {
  const durableLen = content.len;
  let volatileLen = durableLen;
  // Per file, how much of its dirty data made it: a little, half, or nearly all (one
  // hole in a mostly written log is the case recovery gets wrong most easily).
  const keep = rng.pick([0.2, 0.5, 0.8]);
  const torn = 0.1;
  for (const op of pending) {
    if (op.kind === 'truncate') {
      if (op.len < content.len && rng.bool()) content.truncate(op.len);
      volatileLen = op.len;
      continue;
    }
    const end = op.off + op.data.length;
    for (let a = op.off; a < end;) {
      const b = Math.min(end, (Math.floor(a / pageBytes) + 1) * pageBytes);
      const r = rng.next();
      if (r < keep) content.write(a, op.data.subarray(a - op.off, b - op.off));
      else if (r < keep + torn) {
        const n = rng.int(b - a);
        if (n > 0) content.write(a, op.data.subarray(a - op.off, a - op.off + n));
      }
      a = b;
    }
    volatileLen = Math.max(volatileLen, end);
  }
  const lo = Math.min(durableLen, volatileLen);
  const hi = Math.max(durableLen, volatileLen);
  const r = rng.next();
  const size = r < 0.4 ? hi : r < 0.55 ? lo : lo + rng.int(hi - lo + 1);
  content.truncate(size);
}

function norm(p: string): string {
  return path.posix.resolve('/', p);
}

function parts(abs: string): string[] {
  return abs.split('/').filter((s) => s !== '');
}

function sameEntries(a: Map<string, Node>, b: Map<string, Node>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}
