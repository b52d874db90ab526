/**
 * The HTML report of a run, checked as a reader would look at it: the headline the CLI prints, the size and bits of
 * every step (sizes = the weight files' bytes, GGUF included), which steps the latest run ran or reused, a
 * size-against-perplexity chart, value labels, a perplexity axis that does not start at 0, heatmap text that
 * contrasts with its cell (WCAG ratio on the SVG's fills), the bit map under the original expert ids, the
 * calibration the usage heatmap shows, moe's version and the run's date, and no absolute path. The same checks run
 * on the page as headless Chromium renders it (Debian's chromium, which .ci/run installs), with no console errors.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatRun, run, RunReport } from '../../src/commands/run';
import { openCheckpoint } from '../../src/io/checkpoint';
import { numel } from '../../src/io/safetensors';
import { writeReport } from '../../src/report/report';
import { quiet, ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
const VERSION = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
/** The date the report must show: moe-run.json's modification time, set here. */
const RUN_DATE = new Date('2026-01-02T03:04:05Z');

/** Independent of src: bytes of a folder's weight files (every .safetensors, or its one .gguf). */
function filesBytes(dir: string): number {
  const names = fs.readdirSync(dir);
  const weights = names.some((n) => n.endsWith('.safetensors'))
    ? names.filter((n) => n.endsWith('.safetensors'))
    : names.filter((n) => n.endsWith('.gguf'));
  expect(weights.length).toBeGreaterThan(0);
  return weights.reduce((s, n) => s + fs.statSync(path.join(dir, n)).size, 0);
}
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(2)} MB`;

/** WCAG 2 contrast ratio of two colours given as #rrggbb or rgb(r, g, b). */
function wcag(a: string, b: string): number {
  const lum = (c: string) => {
    const m = /rgb\((\d+),\s*(\d+),\s*(\d+)\)/.exec(c);
    const rgb = m ? [m[1], m[2], m[3]].map(Number) : [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
    const [r, g, bl] = rgb.map((v) => (v / 255 <= 0.03928 ? v / 255 / 12.92 : ((v / 255 + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * bl;
  };
  const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}

const figures = (html: string) =>
  html
    .split('<figure class="chart">')
    .slice(1)
    .map((f) => f.split('</figure>')[0]);
const headings = (html: string) => [...html.matchAll(/<h2>([^<]*)<\/h2>/g)].map((m) => m[1]);
/** The text marks of a chart: their aria-label, fill and position. */
const texts = (svg: string) =>
  [
    ...svg.matchAll(
      /<text aria-label="([^"]*)"[^>]*transform="translate\(([-\d.]+),([-\d.]+)\)"[^>]*fill="([^"]+)"[^>]*>([^<]*)<\/text>/g,
    ),
  ].map((m) => ({ label: m[1], x: Number(m[2]), y: Number(m[3]), fill: m[4], text: m[5] }));
/** The rect marks of a chart (Vega draws them as paths "Mx,yhWvHh-WZ"). */
const rects = (svg: string) =>
  [
    ...svg.matchAll(
      /<path aria-label="[^"]*"[^>]*d="M([-\d.]+),([-\d.]+)h([-\d.]+)v([-\d.]+)h[-\d.]+Z"[^>]*fill="([^"]+)"/g,
    ),
  ].map((m) => ({ x: Number(m[1]), y: Number(m[2]), w: Number(m[3]), h: Number(m[4]), fill: m[5] }));
/** The tick labels of the y axis titled `title`. */
function yTicks(svg: string, title: string): number[] {
  const at = svg.indexOf(`aria-label="Y-axis titled '${title}'`);
  expect(at).toBeGreaterThan(0);
  const labels = svg.slice(at).split('role-axis-label')[1].split('</g>')[0];
  return [...labels.matchAll(/>([-\d.]+)<\/text>/g)].map((m) => Number(m[1]));
}

/** Every mark the page must carry; run on the written file and on the DOM Chromium renders. */
function checkPage(html: string, r: RunReport, statuses: string): void {
  const steps = r.steps;
  const ev = steps.find((s) => s.eval)!.eval!;
  const gguf = path.join(r.output, '06-quantize');
  // The headline, exactly the lines `moe run` prints.
  const headline = [
    `perplexity before ${ev.baseline_perplexity!.toFixed(2)}, after ${ev.perplexity.toFixed(2)} (+${ev.ppl_increase_pct!.toFixed(2)}%)`,
    `size      before ${mb(filesBytes(MODEL))}, after ${mb(filesBytes(gguf))}`,
  ];
  for (const line of headline) expect(formatRun(r)).toContain(line);
  const shown = /<p class="headline">([^<]*)<\/p>/.exec(html)![1];
  expect(shown.split('\n')[0]).toBe(headline[0]);
  expect(shown.split('\n')[1].startsWith(headline[1])).toBe(true);

  // The step table: the latest run's status, the size and bits per parameter of each model written or measured.
  expect(html).toMatch(/<th[^>]*>size<\/th><th[^>]*>bits\/param<\/th>/);
  const rows = [
    ...html.matchAll(
      /<tr><td>(\d+)<\/td><td>(\w+)<\/td><td>\d*<\/td><td class="status">([^<]*)<\/td><td class="size">([^<]*)<\/td><td class="bits">([^<]*)<\/td>/g,
    ),
  ];
  expect(rows.map((m) => m[3])).toEqual(steps.map(() => statuses));
  const model = (dir: string) => ({
    bytes: filesBytes(dir),
    params: [...openCheckpoint(dir).tensors.values()].reduce((s, t) => s + numel(t.shape), 0),
  });
  const quantized = model(path.join(r.output, '04-quantize'));
  const expected: Record<number, { bytes: number; params: number } | undefined> = {
    2: model(path.join(r.output, '02-prune')),
    4: quantized,
    5: quantized,
  };
  for (const [, step, , , size, bits] of rows) {
    const want = expected[Number(step)];
    if (want) {
      expect(size).toBe(mb(want.bytes));
      expect(bits).toBe(((8 * want.bytes) / want.params).toFixed(2));
    }
  }
  expect(rows.find((m) => m[1] === '6')![4]).toBe(mb(filesBytes(gguf)));
  expect(rows.find((m) => m[1] === '1')![4]).toBe('–'); // a calibration writes no model

  const figs = figures(html);
  const titles = headings(html);
  expect(figs).toHaveLength(5);
  // Size against perplexity: a point for the original and for the measured quantized model, labelled with both.
  const scatter = figs[0];
  expect(titles[0]).toMatch(/^Size against perplexity/);
  expect((scatter.split('mark-symbol')[1]?.match(/aria-roledescription="point"/g) ?? []).length).toBe(2);
  const labels = texts(scatter).map((t) => t.text);
  expect(labels).toContain(`original: ${ev.baseline_perplexity!.toFixed(2)}, ${mb(filesBytes(MODEL))}`);
  expect(labels).toContain(`step 4 quantize: ${ev.perplexity.toFixed(2)}, ${mb(quantized.bytes)}`);
  expect(html).toContain(`step 6 quantize, ${mb(filesBytes(gguf))}`); // the unmeasured GGUF is named under it
  // Perplexity axes start near the data, not at 0.
  for (const f of [scatter, figs[4]]) {
    const ticks = yTicks(f, 'perplexity');
    expect(ticks.length).toBeGreaterThan(1);
    expect(Math.min(...ticks)).toBeGreaterThan(0);
    // The axis (its domain, from Vega's aria-label) starts below the lowest value and well above 0.
    const from = Number(
      new RegExp("Y-axis titled 'perplexity' for a linear scale with values from ([\\d.]+) to").exec(f)![1],
    );
    expect(from).toBeLessThanOrEqual(ev.baseline_perplexity!);
    expect(from).toBeGreaterThan(ev.baseline_perplexity! / 2);
  }
  // Value labels: perplexity and KL at each eval step, REAP saliency on every bar.
  const evalLabels = texts(figs[4]).map((t) => t.text);
  expect(evalLabels).toEqual(
    expect.arrayContaining([ev.baseline_perplexity!.toFixed(2), ev.perplexity.toFixed(2), ev.kl_mean!.toFixed(4)]),
  );
  expect(texts(figs[2]).filter((t) => /^\d+\.\d\d$/.test(t.text))).toHaveLength(24);

  // The usage heatmap names its calibration; every cell of both heatmaps carries text that contrasts with it.
  expect(titles[1]).toContain('calibration of step 1, calib.txt');
  for (const f of [figs[1], figs[3]]) {
    const cells = rects(f);
    const marks = texts(f);
    expect(marks.length).toBe(cells.length);
    for (const t of marks) {
      const cell = cells.find((c) => t.x > c.x && t.x < c.x + c.w && t.y > c.y && t.y < c.y + c.h)!;
      expect(cell).toBeDefined();
      expect(wcag(t.fill, cell.fill)).toBeGreaterThanOrEqual(3);
    }
    expect(new Set(marks.map((t) => t.fill)).size).toBe(2); // black on light cells, white on dark ones
  }
  // The bit map names experts by their original ids: exactly the ones each layer kept, "–" where pruned.
  const kept = JSON.parse(fs.readFileSync(path.join(r.output, '02-prune', 'moe-compression.json'), 'utf8'))
    .kept as Record<string, number[]>;
  const union = [...new Set(Object.values(kept).flat())].sort((a, b) => a - b);
  expect(Math.max(...union)).toBeGreaterThanOrEqual(6); // the pruned model's own ids stop at 5
  for (const [layer, ids] of Object.entries(kept)) {
    const inLayer = texts(figs[3]).filter(
      (t) => t.label.includes(`y: layer ${layer};`) && t.label.includes('x: expert '),
    );
    expect(
      inLayer
        .filter((t) => t.text !== '–')
        .map((t) => Number(/x: expert (\d+)/.exec(t.label)![1]))
        .sort((a, b) => a - b),
    ).toEqual(ids);
    expect(
      inLayer
        .filter((t) => t.text === '–')
        .map((t) => Number(/x: expert (\d+)/.exec(t.label)![1]))
        .sort((a, b) => a - b),
    ).toEqual(union.filter((e) => !ids.includes(e)));
  }

  // moe's version (also as the generator marker) and the run's date.
  expect(html).toContain(`<meta name="generator" content="moe ${VERSION}">`);
  expect(html).toContain(`moe ${VERSION}`);
  expect(html).toContain('2026-01-02 03:04 UTC');
  // No absolute path: not the run folder, the repository, the temporary or home folders, nor any /a/b/ pattern.
  for (const p of [r.output, ROOT, os.tmpdir(), os.homedir(), '/work/', '/tmp/']) expect(html).not.toContain(p);
  expect(html.replace(/https?:\/\/[^\s"<]+/g, '')).not.toMatch(/(^|[\s"'>(=])\/[\w.-]+\/[\w./-]+/m);
}

describe('moe report', () => {
  let first: string;
  let html: string;
  let file: string;
  let r: RunReport;

  beforeAll(async () => {
    const dir = tmpDir();
    const recipe = path.join(dir, 'r.yaml');
    fs.writeFileSync(
      recipe,
      `model: ${MODEL}\noutput: ${path.join(dir, 'out')}\nsteps:\n  - calibrate: { data: ${TEXT}/calib.txt, seq_len: 128, max_tokens: 2048 }\n  - prune: { method: reap, keep: 6 }\n  - calibrate: { data: ${TEXT}/calib.txt, seq_len: 128, max_tokens: 2048 }\n  - quantize: { bits: 3, allocate: lp }\n  - eval: { data: ${TEXT}/eval.txt, seq_len: 128, max_tokens: 1024, baseline: original }\n  - quantize: { format: gguf, type: q8_0 }\n`,
    );
    const ran = await run(recipe, quiet);
    fs.utimesSync(path.join(ran.output, 'moe-run.json'), RUN_DATE, RUN_DATE);
    file = path.join(dir, 'report.html');
    await writeReport(ran.output, file);
    first = fs.readFileSync(file, 'utf8');
    // The same recipe again reuses every step; its report must say so.
    r = await run(recipe, quiet);
    fs.utimesSync(path.join(r.output, 'moe-run.json'), RUN_DATE, RUN_DATE);
    const rep = await writeReport(r.output, file, { force: true });
    expect(rep.charts).toHaveLength(5);
    html = fs.readFileSync(file, 'utf8');
  }, 120_000);

  test('a first run: every step ran; the page carries every mark', () => {
    const ran = { ...r, steps: r.steps.map((s) => ({ ...s, skipped: false })) };
    checkPage(first, ran, 'ran');
  });

  test('a second run reuses every step: the page and the printed table say "reused", not "ran"', () => {
    expect(r.steps.every((s) => s.skipped)).toBe(true);
    checkPage(html, r, 'reused');
    const table = formatRun(r)
      .split('\n')
      .filter((l) => /^\s+\d+\s{2}\w/.test(l));
    expect(table).toHaveLength(6);
    for (const line of table) expect(line).toMatch(/^\s+\d+\s+\w+\s+\d+\s+reused\s/);
  });

  test('every chart is inline SVG with data marks: 3 × 8 usage cells, 24 saliency bars, the bit map, the eval marks', () => {
    const figs = figures(html);
    for (const f of figs) expect(f.startsWith('<svg')).toBe(true);
    // Vega draws rect and bar marks as <path> elements inside a g.mark-rect.
    const paths = (f: string) => {
      const start = f.indexOf('class="mark-rect');
      return start < 0 ? 0 : (f.slice(start).match(/<path /g) ?? []).length;
    };
    expect(paths(figs[1])).toBeGreaterThanOrEqual(24); // usage heatmap cells
    expect(paths(figs[2])).toBeGreaterThanOrEqual(24); // saliency bars
    expect(paths(figs[3])).toBeGreaterThanOrEqual(3 * 8); // layers × (attention, 8 expert ids, router)
    expect(figs[3]).toContain('mark-text');
    expect(figs[2]).toContain('pruned');
  });

  (CHROMIUM ? test : test.skip)(
    `opens in headless Chromium without console errors, with every mark${CHROMIUM ? '' : " (skipped: no chromium; .ci/run installs Debian's package)"}`,
    () => {
      const c = spawnSync(
        CHROMIUM!,
        [
          '--headless=new',
          '--no-sandbox',
          '--disable-gpu',
          '--enable-logging=stderr',
          '--v=0',
          '--dump-dom',
          `file://${file}`,
        ],
        { encoding: 'utf8', timeout: 60_000 },
      );
      expect(c.status).toBe(0);
      const consoleLines = c.stderr.split('\n').filter((l) => /CONSOLE/.test(l));
      expect(consoleLines).toEqual([]);
      expect((c.stdout.match(/<svg /g) ?? []).length).toBe(5);
      // The DOM Chromium serialises writes empty elements open and closed; the checks read both forms.
      checkPage(c.stdout, r, 'reused');
    },
  );
});
