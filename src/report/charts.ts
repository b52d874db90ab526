/**
 * The report's charts: Vega-Lite specs compiled to Vega and rendered to SVG in Node (no browser, no scripts in the
 * page). Heatmap cells carry their value in black or white, whichever contrasts more with the cell's colour
 * (WCAG 2 relative luminance), computed from the same colour scheme and domain the rect is filled with.
 */
export type Spec = Record<string, unknown>;

export async function svg(spec: Spec): Promise<string> {
  // vega and vega-lite load only when a report is drawn.
  const vega = await import('vega');
  const vl = await import('vega-lite');
  const view = new vega.View(
    vega.parse(vl.compile({ $schema: 'https://vega.github.io/schema/vega-lite/v5.json', ...spec } as never).spec),
    { renderer: 'none' },
  );
  const out = await view.toSVG();
  view.finalize();
  return out;
}

/** [r, g, b] in 0..255 of `#rrggbb`, `#rgb` or `rgb(r, g, b)`. */
export function parseColor(c: string): [number, number, number] {
  const rgb = /^rgb\((\d+),\s*(\d+),\s*(\d+)\)$/.exec(c.trim());
  if (rgb) return [Number(rgb[1]), Number(rgb[2]), Number(rgb[3])];
  let hex = c.trim().replace(/^#/, '');
  if (hex.length === 3) hex = [...hex].map((h) => h + h).join('');
  if (!/^[0-9a-f]{6}$/i.test(hex)) throw new Error(`not a colour: ${c}`);
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)) as [number, number, number];
}

/** WCAG 2 relative luminance of an sRGB colour. */
export function luminance(c: string): number {
  const [r, g, b] = parseColor(c).map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

/** WCAG 2 contrast ratio of two colours (1 to 21). */
export function contrast(a: string, b: string): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

/** Black or white text, whichever contrasts more with `fill`. */
export function inkOn(fill: string): string {
  return contrast(fill, '#000000') >= contrast(fill, '#ffffff') ? '#000000' : '#ffffff';
}

export interface Cell {
  x: string;
  y: string;
  /** null: an empty cell (e.g. an expert pruned from this layer), drawn light grey. */
  value: number | null;
  text: string;
}

const EMPTY_FILL = '#eeeeee';

/**
 * A heatmap of `cells` with each cell's text on it. The colour scale is fixed here (scheme over [lo, hi], no nice
 * rounding) so the text colour can be chosen from the very colour Vega fills the cell with.
 */
export async function heatmap(
  cells: Cell[],
  o: { scheme: string; title: string; xOrder: string[]; xTitle: string | null; width: number; labelAngle: number },
): Promise<string> {
  const vega = await import('vega');
  const interp = vega.scheme(o.scheme) as (t: number) => string;
  const vals = cells.filter((c) => c.value !== null).map((c) => c.value as number);
  const lo = Math.min(...vals);
  const hi = Math.max(...vals);
  const fill = (v: number | null) => (v === null ? EMPTY_FILL : interp(hi > lo ? (v - lo) / (hi - lo) : 0.5));
  const values = cells.map((c) => ({ ...c, ink: inkOn(fill(c.value)) }));
  const x = { field: 'x', type: 'ordinal', sort: o.xOrder, title: o.xTitle, axis: { labelAngle: o.labelAngle } };
  const y = { field: 'y', type: 'ordinal', title: null };
  return svg({
    data: { values },
    width: o.width,
    height: { step: 28 },
    // The text's colours are literal (scale: null); sharing one colour scale with the rects breaks vega-lite.
    resolve: { scale: { color: 'independent' } },
    layer: [
      {
        transform: [{ filter: 'datum.value === null' }],
        mark: 'rect',
        encoding: { x, y, color: { value: EMPTY_FILL } },
      },
      {
        transform: [{ filter: 'datum.value !== null' }],
        mark: 'rect',
        encoding: {
          x,
          y,
          color: {
            field: 'value',
            type: 'quantitative',
            title: o.title,
            scale: { scheme: o.scheme, domain: hi > lo ? [lo, hi] : [lo - 1, lo + 1], nice: false, zero: false },
          },
        },
      },
      {
        mark: { type: 'text', fontSize: 10 },
        encoding: { x, y, text: { field: 'text' }, color: { field: 'ink', type: 'nominal', scale: null } },
      },
    ],
  });
}
