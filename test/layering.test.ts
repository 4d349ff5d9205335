/**
 * Imports point down only. Every import in src/ (static, `export ... from`, dynamic
 * import(), require()) is read with the TypeScript scanner and checked against one
 * table of floors: a module may import its own files, any module on a lower floor,
 * and a module beside it on the same floor as long as the modules do not import each
 * other in a cycle. A new folder under src/ fails until it is given a floor here.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ts from 'typescript';

/**
 * The floors, bottom first. A module is a folder under src/ ('format/') or a file
 * directly in src/ ('errors.ts').
 */
const FLOORS: ReadonlyArray<{ modules: readonly string[]; holds: string }> = [
  { modules: ['errors.ts', 'types.ts'], holds: 'error codes; types and mode lists every floor shares' },
  { modules: ['format/'], holds: 'pure encoders/decoders of the on-disk structures: no I/O, no environment' },
  { modules: ['io/', 'os/', 'crypto/'], holds: 'the file layer; the host (processes, mount table, loop devices, hardware CRC); keys and ciphers' },
  { modules: ['arena/', 'cache/', 'chunk/', 'wal/', 'map/', 'backend/'], holds: 'one concept per folder' },
  { modules: ['store/'], holds: 'Store and Volume: wires the floors below; the ports the front ends use' },
  { modules: ['fuse/'], holds: 'the FUSE front end' },
  { modules: ['cli/'], holds: 'the command line' },
  { modules: ['index.ts'], holds: 'the package entry' },
];

/**
 * Upward imports that are known and allowed for now, each with why: `from` file ->
 * `to` module. Empty: every upward import of today was removed. Add one only with an
 * issue that removes it.
 */
const EXCEPTIONS: ReadonlyArray<{ from: string; to: string; why: string }> = [];

/** External packages a module may import only where it says (STYLE.md: fuse-native only in fuse/). */
const PACKAGE_HOMES: Readonly<Record<string, readonly string[]>> = {
  'fuse-native': ['fuse/'],
  yargs: ['cli/'],
  winston: ['cli/'],
};

/** Modules that must stay pure: no package or node: import, no process, no require. */
const PURE: readonly string[] = ['format/'];

const SRC = path.resolve(__dirname, '..', '..', 'src');

export interface ImportRef {
  file: string; // relative to src/, with '/'
  line: number;
  spec: string; // as written
}

function floorOf(module: string): number {
  return FLOORS.findIndex((f) => f.modules.includes(module));
}

/** The module of a path relative to src/ ('store/volume.ts' -> 'store/', 'errors.ts' -> 'errors.ts'). */
function moduleOf(rel: string): string {
  const slash = rel.indexOf('/');
  return slash < 0 ? rel : rel.slice(0, slash + 1);
}

/** Every import of one source text. */
export function importsOf(file: string, text: string): ImportRef[] {
  const info = ts.preProcessFile(text, true, true);
  return info.importedFiles.map((f) => ({ file, spec: f.fileName, line: text.slice(0, f.pos).split('\n').length }));
}

/** What breaks the floors, one line each. `files` maps paths relative to src/ to their text. */
export function violations(files: ReadonlyMap<string, string>): string[] {
  const out: string[] = [];
  const edges = new Map<string, Set<string>>(); // module -> modules it imports (other than itself)
  for (const [file, text] of files) {
    const from = moduleOf(file);
    const fromFloor = floorOf(from);
    if (fromFloor < 0) {
      out.push(`${file}: module '${from}' has no floor: add it to FLOORS in test/layering.test.ts`);
      continue;
    }
    if (PURE.includes(from) && /\bprocess\.|\brequire\(/.test(text.replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, ''))) {
      out.push(`${file}: '${from}' must stay pure, but uses process or require`);
    }
    for (const ref of importsOf(file, text)) {
      const at = `${file}:${ref.line} imports '${ref.spec}'`;
      if (!ref.spec.startsWith('.')) {
        const pkg = ref.spec.startsWith('@') ? ref.spec.split('/').slice(0, 2).join('/') : (ref.spec.split('/')[0] ?? '');
        if (PURE.includes(from)) out.push(`${at}: '${from}' must stay pure (no packages, no node: modules)`);
        const homes = PACKAGE_HOMES[pkg];
        if (homes && !homes.includes(from)) out.push(`${at}: ${pkg} belongs in ${homes.join(', ')} only`);
        continue;
      }
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), ref.spec));
      if (target.startsWith('..')) {
        out.push(`${at}: reaches outside src/`);
        continue;
      }
      // No '/' left: a file directly in src/ ('../errors', or the entry './index');
      // anything in a folder keeps the folder ('./map/block-index').
      const to = target.includes('/') ? moduleOf(target) : `${target}.ts`;
      if (to === from) continue;
      const toFloor = floorOf(to);
      if (toFloor < 0) {
        out.push(`${at}: module '${to}' has no floor: add it to FLOORS in test/layering.test.ts`);
        continue;
      }
      let set = edges.get(from);
      if (!set) edges.set(from, (set = new Set()));
      set.add(to);
      if (toFloor > fromFloor && !EXCEPTIONS.some((e) => e.from === file && e.to === to)) {
        out.push(`${at}: upward, from '${from}' (floor ${fromFloor}) to '${to}' (floor ${toFloor})`);
      }
    }
  }
  // Sideways imports on one floor are fine; a cycle between modules is not.
  for (const start of edges.keys()) {
    const cycle = findCycle(start, edges);
    if (cycle && cycle[0] === [...cycle].sort()[0]) out.push(`modules import each other in a cycle: ${cycle.join(' -> ')} -> ${cycle[0]}`);
  }
  return out;
}

function findCycle(start: string, edges: ReadonlyMap<string, Set<string>>): string[] | null {
  const pathTo: string[] = [];
  const seen = new Set<string>();
  const walk = (m: string): string[] | null => {
    if (m === start && pathTo.length > 0) return [...pathTo];
    if (seen.has(m)) return null;
    seen.add(m);
    pathTo.push(m);
    for (const next of edges.get(m) ?? []) {
      const found = walk(next);
      if (found) return found;
    }
    pathTo.pop();
    return null;
  };
  return walk(start);
}

function sourceFiles(dir: string, rel = ''): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) for (const [k, v] of sourceFiles(path.join(dir, e.name), r)) out.set(k, v);
    else if (e.name.endsWith('.ts')) out.set(r, fs.readFileSync(path.join(dir, e.name), 'utf8'));
  }
  return out;
}

describe('layering: imports point down only', () => {
  it('every import in src/ points down the floors (or sideways without a cycle)', () => {
    const files = sourceFiles(SRC);
    assert.ok(files.size > 30, `read only ${files.size} files from ${SRC}`);
    const found = violations(files);
    assert.deepEqual(found, [], `\n${found.join('\n')}`);
  });

  it('every exception still names an upward import that exists (stale ones are removed)', () => {
    const files = sourceFiles(SRC);
    for (const e of EXCEPTIONS) {
      const text = files.get(e.from);
      assert.ok(text !== undefined, `exception for missing file ${e.from}`);
      assert.ok(
        importsOf(e.from, text).some((r) => r.spec.startsWith('.') && moduleOf(path.posix.join(path.posix.dirname(e.from), r.spec)) === e.to),
        `${e.from} no longer imports ${e.to}: remove the exception`,
      );
    }
  });

  it('the checker sees upward, multi-line, dynamic and require imports, impurity, misplaced packages and cycles', () => {
    const found = violations(
      new Map([
        ['format/a.ts', "import type {\n  Logger,\n} from '../store/types';\nexport const x = process.env.X;"],
        ['wal/b.ts', "export async function f() { return import('../cli/main'); }"],
        ['io/c.ts', "const m = require('../fuse/mount');\nimport * as F from 'fuse-native';"],
        ['cache/d.ts', "import { e } from '../arena/e';"],
        ['arena/e.ts', "import { d } from '../cache/d';"],
        ['store/f.ts', "import { x } from '../../test/helpers/rng';"],
        ['newthing/g.ts', "import { VbfsError } from '../errors';"],
        ['index.ts', "export { Store } from './store/store';\nimport { BlockIndex } from './map/block-index';"],
      ]),
    );
    const expect = [
      /format\/a\.ts: 'format\/' must stay pure/,
      /format\/a\.ts:3 imports '\.\.\/store\/types': upward/,
      /wal\/b\.ts:1 imports '\.\.\/cli\/main': upward/,
      /io\/c\.ts:1 imports '\.\.\/fuse\/mount': upward/,
      /io\/c\.ts:2 imports 'fuse-native': fuse-native belongs in fuse\//,
      /cycle: arena\/ -> cache\//,
      /store\/f\.ts:1 .* reaches outside src\//,
      /'newthing\/' has no floor/,
    ];
    for (const re of expect)
      assert.ok(
        found.some((l) => re.test(l)),
        `missing ${re}:\n${found.join('\n')}`,
      );
    assert.equal(found.length, expect.length, found.join('\n'));
  });
});
