/** moe's version: read at run time from the package.json one folder above this file (dist/ when built, src/ under jest). */
import * as fs from 'node:fs';
import * as path from 'node:path';

export function moeVersion(): string {
  const file = path.join(__dirname, '..', 'package.json');
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
}
