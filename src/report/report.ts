/**
 * `moe report RUN_DIR`: a self-contained HTML page about a `moe run` output folder: the headline (perplexity and
 * size before → after, as `moe run` prints it), its steps (ran or reused by the latest run, the size and bits per
 * parameter of the model each step wrote or evaluated), and charts drawn as inline SVG by Vega-Lite (compiled to
 * Vega and rendered headless): size against perplexity, expert usage per layer (a heatmap from the first
 * calibration), REAP saliency with the experts each prune or merge kept, the bits each quantized expert got (under
 * its original expert id), and perplexity and KL at every eval step. The page names no absolute path (paths are
 * relative to the run folder), so it can be shared; its date is the latest run's (see runDate).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../calib/stats';
import { UsageError } from '../errors';
import { openCheckpoint } from '../io/checkpoint';
import { checkFileDestination, createEmptyFile } from '../io/output';
import { HTML_GENERATOR } from '../io/ownership';
import { numel } from '../io/safetensors';
import { formatMB, weightBytes } from '../io/size';
import { COMPRESSION_FILE } from '../model/reduce';
import { QUANT_RECORD_FILE } from '../quant/records';
import { RECIPE_RECORD, RUN_RECORD, STEP_RECORD, stepFolder } from '../recipe/layout';
import { VERSION } from '../version';
import { Cell, heatmap, Spec, svg } from './charts';
import { finalModelStep, headlineLines, StepTaskResult, WRITES_MODEL } from './summary';

interface Chart {
  title: string;
  svg: string;
  /** A line under the chart. */
  note?: string;
  /** HTML after the chart (a table of its values). */
  table?: string;
}

interface StepRecord {
  step: number;
  kind: string;
  line: number;
  detail: string;
  eval?: {
    perplexity: number;
    baseline_perplexity?: number;
    ppl_increase_pct?: number;
    kl_mean?: number;
    bytes: number;
    params: number;
    tasks?: Record<string, StepTaskResult>;
  };
}

interface RecipeRecord {
  source: string;
  model: string;
  steps: { kind: string; line: number; options: Record<string, unknown> }[];
}

/** One step of the run as the report shows it. */
interface Row {
  step: number;
  kind: string;
  line: number;
  dir: string;
  options: Record<string, unknown>;
  record?: StepRecord;
  status: string;
  /** The model this step wrote (prune, merge, quantize) or evaluated (eval). */
  size?: { bytes: number; params: number };
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const readJson = <T>(file: string): T | undefined =>
  fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as T) : undefined;

export interface ReportResult {
  file: string;
  charts: string[];
  bytes: number;
  /** --dry-run: drawn in memory, not written. */
  dry_run?: boolean;
}

/**
 * The date the page shows: `date` when given, else SOURCE_DATE_EPOCH (the reproducible-builds convention), else the
 * time the latest run last wrote its record of which steps it ran (moe-run.json's modification time). Records hold
 * no wall-clock time, so that the same run twice writes the same bytes; reading the date from the file system keeps
 * both the run and the report of one run folder byte-identical.
 */
function runDate(dir: string, date?: Date): Date {
  if (date) return date;
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch && /^\d+$/.test(epoch)) return new Date(Number(epoch) * 1000);
  const rec = [RUN_RECORD, RECIPE_RECORD].map((f) => path.join(dir, f)).find((f) => fs.existsSync(f))!;
  return fs.statSync(rec).mtime;
}

/**
 * Levels above the run folder a path may climb and still be shown relative to it (the demo's model: ../../fixtures).
 */
const MAX_UP = 2;

/** A path as the page shows it: relative to the run folder when near it, else its base name; never absolute. */
function shown(dir: string, p: string): string {
  const rel = path.relative(dir, p);
  const ups = rel.split(path.sep).filter((s) => s === '..').length;
  return rel === '' ? '.' : path.isAbsolute(rel) || ups > MAX_UP ? path.basename(p) : rel;
}

function modelSize(model: string): { bytes: number; params: number } | undefined {
  try {
    const gguf = readJson<{ tensors: { params: number }[] }>(path.join(model, 'moe-gguf.json'));
    const params = gguf
      ? gguf.tensors.reduce((s, t) => s + t.params, 0)
      : [...openCheckpoint(model).tensors.values()].reduce((s, t) => s + numel(t.shape), 0);
    return { bytes: weightBytes(model), params };
  } catch {
    return undefined; // moved or deleted since the run: the page leaves the cell empty
  }
}

/** Writes the report of a run folder to `file`; an existing file is replaced only with `force`. */
export async function writeReport(
  runDir: string,
  file: string,
  opts: { force?: boolean; dryRun?: boolean; date?: Date } = {},
): Promise<ReportResult> {
  const dir = path.resolve(runDir);
  const recipe = readJson<RecipeRecord>(path.join(dir, RECIPE_RECORD));
  if (!recipe)
    throw new UsageError('not a moe run output folder (no recipe.json)', {
      file: dir,
      hint: 'give the output folder of moe run',
    });
  checkFileDestination(file, !!opts.force);
  const latest = readJson<{ steps: { step: number; status: string }[] }>(path.join(dir, RUN_RECORD));
  const statuses = new Map((latest?.steps ?? []).map((s) => [s.step, s.status]));
  const rows: Row[] = recipe.steps.map((s, i) => {
    const stepDir = stepFolder(dir, i, s.kind);
    const record = readJson<{ report: StepRecord }>(path.join(stepDir, STEP_RECORD))?.report;
    // Folders written before moe-run.json existed do not say what their latest run did.
    const status = statuses.get(i + 1) ?? (!record ? 'not run' : latest ? 'not in the latest run' : '–');
    const size = WRITES_MODEL.has(s.kind) && record ? modelSize(stepDir) : undefined;
    return { step: i + 1, kind: s.kind, line: s.line, dir: stepDir, options: s.options, record, status, size };
  });
  const original = modelSize(recipe.model);
  // An eval step shows the size of the model it measured, read from the same files as every other size.
  let measured = original;
  for (const r of rows) {
    if (WRITES_MODEL.has(r.kind)) measured = r.size;
    if (r.kind === 'eval' && r.record?.eval) r.size = measured;
  }
  const done = rows.filter((r) => r.record);
  const last = finalModelStep(done);
  const finalSize = last < 0 ? original : done[last].size;
  const headline = headlineLines(
    done.map((r) => ({ kind: r.kind, eval: r.record!.eval })),
    original && finalSize ? { before: original.bytes, after: finalSize.bytes } : undefined,
  );

  const charts: Chart[] = [];
  const sizeChart = await sizePerplexityChart(rows, original);
  if (sizeChart) charts.push(sizeChart);
  charts.push(...(await calibrationCharts(rows)));
  const bits = await bitChart(rows);
  if (bits) charts.push(bits);
  const evals = await evalChart(rows);
  if (evals) charts.push(evals);
  const tasks = await taskChart(rows);
  if (tasks) charts.push(tasks);

  const rel = (p: string) => shown(dir, p);
  const sizeCells = (s?: { bytes: number; params: number }) =>
    s
      ? `<td class="size">${formatMB(s.bytes)}</td><td class="bits">${((8 * s.bytes) / s.params).toFixed(2)}</td>`
      : '<td class="size">–</td><td class="bits">–</td>';
  const tableRows = [
    `<tr><td>0</td><td>model</td><td></td><td></td>${sizeCells(original)}<td>the original: <code>${esc(rel(recipe.model))}</code></td></tr>`,
    ...rows.map(
      (r) =>
        `<tr><td>${r.step}</td><td>${esc(r.kind)}</td><td>${r.line}</td><td class="status">${esc(r.status)}</td>${sizeCells(r.size)}<td>${esc(r.record?.detail ?? '')}</td></tr>`,
    ),
  ].join('\n');
  const when = runDate(dir, opts.date);
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">${HTML_GENERATOR}<title>moe report: ${esc(path.basename(recipe.source))}</title>
<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.size,td.bits{text-align:right;white-space:nowrap}h2{font-size:1.1em;margin-top:2em}figure{margin:0}figcaption{color:#555;font-size:.9em}.headline{font-size:1.15em;font-family:ui-monospace,monospace;white-space:pre;background:#f4f6f8;padding:.6em 1em;border-radius:4px}.meta{color:#555}</style>
</head><body>
<h1>moe report</h1>
<p class="meta">Recipe <code>${esc(rel(recipe.source))}</code> on <code>${esc(rel(recipe.model))}</code> (paths relative to the run folder <code>${esc(path.basename(dir))}</code>). Run of <span class="date">${when.toISOString().slice(0, 16).replace('T', ' ')} UTC</span>, written by <span class="version">moe ${esc(VERSION)}</span>.</p>
${headline.length ? `<p class="headline">${headline.map(esc).join('\n')}</p>` : ''}
<table><thead><tr><th>step</th><th>kind</th><th>line</th><th>latest run</th><th title="bytes of the weight files, decimal MB">size</th><th title="8 × size ÷ parameters (embeddings, scales and headers included)">bits/param</th><th>result</th></tr></thead><tbody>
${tableRows}
</tbody></table>
${charts.map((c) => `<h2>${esc(c.title)}</h2>\n<figure class="chart">${c.svg}${c.note ? `<figcaption>${esc(c.note)}</figcaption>` : ''}</figure>${c.table ?? ''}`).join('\n')}
</body></html>
`;
  if (opts.dryRun)
    return { file: path.resolve(file), charts: charts.map((c) => c.title), bytes: html.length, dry_run: true };
  const tmp = `${file}.tmp-${process.pid}`;
  createEmptyFile(tmp);
  try {
    fs.writeFileSync(tmp, html);
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return { file: path.resolve(file), charts: charts.map((c) => c.title), bytes: html.length };
}

/** The model each eval step measured: the latest model written before it ("original" when none). */
function evaluated(rows: Row[]): { row: Row; model: string; size?: { bytes: number; params: number } }[] {
  const out: { row: Row; model: string; size?: { bytes: number; params: number } }[] = [];
  let model = 'original';
  for (const r of rows) {
    if (WRITES_MODEL.has(r.kind)) model = `step ${r.step} ${r.kind}`;
    if (r.kind === 'eval' && r.record?.eval) out.push({ row: r, model, size: r.size });
  }
  return out;
}

const perplexityScale = { zero: false, nice: true, padding: 12 };

/** Size against perplexity of every model that has both: the original and each model an eval step measured. */
async function sizePerplexityChart(rows: Row[], original?: { bytes: number }): Promise<Chart | undefined> {
  const points = new Map<string, Spec>();
  const ev = evaluated(rows);
  const base = ev.find((e) => e.row.record!.eval!.baseline_perplexity !== undefined)?.row.record!.eval!
    .baseline_perplexity;
  if (original && base !== undefined)
    points.set('original', { model: 'original', mb: original.bytes / 1e6, perplexity: base });
  for (const e of ev)
    if (e.size)
      points.set(e.model, { model: e.model, mb: e.size.bytes / 1e6, perplexity: e.row.record!.eval!.perplexity });
  if (!points.size) return undefined;
  // Models written but never measured (a GGUF export at the end, say) have a size and no perplexity.
  const unmeasured = rows.filter((r) => WRITES_MODEL.has(r.kind) && r.size && !points.has(`step ${r.step} ${r.kind}`));
  const enc = {
    x: { field: 'mb', type: 'quantitative', title: 'size (MB)', scale: { zero: true } },
    y: { field: 'perplexity', type: 'quantitative', scale: perplexityScale },
  };
  const values = [...points.values()].map((p) => ({
    ...p,
    label: `${p.model}: ${(p.perplexity as number).toFixed(2)}, ${(p.mb as number).toFixed(2)} MB`,
  }));
  return {
    title: 'Size against perplexity (lower left is better)',
    note: unmeasured.length
      ? `Not plotted (no eval measured them): ${unmeasured.map((r) => `step ${r.step} ${r.kind}, ${formatMB(r.size!.bytes)}`).join('; ')}.`
      : undefined,
    svg: await svg({
      data: { values },
      width: 520,
      height: 240,
      layer: [
        { mark: { type: 'point', filled: true, size: 90, color: '#4c78a8' }, encoding: enc },
        {
          mark: { type: 'text', align: 'left', dx: 8, dy: -8, fontSize: 11 },
          encoding: { ...enc, text: { field: 'label' } },
        },
      ],
    }),
  };
}

/** Expert usage and REAP saliency from the first calibration; kept experts from the first prune or merge after it. */
async function calibrationCharts(rows: Row[]): Promise<Chart[]> {
  const calib = rows.find((r) => r.kind === 'calibrate' && r.record);
  if (!calib) return [];
  const stats = new CalibrationStats(calib.dir);
  try {
    const usage: Cell[] = [];
    const reap: Spec[] = [];
    const reduce = rows.find((r) => (r.kind === 'prune' || r.kind === 'merge') && r.step > calib.step && r.record);
    const record = reduce
      ? readJson<{ operation: string; kept?: Record<string, number[]> }>(path.join(reduce.dir, COMPRESSION_FILE))
      : undefined;
    let experts = 0;
    for (const layer of stats.json.moe_layers) {
      const f = stats.frequency(layer);
      const r = stats.vector(layer, 'reap');
      const kept = record?.kept?.[String(layer)];
      experts = Math.max(experts, f.length);
      f.forEach((v, e) =>
        usage.push({ x: String(e), y: `layer ${layer}`, value: v, text: `${(100 * v).toFixed(1)}%` }),
      );
      r.forEach((v, e) =>
        reap.push({
          layer: `layer ${layer}`,
          expert: e,
          reap: v,
          status: kept ? (kept.includes(e) ? 'kept' : record!.operation === 'merge' ? 'merged' : 'pruned') : 'all',
        }),
      );
    }
    const data = typeof calib.options.data === 'string' ? path.basename(calib.options.data) : 'calibration data';
    const usageChart = await heatmap(usage, {
      scheme: 'blues',
      title: 'share',
      xOrder: [...Array(experts).keys()].map(String),
      xTitle: 'expert',
      width: 40 * experts,
      labelAngle: 0,
    });
    const enc = {
      x: { field: 'expert', type: 'ordinal', axis: { labelAngle: 0 } },
      y: { field: 'reap', type: 'quantitative', title: 'REAP' },
    };
    const reapChart = await svg({
      data: { values: reap },
      facet: { row: { field: 'layer', type: 'ordinal', title: null } },
      spec: {
        width: 40 * experts,
        height: 90,
        layer: [
          {
            mark: 'bar',
            encoding: {
              ...enc,
              color: {
                field: 'status',
                type: 'nominal',
                scale: {
                  domain: ['kept', 'pruned', 'merged', 'all'],
                  range: ['#4c78a8', '#e45756', '#f58518', '#9d9d9d'],
                },
              },
            },
          },
          {
            mark: { type: 'text', dy: -5, fontSize: 9, baseline: 'bottom' },
            encoding: { ...enc, text: { field: 'reap', type: 'quantitative', format: '.2f' } },
          },
        ],
      },
    });
    return [
      {
        title: `Expert usage: share of tokens routed to each expert (calibration of step ${calib.step}, ${data}, ${calib.record!.detail})`,
        svg: usageChart,
      },
      {
        title: `REAP saliency per expert (step ${calib.step})${reduce ? `, and what ${reduce.kind} (step ${reduce.step}) kept` : ''}`,
        svg: reapChart,
      },
    ];
  } finally {
    stats.close();
  }
}

/**
 * Original expert ids of the model a step received: new index i in a layer is original expert ids[i], composed
 * over every prune and merge before it (each records the experts it kept, by their index in its input).
 */
function originalIds(rows: Row[], before: number): Map<number, number[]> {
  const ids = new Map<number, number[]>();
  for (const r of rows) {
    if (r.step >= before || !(r.kind === 'prune' || r.kind === 'merge')) continue;
    const kept = readJson<{ kept?: Record<string, number[]> }>(path.join(r.dir, COMPRESSION_FILE))?.kept ?? {};
    for (const [layer, list] of Object.entries(kept)) {
      const prev = ids.get(Number(layer));
      ids.set(
        Number(layer),
        list.map((k) => (prev ? prev[k] : k)),
      );
    }
  }
  return ids;
}

/** Bits per quantized tensor, as a map of layers × experts (attention and shared parts as their own columns). */
async function bitChart(rows: Row[]): Promise<Chart | undefined> {
  const quant = [...rows]
    .reverse()
    .find((r) => r.kind === 'quantize' && r.record && fs.existsSync(path.join(r.dir, QUANT_RECORD_FILE)));
  if (!quant) return undefined;
  const q = readJson<{ tensors: Record<string, number> }>(path.join(quant.dir, QUANT_RECORD_FILE))!;
  const ids = originalIds(rows, quant.step);
  const cells = new Map<string, { layer: number; part: string; expert?: number; bits: number; n: number }>();
  for (const [name, bits] of Object.entries(q.tensors)) {
    const m = /layers\.(\d+)\.(.*)$/.exec(name);
    if (!m) continue;
    const layer = Number(m[1]);
    const e = /experts\.(\d+)\./.exec(m[2]);
    const expert = e ? (ids.get(layer)?.[Number(e[1])] ?? Number(e[1])) : undefined;
    const part =
      expert !== undefined
        ? `expert ${expert}`
        : m[2].includes('attn')
          ? 'attention'
          : m[2].includes('shared')
            ? 'shared'
            : m[2].includes('gate.')
              ? 'router'
              : 'mlp';
    const key = `${layer}/${part}`;
    const c = cells.get(key) ?? { layer, part, expert, bits: 0, n: 0 };
    c.bits += bits;
    c.n += 1;
    cells.set(key, c);
  }
  const experts = [...new Set([...cells.values()].filter((c) => c.expert !== undefined).map((c) => c.expert!))].sort(
    (a, b) => a - b,
  );
  const layers = [...new Set([...cells.values()].map((c) => c.layer))].sort((a, b) => a - b);
  const values: Cell[] = [...cells.values()].map((c) => ({
    x: c.part,
    y: `layer ${c.layer}`,
    value: c.bits / c.n,
    text: (c.bits / c.n).toFixed(1),
  }));
  // Experts a prune removed from a layer: empty cells under their original ids.
  for (const l of layers)
    for (const e of experts)
      if (!cells.has(`${l}/expert ${e}`)) values.push({ x: `expert ${e}`, y: `layer ${l}`, value: null, text: '–' });
  const order = ['attention', 'shared', 'mlp', ...experts.map((e) => `expert ${e}`), 'router'].filter((p) =>
    values.some((v) => v.x === p),
  );
  const renamed = ids.size > 0 ? '; experts under their original ids, – where pruned' : '';
  return {
    title: `Bit allocation (step ${quant.step}: ${quant.record!.detail}${renamed})`,
    svg: await heatmap(values, {
      scheme: 'viridis',
      title: 'bits',
      xOrder: order,
      xTitle: null,
      width: 44 * order.length,
      labelAngle: -45,
    }),
  };
}

/** Perplexity and KL at every eval step, with their values; the perplexity axis starts near the data, not at 0. */
async function evalChart(rows: Row[]): Promise<Chart | undefined> {
  const ev = evaluated(rows);
  if (!ev.length) return undefined;
  const values: Spec[] = [];
  const first = ev[0].row.record!.eval!;
  if (first.baseline_perplexity !== undefined || ev[0].model !== 'original')
    values.push({ model: 'original', perplexity: first.baseline_perplexity ?? first.perplexity, kl: 0 });
  for (const e of ev)
    if (e.model !== 'original' || !values.length)
      values.push({ model: e.model, perplexity: e.row.record!.eval!.perplexity, kl: e.row.record!.eval!.kl_mean ?? 0 });
  const x = { field: 'model', type: 'nominal', sort: null, title: null, axis: { labelAngle: 0 } };
  const panel = (field: string, title: string, format: string, mark: Spec, scale: Spec) => ({
    width: 260,
    height: 200,
    layer: [
      { mark, encoding: { x, y: { field, type: 'quantitative', title, scale } } },
      {
        mark: { type: 'text', dy: -10, fontSize: 11 },
        encoding: { x, y: { field, type: 'quantitative', scale }, text: { field, type: 'quantitative', format } },
      },
    ],
  });
  return {
    title: 'Perplexity and KL(original‖model) at each eval step',
    svg: await svg({
      data: { values },
      hconcat: [
        panel('perplexity', 'perplexity', '.2f', { type: 'point', filled: true, size: 80 }, perplexityScale),
        panel('kl', 'KL (nats/token)', '.4f', { type: 'bar', width: 40 }, { zero: true }),
      ],
    }),
  };
}

/**
 * Accuracy on each task (`tasks:` of eval steps) at every eval step that scored it, with ± one standard error, and
 * the baseline's accuracy as "original" when the step has one; the table under it also gives the drop in points and
 * the share of items where the model picks the baseline's answer.
 */
async function taskChart(rows: Row[]): Promise<Chart | undefined> {
  const ev = evaluated(rows).filter((e) => e.row.record!.eval!.tasks);
  if (!ev.length) return undefined;
  const pct = (x: number) => 100 * x;
  const values: Spec[] = [];
  const seen = new Set<string>();
  const add = (model: string, task: string, acc: number, stderr: number) => {
    if (seen.has(`${model}\t${task}`)) return;
    seen.add(`${model}\t${task}`);
    values.push({ model, task, acc: pct(acc), lo: pct(acc - stderr), hi: pct(acc + stderr) });
  };
  for (const e of ev)
    for (const [task, t] of Object.entries(e.row.record!.eval!.tasks!)) {
      if (t.baseline_acc !== undefined) add('original', task, t.baseline_acc, 0);
      add(e.model, task, t.acc, t.acc_stderr);
    }
  const x = { field: 'model', type: 'nominal', sort: null, title: null, axis: { labelAngle: 0 } };
  const y = {
    field: 'acc',
    type: 'quantitative',
    title: 'accuracy (%)',
    scale: { zero: false, nice: true, padding: 12 },
  };
  const color = { field: 'task', type: 'nominal', title: 'task' };
  const svgText = await svg({
    data: { values },
    width: 420,
    height: 220,
    layer: [
      { mark: 'rule', encoding: { x, y: { field: 'lo', type: 'quantitative' }, y2: { field: 'hi' }, color } },
      { mark: { type: 'point', filled: true, size: 80 }, encoding: { x, y, color } },
      {
        mark: { type: 'text', dx: 14, align: 'left', fontSize: 11 },
        encoding: { x, y, text: { field: 'acc', type: 'quantitative', format: '.1f' }, color },
      },
    ],
  });
  const cell = (t: StepTaskResult) =>
    `${(100 * t.acc).toFixed(2)}% ± ${(100 * t.acc_stderr).toFixed(2)}` +
    (t.acc_drop !== undefined
      ? ` (baseline ${(100 * t.baseline_acc!).toFixed(2)}%, drop ${t.acc_drop.toFixed(2)} points, same answer ${(100 * t.same_pred!).toFixed(1)}%)`
      : '');
  const names = [...new Set(ev.flatMap((e) => Object.keys(e.row.record!.eval!.tasks!)))];
  const body = ev
    .map((e) => {
      const tasks = e.row.record!.eval!.tasks!;
      const cells = names.map((n) => `<td>${tasks[n] ? esc(cell(tasks[n])) : '–'}</td>`).join('');
      return `<tr><td>${e.row.step}</td><td>${esc(e.model)}</td>${cells}</tr>`;
    })
    .join('\n');
  const n = (name: string) => ev.map((e) => e.row.record!.eval!.tasks![name]?.n).find((v) => v !== undefined);
  const head = names.map((name) => `<th>${esc(name)} (${n(name)} items): acc</th>`).join('');
  return {
    title: 'Task accuracy at each eval step',
    svg: svgText,
    note: 'Points: accuracy (acc, as lm-evaluation-harness scores multiple choice); bars: ± one standard error.',
    table: `<table class="tasks"><thead><tr><th>step</th><th>model</th>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`,
  };
}
