/**
 * Results of a fio-bench run: medians, the Markdown tables printed to the console
 * (and pasted into docs/bench.md), the issue-4 target check, and a hand-written
 * SVG bar chart (no plotting dependency).
 */
import type { Figures, Job } from './fio-jobs';
import type { TargetGroup } from './targets';

export interface Cell {
  runs: Figures[];
  median?: Figures;
  error?: string;
  note?: string;
}

export interface TargetInfo {
  id: string;
  label: string;
  group: TargetGroup;
  realSync: boolean;
  note: string;
}

export interface Results {
  meta: Record<string, unknown>;
  targets: TargetInfo[];
  jobs: Pick<Job, 'id' | 'label' | 'metric' | 'dir' | 'describe'>[];
  cells: Record<string, Record<string, Cell>>;
  checks?: Check[];
}

export interface Check {
  what: string;
  want: string;
  got: string;
  pass: boolean | null; // null: not measured
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? (s[(n - 1) / 2] as number) : ((s[n / 2 - 1] as number) + (s[n / 2] as number)) / 2;
}

/** Field-by-field median (each figure is the median of its own runs). */
export function medianFigures(runs: Figures[]): Figures | undefined {
  if (runs.length === 0) return undefined;
  const keys = new Set<keyof Figures>();
  for (const r of runs) for (const k of Object.keys(r) as (keyof Figures)[]) keys.add(k);
  const out: Partial<Figures> = {};
  for (const k of keys) {
    const vals = runs.map((r) => r[k]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
    if (vals.length) out[k] = median(vals);
  }
  return out as Figures;
}

export function fmtValue(v: number | undefined, metric: 'IOPS' | 'MiB/s'): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (metric === 'IOPS') return v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1);
  return v >= 100 ? Math.round(v).toString() : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function fmtMs(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (v >= 100) return Math.round(v).toString();
  if (v >= 1) return v.toFixed(1);
  return v.toFixed(3);
}

function fmtRatio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '-';
  const r = a / b;
  return r >= 10 ? `${Math.round(r)}x` : r >= 1 ? `${r.toFixed(2)}x` : `${Math.round(r * 100)}%`;
}

function mdTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(header), sep, ...rows.map(line)].join('\n');
}

const value = (res: Results, job: string, target: string): number | undefined => res.cells[job]?.[target]?.median?.value;

const HEADLINE = 'vbfs-batched';
const ENCRYPTED = 'vbfs-encrypted';

/** The lower of the null FUSE fs and the local file for one job: what vbfs can at best reach through FUSE on this disk. */
function ceiling(res: Results, job: string): number | undefined {
  const a = value(res, job, 'plain');
  const b = value(res, job, 'null');
  return a === undefined || b === undefined ? undefined : Math.min(a, b);
}

export function renderTables(res: Results): string {
  const ts = res.targets;
  const refs = ts.filter((t) => t.group !== 'vbfs');
  const vb = ts.filter((t) => t.group === 'vbfs');
  const headline = vb.find((t) => t.id === HEADLINE) ?? vb[0];
  const parts: string[] = [];

  // 1. Values (median of runs) + ratio of the headline vbfs mode to each reference.
  // The ceiling (issue 12) is the lower of the null FUSE fs and the local file, per job;
  // encrypted / batched is issue 13's cost of encryption, both measured in this run.
  const withCeiling = headline !== undefined && ts.some((t) => t.id === 'plain') && ts.some((t) => t.id === 'null');
  const withEnc = headline?.id === HEADLINE && ts.some((t) => t.id === ENCRYPTED);
  const header = [
    'job',
    'unit',
    ...ts.map((t) => t.label + (t.realSync ? '' : ' *')),
    ...(headline ? refs.map((r) => `${headline.label} / ${r.label}`) : []),
    ...(withCeiling ? [`${headline.label} / ceiling`] : []),
    ...(withEnc ? ['encrypted / batched'] : []),
  ];
  const rows = res.jobs.map((j) => [
    j.label,
    j.metric,
    ...ts.map((t) => {
      const c = res.cells[j.id]?.[t.id];
      if (c?.error) return 'error';
      return fmtValue(c?.median?.value, j.metric) + (c?.note ? ' †' : '');
    }),
    ...(headline ? refs.map((r) => fmtRatio(value(res, j.id, headline.id), value(res, j.id, r.id))) : []),
    ...(withCeiling ? [fmtRatio(value(res, j.id, headline.id), ceiling(res, j.id))] : []),
    ...(withEnc ? [fmtRatio(value(res, j.id, ENCRYPTED), value(res, j.id, HEADLINE))] : []),
  ]);
  parts.push(mdTable(header, rows));
  parts.push('* fsync does not reach stable storage on this target (null FUSE: no-op; s3backer cached: no-op; vbfs async: not awaited).');
  const notes = res.jobs.flatMap((j) => ts.map((t) => ({ j, t, n: res.cells[j.id]?.[t.id]?.note })).filter((x) => x.n));
  for (const { j, t, n } of notes) parts.push(`† ${t.label}, ${j.label}: ${n}`);

  // 2. Latency of writes and fsyncs (p50/p99, ms).
  const latJobs = res.jobs.filter((j) => j.id !== 'dd-ext4');
  const latRows: string[][] = [];
  for (const j of latJobs) {
    latRows.push([
      `${j.label} (${j.dir === 'write' ? 'write' : 'read'} clat)`,
      ...ts.map((t) => {
        const m = res.cells[j.id]?.[t.id]?.median;
        return m ? `${fmtMs(m.p50Ms)} / ${fmtMs(m.p99Ms)}` : '-';
      }),
    ]);
    if (res.jobs.length && ts.some((t) => res.cells[j.id]?.[t.id]?.median?.syncP50Ms !== undefined)) {
      latRows.push([
        `${j.label} (fsync)`,
        ...ts.map((t) => {
          const m = res.cells[j.id]?.[t.id]?.median;
          return m?.syncP50Ms !== undefined ? `${fmtMs(m.syncP50Ms)} / ${fmtMs(m.syncP99Ms)}` : '-';
        }),
      ]);
    }
  }
  parts.push('\nLatency p50 / p99 in ms (fio clat; fsync = fio "sync" latency):\n');
  parts.push(mdTable(['job', ...ts.map((t) => t.label)], latRows));

  // 3. Every vbfs mode against every reference.
  if (vb.length > 1 && refs.length > 0) {
    const rh = ['job', ...vb.flatMap((v) => refs.map((r) => `${v.id.slice(5)}/${r.id}`))];
    const rr = res.jobs.map((j) => [j.label, ...vb.flatMap((v) => refs.map((r) => fmtRatio(value(res, j.id, v.id), value(res, j.id, r.id))))]);
    parts.push('\nRatios of each vbfs mode to each reference (same run):\n');
    parts.push(mdTable(rh, rr));
  }
  if (res.checks?.length) {
    parts.push('\nTargets (vbfs batched unless named; ratios from this run; ceiling = the lower of null FUSE and the local file):\n');
    parts.push(
      mdTable(
        ['target', 'want', 'got', 'met'],
        res.checks.map((c) => [c.what, c.want, c.got, c.pass === null ? 'n/a' : c.pass ? 'yes' : 'NO']),
      ),
    );
  }
  return parts.join('\n');
}

export function computeChecks(res: Results): Check[] {
  const out: Check[] = [];
  const ratio = (job: string, a: string, b: string): number | undefined => {
    const x = value(res, job, a);
    const y = b === 'ceiling' ? ceiling(res, job) : value(res, job, b);
    return x !== undefined && y !== undefined && y > 0 ? x / y : undefined;
  };
  const pctStr = (r: number | undefined): string => (r === undefined ? 'not measured' : r >= 10 ? `${Math.round(r)}x` : `${Math.round(r * 100)}%`);
  const check = (what: string, job: string, a: string, b: string, want: number): void => {
    if (!res.jobs.some((j) => j.id === job)) return;
    const r = ratio(job, a, b);
    out.push({ what, want: `>= ${Math.round(want * 100)}%`, got: pctStr(r), pass: r === undefined ? null : r >= want });
  };
  const label = (job: string): string => res.jobs.find((j) => j.id === job)?.label ?? job;
  // Issue 12 (performance round 2).
  for (const job of ['randread-4k-cold', 'seqread-1m-cold', 'randread-4k-warm', 'seqread-1m-warm'])
    check(`${label(job)}: vbfs / ceiling`, job, HEADLINE, 'ceiling', 0.85);
  check(`${label('randwrite-4k')}: vbfs / null FUSE`, 'randwrite-4k', HEADLINE, 'null', 0.9);
  check(`${label('randwrite-4k-4jobs')}: vbfs / null FUSE`, 'randwrite-4k-4jobs', HEADLINE, 'null', 0.85);
  check(`${label('randwrite-4k-fsync')}: vbfs / local file (both fdatasync per write)`, 'randwrite-4k-fsync', HEADLINE, 'plain', 0.6);
  check(`${label('seqwrite-1m')}: vbfs / ceiling`, 'seqwrite-1m', HEADLINE, 'ceiling', 0.85);
  check(`${label('dd-ext4')}: vbfs / ceiling`, 'dd-ext4', HEADLINE, 'ceiling', 0.85);
  // Issue 13 (encryption at rest): encrypted vs plain volume, both batched.
  for (const job of ['randwrite-4k', 'seqwrite-1m', 'seqread-1m-warm']) check(`${label(job)}: encrypted / plain volume`, job, ENCRYPTED, HEADLINE, 0.8);
  // Issue 4: reads against s3backer.
  for (const j of res.jobs.filter((x) => x.dir === 'read')) {
    for (const peer of ['s3b-cached', 's3b-sync']) check(`${j.label}: vbfs / ${peer}`, j.id, HEADLINE, peer, 1);
  }
  return out.filter((c) => c.pass !== null || !c.what.includes('s3b'));
}

const COLORS: Record<string, string> = {
  plain: '#7f7f7f',
  null: '#bcbd22',
  's3b-cached': '#9ecae1',
  's3b-sync': '#3182bd',
  'vbfs-batched': '#d62728',
  'vbfs-strict': '#ff9896',
  'vbfs-relaxed': '#e6550d',
  'vbfs-async': '#fdae6b',
  'vbfs-encrypted': '#8c564b',
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Horizontal grouped bars, one group per job. Units differ between jobs, so each
 * bar is scaled to the best target of its job; the printed label is the value.
 */
export function renderSvg(res: Results, title: string): string {
  const ts = res.targets;
  const barH = 13;
  const gap = 3;
  const groupPad = 16;
  const left = 190;
  const barMax = 520;
  const width = left + barMax + 120;
  const legendRows = Math.ceil(ts.length / 4);
  const top = 48 + legendRows * 18;
  const groupH = ts.length * (barH + gap) + groupPad + 14;
  const height = top + res.jobs.length * groupH + 30;
  const o: string[] = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
  );
  o.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  o.push(`<text x="${width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>`);
  o.push(
    `<text x="${width / 2}" y="36" text-anchor="middle" fill="#555">median of runs; bars scaled to the best target of each job; * = fsync does not reach stable storage</text>`,
  );
  ts.forEach((t, i) => {
    const x = 20 + (i % 4) * 205;
    const y = 50 + Math.floor(i / 4) * 18;
    o.push(`<rect x="${x}" y="${y}" width="12" height="12" fill="${COLORS[t.id] ?? '#333'}"/>`);
    o.push(`<text x="${x + 16}" y="${y + 10}">${esc(t.label + (t.realSync ? '' : ' *'))}</text>`);
  });
  res.jobs.forEach((j, gi) => {
    const y0 = top + gi * groupH;
    o.push(`<text x="10" y="${y0 + 12}" font-weight="bold">${esc(`${j.label} (${j.metric})`)}</text>`);
    const vals = ts.map((t) => value(res, j.id, t.id) ?? 0);
    const max = Math.max(...vals, 1e-9);
    ts.forEach((t, ti) => {
      const v = value(res, j.id, t.id);
      const y = y0 + 18 + ti * (barH + gap);
      o.push(`<text x="${left - 6}" y="${y + barH - 3}" text-anchor="end" fill="#333">${esc(t.label)}</text>`);
      const w = v === undefined ? 0 : Math.max(1, (v / max) * barMax);
      o.push(`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${COLORS[t.id] ?? '#333'}"/>`);
      o.push(`<text x="${left + w + 4}" y="${y + barH - 3}">${v === undefined ? 'n/a' : esc(fmtValue(v, j.metric))}</text>`);
    });
  });
  o.push('</svg>');
  return o.join('\n') + '\n';
}
