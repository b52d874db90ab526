/**
 * The HTML report of a run: four charts rendered as real SVG marks by Vega-Lite, and (where Debian's chromium is
 * installed, as .ci/run does) the page opens in headless Chromium without console errors.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from '../../src/commands/run';
import { writeReport } from '../../src/report/report';
import { quiet, ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));

describe('moe report', () => {
  let html: string;
  let file: string;

  beforeAll(async () => {
    const dir = tmpDir();
    const recipe = path.join(dir, 'r.yaml');
    fs.writeFileSync(
      recipe,
      `model: ${MODEL}\noutput: ${path.join(dir, 'out')}\nsteps:\n  - calibrate: { data: ${TEXT}/calib.txt, seq_len: 128, max_tokens: 2048 }\n  - prune: { method: reap, keep: 6 }\n  - calibrate: { data: ${TEXT}/calib.txt, seq_len: 128, max_tokens: 2048 }\n  - quantize: { bits: 3, allocate: lp }\n  - eval: { data: ${TEXT}/eval.txt, seq_len: 128, max_tokens: 1024, baseline: original }\n`,
    );
    const r = await run(recipe, quiet);
    file = path.join(dir, 'report.html');
    const rep = await writeReport(r.output, file);
    expect(rep.charts).toHaveLength(4);
    html = fs.readFileSync(file, 'utf8');
  }, 120_000);

  test('every chart is inline SVG with data marks: 3 × 8 usage cells, 24 saliency bars, the bit map, the eval bars', () => {
    const figures = html.split('<figure class="chart">').slice(1).map((f) => f.split('</figure>')[0]);
    expect(figures).toHaveLength(4);
    for (const f of figures) expect(f.startsWith('<svg')).toBe(true);
    // Vega draws rect and bar marks as <path> elements inside a g.mark-rect.
    const paths = (f: string) => {
      const start = f.indexOf('class="mark-rect');
      return start < 0 ? 0 : (f.slice(start).match(/<path /g) ?? []).length;
    };
    expect(paths(figures[0])).toBeGreaterThanOrEqual(24); // usage heatmap cells
    expect(paths(figures[1])).toBeGreaterThanOrEqual(24); // saliency bars
    expect(paths(figures[2])).toBeGreaterThanOrEqual(3 * 8); // layers × (attention, 6 experts, router)
    expect(figures[2]).toContain('mark-text');
    expect(paths(figures[3])).toBeGreaterThanOrEqual(4);
    // The saliency chart marks which experts the prune dropped.
    expect(figures[1]).toContain('pruned');
  });

  (CHROMIUM ? test : test.skip)(`opens in headless Chromium without console errors${CHROMIUM ? '' : ' (skipped: no chromium; .ci/run installs Debian\'s package)'}`, () => {
    const r = spawnSync(CHROMIUM!, ['--headless=new', '--no-sandbox', '--disable-gpu', '--enable-logging=stderr', '--v=0', '--dump-dom', `file://${file}`], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(0);
    const consoleLines = r.stderr.split('\n').filter((l) => /CONSOLE/.test(l));
    expect(consoleLines).toEqual([]);
    expect((r.stdout.match(/<svg /g) ?? []).length).toBe(4);
    expect(r.stdout).toContain('mark-rect');
  });
});
