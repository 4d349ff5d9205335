import { strict as assert } from 'node:assert';
import { progressBar } from '../src/cli/progress';

describe('cli progress bar', () => {
  it('draws one line in place, skips redraws within 100 ms, never skips the final state, and clears once', () => {
    const out: string[] = [];
    const bar = progressBar(
      (t) => out.push(t),
      (p: { done: number; total: number }) => ({ label: 'check', fraction: p.done / p.total, text: `${p.done}/${p.total}`, done: p.done === p.total }),
    );
    bar.update({ done: 1, total: 4 });
    bar.update({ done: 2, total: 4 }); // within 100 ms of the first: skipped
    bar.update({ done: 4, total: 4 }); // done: always drawn
    assert.deepEqual(out, [`\rcheck [${'#'.repeat(8)}${'.'.repeat(22)}] 1/4\x1b[K`, `\rcheck [${'#'.repeat(30)}] 4/4\x1b[K`]);
    bar.clear();
    bar.clear();
    assert.equal(out.length, 3);
    assert.equal(out[2], '\r\x1b[K');
  });

  it('clamps a fraction outside 0..1 and draws nothing to clear when nothing was drawn', () => {
    const out: string[] = [];
    const bar = progressBar(
      (t) => out.push(t),
      (f: number) => ({ label: 'x', fraction: f, text: '' }),
    );
    bar.clear();
    assert.deepEqual(out, []);
    bar.update(1.7);
    assert.equal(out[0], `\rx [${'#'.repeat(30)}] \x1b[K`);
  });
});
