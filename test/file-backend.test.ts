import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileBackend } from '../src/backend/file-backend';
import { NodeFileIO } from '../src/io/node-file-io';
import { backendSuite } from './backend-suite';

const dirs: string[] = [];
after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

backendSuite('FileBackend', async () => new FileBackend(tmp(), new NodeFileIO()));

function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-fb-'));
  dirs.push(d);
  return d;
}
