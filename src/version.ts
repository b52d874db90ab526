/** moe's version, from package.json (one level above both src/ and the built dist/). */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const VERSION: string = (
  JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }
).version;
