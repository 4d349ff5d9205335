import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileBackend } from '../src/backend/file-backend';
import { NodeFileIO } from '../src/io/node-file-io';
import { backendSuite, pattern } from './backend-suite';
import { SimFS, isCrash } from './helpers/sim-fs';
import { Rng } from './helpers/rng';

const dirs: string[] = [];
after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

backendSuite('FileBackend', async () => new FileBackend(tmp(), new NodeFileIO()));
backendSuite('FileBackend on SimFS', async () => new FileBackend('/store/objects', new SimFS()));

describe('FileBackend durability (SimFS power loss)', () => {
  it('a completed put survives power loss, with every directory it created', async () => {
    const sim = new SimFS();
    const be = new FileBackend('/store/objects', sim);
    await be.put('vol/chunks/1', pattern(3000, 1));
    const after = sim.afterCrash(new Rng(7), 'none');
    assert.deepEqual(after.files(), ['/store/objects/vol/chunks/1']);
    assert.deepEqual(await new FileBackend('/store/objects', after).get('vol/chunks/1'), pattern(3000, 1));
  });

  it('a put succeeds beside a stray temp file a crashed process with the same pid left under the name it would pick', async () => {
    const sim = new SimFS();
    await new FileBackend('/o', sim).put('v/chunks/1', pattern(100, 1));
    // The same process id after a reboot (early-boot pids repeat), and the same counter.
    sim.writeRaw(`/o/v/chunks/2.${process.pid}-1.vbfs-tmp`, pattern(50, 9));
    const be = new FileBackend('/o', sim.afterCrash(new Rng(1), 'none'));
    await be.put('v/chunks/2', pattern(100, 2));
    assert.deepEqual(await be.get('v/chunks/2'), pattern(100, 2));
  });

  it('a completed delete survives power loss', async () => {
    const sim = new SimFS();
    const be = new FileBackend('/o', sim);
    await be.put('a/b', pattern(10, 1));
    await be.delete('a/b');
    assert.deepEqual(await new FileBackend('/o', sim.afterCrash(new Rng(1), 'all')).list(''), []);
  });

  it('a crash at any point of an overwrite leaves the old object or the new one, never a torn one', async () => {
    const oldData = pattern(5000, 1);
    const newData = pattern(7000, 2);
    // Count the mutating ops of one overwrite, then crash at each of them with several seeds.
    const probe = new SimFS({ yieldEachOp: false });
    await new FileBackend('/o', probe).put('k/x', oldData);
    const before = probe.mutatingOps;
    await new FileBackend('/o', probe).put('k/x', newData);
    const steps = probe.mutatingOps - before;
    assert.ok(steps >= 4, `an overwrite should take >= 4 mutating ops (write, datasync, rename, fsyncDir), took ${steps}`);
    const outcomes = new Set<string>();
    for (let step = 1; step <= steps + 1; step++) {
      for (let seed = 0; seed < 8; seed++) {
        const sim = new SimFS({ yieldEachOp: false });
        await new FileBackend('/o', sim).put('k/x', oldData);
        sim.crashAt(sim.mutatingOps + step);
        let completed = true;
        try {
          await new FileBackend('/o', sim).put('k/x', newData);
        } catch (err) {
          assert.ok(isCrash(err), String(err));
          completed = false;
        }
        const be = new FileBackend('/o', sim.afterCrash(new Rng(seed)));
        const got = await be.get('k/x');
        assert.deepEqual(await be.list(''), ['k/x'], 'temp files are never listed');
        if (completed) assert.deepEqual(got, newData, `step ${step}: completed put lost`);
        else if (got.equals(newData)) outcomes.add('new');
        else {
          assert.deepEqual(got, oldData, `step ${step} seed ${seed}: torn object`);
          outcomes.add('old');
        }
      }
    }
    assert.deepEqual([...outcomes].sort(), ['new', 'old']);
  });
});

function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vbfs-fb-'));
  dirs.push(d);
  return d;
}
