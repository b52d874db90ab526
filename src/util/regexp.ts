/** `s` as a regular expression that matches exactly `s` (every metacharacter escaped). */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const EXPERT = /^(.*\.experts\.)(\d+)(\..*)$/;

/**
 * Regular expressions (unanchored, in the order of `names`) that together match exactly the module names `names`:
 * the routed experts of one layer and projection (`….experts.N.…`) collapse to one `\d+` pattern when all of them
 * (all of `every` with that layer and projection) are in `names`; any other name is matched literally.
 */
export function modulePatterns(names: string[], every: string[]): string[] {
  const inSet = new Set(names);
  const byKey = new Map<string, string[]>();
  for (const n of every) {
    const m = EXPERT.exec(n);
    if (m) byKey.set(m[1] + '\u0000' + m[3], [...(byKey.get(m[1] + '\u0000' + m[3]) ?? []), n]);
  }
  const out: string[] = [];
  const done = new Set<string>();
  for (const n of names) {
    const m = EXPERT.exec(n);
    const key = m ? m[1] + '\u0000' + m[3] : '';
    if (m && byKey.get(key)!.every((e) => inSet.has(e))) {
      if (!done.has(key)) out.push(`${escapeRegExp(m[1])}\\d+${escapeRegExp(m[3])}`);
      done.add(key);
    } else out.push(escapeRegExp(n));
  }
  return out;
}
