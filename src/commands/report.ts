/** `moe report RUN-DIR`: the self-contained HTML report of a moe run output folder (src/report/report.ts). */
import * as path from 'node:path';
import { ReportResult, writeReport } from '../report/report';
import { CommandSpec, dryRun, JSON_OUTPUT } from './spec';

export const reportSpec: CommandSpec<ReportResult> = {
  name: 'report',
  summary:
    'a self-contained HTML report of a moe run output folder, with charts (size against perplexity, expert usage, REAP saliency, bits, perplexity)',
  args: [{ name: '<run-dir>', description: 'the output folder of moe run' }],
  options: [
    {
      flag: '-o, --output <file>',
      type: 'file',
      description: 'the HTML file (default: RUN-DIR/report.html, replaced on every call)',
      runner: true,
    },
    { flag: '--force', type: 'bool', description: 'replace an existing -o file', runner: true },
    dryRun('print the file and charts it would write, and write nothing'),
    JSON_OUTPUT,
  ],
  examples: ['moe run recipes/demo.yaml && moe report .cache/demo-run'],
  // The default file lives in the run folder moe wrote, and is moe's to replace.
  run: ([runDir], o) => {
    const file = o.output as string | undefined;
    return writeReport(runDir, file ?? path.join(runDir, 'report.html'), {
      force: !!o.force || file === undefined,
      dryRun: !!o.dryRun,
    });
  },
  format: (x) =>
    `${x.dry_run ? 'dry run: would write' : 'wrote'} ${x.file}: ${x.charts.length} charts (${x.charts.join('; ')})${x.dry_run ? ' (nothing written)' : ''}`,
};
