/**
 * `moe report RUN_DIR`: a self-contained HTML page about a `moe run` output folder: its steps, and charts drawn
 * as inline SVG by Vega-Lite (compiled to Vega and rendered headless): expert usage per layer (a heatmap from the
 * calibration), REAP saliency with the experts each prune or merge kept, the bits each quantized expert got, and
 * perplexity and KL at every eval step.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../calib/stats';
import { UsageError } from '../errors';
import { checkFileDestination, createEmptyFile } from '../io/output';
import { HTML_GENERATOR } from '../io/ownership';
import { COMPRESSION_FILE } from '../model/reduce';

interface StepRecord {
  report: { step: number; kind: string; line: number; output: string; skipped: boolean; detail: string; eval?: { perplexity: number; baseline_perplexity?: number; kl_mean?: number; bytes: number } };
}

type Spec = Record<string, unknown>;

async function svg(spec: Spec): Promise<string> {
  // vega and vega-lite load only when a report is drawn.
  const vega = await import('vega');
  const vl = await import('vega-lite');
  const view = new vega.View(vega.parse(vl.compile({ $schema: 'https://vega.github.io/schema/vega-lite/v5.json', ...spec } as never).spec), { renderer: 'none' });
  const out = await view.toSVG();
  view.finalize();
  return out;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export interface ReportResult {
  file: string;
  charts: string[];
  bytes: number;
  /** --dry-run: drawn in memory, not written. */
  dry_run?: boolean;
}

/** Writes the report of a run folder to `file`; an existing file is replaced only with `force`. */
export async function writeReport(runDir: string, file: string, opts: { force?: boolean; dryRun?: boolean } = {}): Promise<ReportResult> {
  const dir = path.resolve(runDir);
  const recipeFile = path.join(dir, 'recipe.json');
  if (!fs.existsSync(recipeFile)) throw new UsageError('not a moe run output folder (no recipe.json)', { file: dir, hint: 'give the output folder of moe run' });
  checkFileDestination(file, !!opts.force);
  const recipe = JSON.parse(fs.readFileSync(recipeFile, 'utf8')) as { source: string; model: string; steps: { kind: string }[] };
  const steps: StepRecord['report'][] = [];
  recipe.steps.forEach((s, i) => {
    const rec = path.join(dir, `${String(i + 1).padStart(2, '0')}-${s.kind}`, 'moe-step.json');
    if (fs.existsSync(rec)) steps.push((JSON.parse(fs.readFileSync(rec, 'utf8')) as StepRecord).report);
  });
  const charts: { title: string; svg: string }[] = [];

  // Expert usage and REAP saliency from the first calibration; kept experts from the first prune or merge after it.
  const calib = steps.find((s) => s.kind === 'calibrate');
  if (calib) {
    const stats = new CalibrationStats(calib.output);
    try {
      const usage: Spec[] = [];
      const reap: Spec[] = [];
      const reduce = steps.find((s) => (s.kind === 'prune' || s.kind === 'merge') && s.step > calib.step);
      const record = reduce && fs.existsSync(path.join(reduce.output, COMPRESSION_FILE)) ? JSON.parse(fs.readFileSync(path.join(reduce.output, COMPRESSION_FILE), 'utf8')) : undefined;
      for (const layer of stats.json.moe_layers) {
        const f = stats.frequency(layer);
        const r = stats.vector(layer, 'reap');
        const kept: number[] | undefined = record?.kept?.[String(layer)] ?? record?.groups?.[String(layer)]?.map((g: { dominant?: number; members: number[] }) => g.dominant ?? g.members[0]);
        f.forEach((v, e) => usage.push({ layer: `layer ${layer}`, expert: e, frequency: v }));
        r.forEach((v, e) => reap.push({ layer: `layer ${layer}`, expert: e, reap: v, status: kept ? (kept.includes(e) ? 'kept' : record.operation === 'merge' ? 'merged' : 'pruned') : 'all' }));
      }
      charts.push({
        title: 'Expert usage: share of tokens routed to each expert (calibration)',
        svg: await svg({ data: { values: usage }, mark: 'rect', width: 360, height: { step: 28 }, encoding: { x: { field: 'expert', type: 'ordinal' }, y: { field: 'layer', type: 'ordinal' }, color: { field: 'frequency', type: 'quantitative', scale: { scheme: 'blues' } }, tooltip: [{ field: 'frequency', format: '.3f' }] } }),
      });
      charts.push({
        title: `REAP saliency per expert${reduce ? `, and what ${reduce.kind} (step ${reduce.step}) kept` : ''}`,
        svg: await svg({ data: { values: reap }, mark: 'bar', width: 360, height: 80, encoding: { x: { field: 'expert', type: 'ordinal' }, y: { field: 'reap', type: 'quantitative' }, color: { field: 'status', type: 'nominal', scale: { domain: ['kept', 'pruned', 'merged', 'all'], range: ['#4c78a8', '#e45756', '#f58518', '#9d9d9d'] } }, row: { field: 'layer', type: 'ordinal' } } }),
      });
    } finally {
      stats.close();
    }
  }

  // Bits per quantized tensor, as a map of layers × experts (attention and shared parts as their own columns).
  const quant = [...steps].reverse().find((s) => s.kind === 'quantize' && fs.existsSync(path.join(s.output, 'moe-quantization.json')));
  if (quant) {
    const q = JSON.parse(fs.readFileSync(path.join(quant.output, 'moe-quantization.json'), 'utf8')) as { tensors: Record<string, number> };
    const cells = new Map<string, { layer: string; part: string; bits: number; params: number }>();
    for (const [name, bits] of Object.entries(q.tensors)) {
      const m = /layers\.(\d+)\.(.*)$/.exec(name);
      if (!m) continue;
      const e = /experts\.(\d+)\./.exec(m[2]);
      const part = e ? `expert ${e[1].padStart(3, '0')}` : m[2].includes('attn') ? 'attention' : m[2].includes('shared') ? 'shared' : m[2].includes('gate.') ? 'router' : 'mlp';
      const key = `${m[1]}/${part}`;
      const c = cells.get(key) ?? { layer: `layer ${m[1]}`, part, bits: 0, params: 0 };
      c.bits += bits;
      c.params += 1;
      cells.set(key, c);
    }
    const values = [...cells.values()].map((c) => ({ layer: c.layer, part: c.part, bits: c.bits / c.params }));
    charts.push({
      title: `Bit allocation (step ${quant.step}: ${quant.detail})`,
      svg: await svg({ data: { values }, width: 420, height: { step: 28 }, layer: [{ mark: 'rect', encoding: { x: { field: 'part', type: 'ordinal', title: null }, y: { field: 'layer', type: 'ordinal' }, color: { field: 'bits', type: 'quantitative', scale: { scheme: 'viridis' } } } }, { mark: { type: 'text', fontSize: 9 }, encoding: { x: { field: 'part', type: 'ordinal' }, y: { field: 'layer', type: 'ordinal' }, text: { field: 'bits', type: 'quantitative', format: '.1f' }, color: { value: 'white' } } }] }),
    });
  }

  // Perplexity and KL at every eval step.
  const evals = steps.filter((s) => s.eval);
  if (evals.length) {
    const values: Spec[] = [];
    const first = evals[0].eval!;
    values.push({ model: 'original', perplexity: first.baseline_perplexity ?? first.perplexity, kl: 0 });
    for (const s of evals) if (s.eval!.baseline_perplexity !== undefined) values.push({ model: `after step ${s.step - 1}`, perplexity: s.eval!.perplexity, kl: s.eval!.kl_mean ?? 0 });
    charts.push({
      title: 'Perplexity and KL(original‖model) at each eval step',
      svg: await svg({ data: { values }, hconcat: [{ mark: 'bar', width: 200, encoding: { x: { field: 'model', type: 'nominal', sort: null }, y: { field: 'perplexity', type: 'quantitative' } } }, { mark: 'bar', width: 200, encoding: { x: { field: 'model', type: 'nominal', sort: null }, y: { field: 'kl', type: 'quantitative', title: 'KL (nats/token)' } } }] }),
    });
  }

  const rows = steps.map((s) => `<tr><td>${s.step}</td><td>${esc(s.kind)}</td><td>${s.line}</td><td>${s.skipped ? 'skipped' : 'ran'}</td><td>${esc(s.detail)}</td></tr>`).join('\n');
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">${HTML_GENERATOR}<title>moe report: ${esc(path.basename(recipe.source))}</title>
<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}h2{font-size:1.1em;margin-top:2em}figure{margin:0}</style>
</head><body>
<h1>moe report</h1>
<p>Recipe <code>${esc(recipe.source)}</code> on <code>${esc(recipe.model)}</code>; outputs in <code>${esc(dir)}</code>.</p>
<table><thead><tr><th>step</th><th>kind</th><th>line</th><th>this run</th><th>result</th></tr></thead><tbody>
${rows}
</tbody></table>
${charts.map((c) => `<h2>${esc(c.title)}</h2>\n<figure class="chart">${c.svg}</figure>`).join('\n')}
</body></html>
`;
  if (opts.dryRun) return { file: path.resolve(file), charts: charts.map((c) => c.title), bytes: html.length, dry_run: true };
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
