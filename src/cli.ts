/** The command line: commands, flags, help and examples. Each action calls its command and prints its report. */
import { Command, CommanderError, Option } from 'commander';
import { createContext, Context } from './ui/progress';
import { parseIntArg, parseSize } from './ui/parse';
import { UsageError } from './errors';
import { VERSION } from './version';

interface GlobalOpts {
  debug?: boolean;
}

interface OutputOpts {
  json?: boolean;
}

function context(cmd: Command, json: boolean | undefined): Context {
  const g = cmd.optsWithGlobals() as GlobalOpts;
  return createContext({ debug: g.debug, quiet: false, tty: json ? false : undefined });
}

/** Prints a report: one JSON object on stdout with --json, else the human text. */
function emit<T extends object>(report: T, opts: OutputOpts, human: (r: T) => string): void {
  if (opts.json) {
    process.stdout.write(JSON.stringify({ ...report, peak_rss_bytes: process.resourceUsage().maxRSS * 1024 }) + '\n');
  } else {
    process.stdout.write(human(report) + '\n');
  }
}

export function buildCli(): Command {
  const program = new Command();
  program
    .name('moe')
    .description('Make Mixture-of-Experts models smaller: inspect, convert, calibrate, prune, merge, quantize and evaluate Hugging Face MoE checkpoints.')
    .version(VERSION, '-V, --version', 'print moe\'s version')
    .option('--debug', 'print stack traces on errors')
    // commander's own errors are thrown as UsageError (below) and printed by main.ts in moe's one-line style.
    .configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: () => {} })
    .exitOverride(usageExit('moe'))
    .addHelpText(
      'after',
      '\nExamples:\n  moe demo                                   # the whole job on the bundled tiny model\n  moe inspect ./Qwen3-30B-A3B\n  moe calibrate ./model --data calib.txt -o ./stats\n  moe prune ./model --stats ./stats --method reap --ratio 0.5 -o ./model-reap50\n  moe quantize ./model-reap50 --bits 4 -o ./model-int4\n  moe eval ./model-int4 --baseline ./model --data eval.txt\n  moe run recipes/demo.yaml --dry-run\n\nRun moe <command> --help for a command\'s options and examples.',
    );

  program
    .command('inspect')
    .description('show layers, experts, routing, parameters and bytes of a checkpoint (reads headers only)')
    .argument('<model>', 'model folder (config.json + *.safetensors) or a .gguf file')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe inspect ./Qwen3-30B-A3B\n  moe inspect ./Mixtral-8x7B --json | jq .params_active')
    .action(async (model: string, opts: OutputOpts) => {
      const { inspect, formatInspect } = await import('./commands/inspect');
      emit(inspect({ model }), opts, formatInspect);
    });

  program
    .command('convert')
    .description('re-shard a checkpoint and optionally cast its floating tensors, streaming tensor by tensor')
    .argument('<model>', 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache')
    .requiredOption('-o, --output <dir>', 'destination folder (must not exist unless --force)')
    .addOption(new Option('--dtype <dtype>', 'cast floating tensors').choices(['bf16', 'f16', 'f32']))
    .option('--max-shard-size <size>', 'largest shard, e.g. 5GB, 500MB, 2GiB', '5GB')
    .option('--force', 'replace an existing model folder at the destination')
    .option('--dry-run', 'print what would be written and write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe convert ./model -o ./model-f32 --dtype f32\n  moe convert ./model -o ./model-resharded --max-shard-size 2GB')
    .action(async (model: string, opts: OutputOpts & { output: string; dtype?: string; maxShardSize: string; force?: boolean; dryRun?: boolean }, cmd: Command) => {
      const { convert, formatConvert } = await import('./commands/convert');
      const report = await convert(
        { model, output: opts.output, dtype: opts.dtype, maxShardBytes: parseSize(opts.maxShardSize, '--max-shard-size'), force: opts.force, dryRun: opts.dryRun },
        context(cmd, opts.json),
      );
      emit(report, opts, formatConvert);
    });

  program
    .command('calibrate')
    .description('run the model once over calibration text and record the statistics prune, merge and quantize use')
    .argument('<model>', 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache')
    .requiredOption('-o, --output <dir>', 'stats folder to write (stats.safetensors + stats.json)')
    .option('--data <file>', 'calibration data: .txt, .jsonl or pre-tokenized .json (default: the bundled generic text)')
    .option('--seq-len <n>', 'window length in tokens', '2048')
    .option('--max-tokens <n>', 'use the first N tokens of the data')
    .option('--samples <n>', 'use N windows picked at random (seeded) from the data')
    .option('--seed <n>', 'seed for --samples and the NAEE subsample', '0')
    .option('--hessians', 'also record XᵀX of every linear input (needed by GPTQ; large)')
    .option('--naee-tokens <n>', 'MoE-block inputs and outputs kept per layer for NAEE', '1024')
    .addOption(new Option('--backend <name>', 'matmul backend').choices(['onnx', 'ref', 'tfjs']).default('onnx'))
    .option('--threads <n>', 'compute threads (default: all cores)')
    .option('--batch-tokens <n>', 'tokens run through a layer at once', '4096')
    .option('--activation-memory <size>', 'hidden states kept in memory between layers; beyond this they spill to a temporary file', '2GB')
    .option('--force', 'replace an existing stats folder')
    .option('--dry-run', 'print what would be done and write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe calibrate ./model --data calib.txt --seq-len 512 --max-tokens 65536 -o ./stats\n  moe calibrate ./model --data calib.jsonl --samples 128 --hessians -o ./stats-gptq')
    .action(async (model: string, opts: OutputOpts & Record<string, string | boolean | undefined>, cmd: Command) => {
      const { calibrate, formatCalibrate } = await import('./commands/calibrate');
      const report = await calibrate(
        {
          model,
          output: String(opts.output),
          data: opts.data as string | undefined,
          seqLen: num(opts.seqLen, '--seq-len', 2)!,
          maxTokens: num(opts.maxTokens, '--max-tokens', 2),
          samples: num(opts.samples, '--samples', 1),
          seed: num(opts.seed, '--seed', 0),
          hessians: !!opts.hessians,
          naeeTokens: num(opts.naeeTokens, '--naee-tokens', 0),
          backend: opts.backend as 'onnx' | 'ref' | 'tfjs',
          threads: num(opts.threads, '--threads', 1),
          batchTokens: num(opts.batchTokens, '--batch-tokens', 1),
          activationBudgetBytes: parseSize(String(opts.activationMemory), '--activation-memory'),
          force: !!opts.force,
          dryRun: !!opts.dryRun,
        },
        context(cmd, !!opts.json),
      );
      emit(report, opts, formatCalibrate);
    });

  reductionOptions(program
    .command('prune')
    .description('drop routed experts (the same number in every MoE layer) and write a plain checkpoint')
    .argument('<model>', 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache')
    .addOption(new Option('--method <name>', 'how experts are chosen').choices(['frequency', 'soft-frequency', 'reap', 'naee', 'random']).makeOptionMandatory())
    .option('--protect-super-experts', 'never drop super experts (extreme down_proj outputs)')
    .option('--super-factor <f>', 'super expert: largest |down_proj output| above F × the layer median', '5')
    .option('--naee-limit <n>', 'NAEE tries every subset up to this many per layer, else searches greedily', '20000')
    .option('--loss', 'report every layer\'s NAEE reconstruction loss for any method')
    .option('--seed <n>', 'seed (random method)', '0')
    .addHelpText('after', '\nExamples:\n  moe prune ./model --stats ./stats --method reap --ratio 0.5 -o ./model-reap50\n  moe prune ./model --stats ./stats --method naee --keep 6 --protect-super-experts --dry-run')
    .action(async (model: string, opts: OutputOpts & Record<string, string | boolean | undefined>, cmd: Command) => {
      const { prune, formatPrune } = await import('./commands/prune');
      const report = await prune(
        {
          ...reductionArgs(model, opts),
          protectSuperExperts: !!opts.protectSuperExperts,
          superFactor: real(opts.superFactor, '--super-factor'),
          naeeLimit: num(opts.naeeLimit, '--naee-limit', 1),
          loss: !!opts.loss,
        },
        context(cmd, !!opts.json),
      );
      emit(report, opts, formatPrune);
    }), 'print each layer\'s plan and write nothing');

  reductionOptions(program
    .command('merge')
    .description('merge each MoE layer\'s routed experts into K (M-SMoE with neuron alignment, HC-SMoE) and write a plain checkpoint')
    .argument('<model>', 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache')
    .addOption(new Option('--method <name>', 'how experts are grouped and merged').choices(['msmoe', 'hcsmoe', 'average']).makeOptionMandatory())
    .addOption(new Option('--similarity <kind>', 'expert similarity (default: expert-output, the experts\' outputs on the calibrated sample)').choices(['router-logits', 'expert-output', 'weights']))
    .addOption(new Option('--linkage <kind>', 'hcsmoe linkage').choices(['single', 'complete', 'average']).default('average'))
    .addOption(new Option('--align <on|off>', 'neuron alignment before averaging (default: on for msmoe and hcsmoe)').choices(['on', 'off']))
    .addOption(new Option('--router <mode>', 'router row per merged expert: the dominant expert\'s or the frequency-weighted mean').choices(['dominant', 'weighted']))
    .option('--seed <n>', 'seed for the random projection of wide alignments', '0')
    .addHelpText('after', '\nExamples:\n  moe merge ./model --stats ./stats --method msmoe --ratio 0.5 -o ./model-msmoe50\n  moe merge ./model --stats ./stats --method hcsmoe --keep 4 --linkage complete --dry-run')
    .action(async (model: string, opts: OutputOpts & Record<string, string | boolean | undefined>, cmd: Command) => {
      const { merge, formatMerge } = await import('./commands/merge');
      const report = await merge(
        {
          ...reductionArgs(model, opts),
          similarity: opts.similarity as 'router-logits' | 'expert-output' | 'weights' | undefined,
          linkage: opts.linkage as 'single' | 'complete' | 'average',
          align: opts.align === undefined ? undefined : opts.align === 'on',
          router: opts.router as 'dominant' | 'weighted' | undefined,
        },
        context(cmd, !!opts.json),
      );
      emit(report, opts, formatMerge);
    }), 'print the groups and write nothing');

  program
    .command('quantize')
    .description('quantize the decoder\'s linear weights (RTN or GPTQ), uniform or with bits allocated by a linear program')
    .argument('<model>', 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache')
    .option('--bits <b>', 'bits per weight: exact with --allocate uniform, the average budget with --allocate lp (e.g. 2.5)')
    .requiredOption('-o, --output <dir>', 'destination folder')
    .option('--group-size <n>', 'weights per scale and zero point, along the input dimension', '128')
    .addOption(new Option('--method <name>', 'quantizer (default: gptq when the stats hold Hessians, else rtn)').choices(['rtn', 'gptq']))
    .option('--stats <dir>', 'calibration stats of this model (moe calibrate; --hessians for GPTQ)')
    .addOption(new Option('--allocate <mode>', 'same bits everywhere, or bits per group by linear programming (MC-MoE)').choices(['uniform', 'lp']).default('uniform'))
    .option('--bit-choices <list>', 'bit-widths the allocation may choose', '2,3,4,8')
    .addOption(new Option('--granularity <g>', 'allocation group: one expert, one projection, or all experts of a layer').choices(['expert', 'projection', 'layer']).default('expert'))
    .addOption(new Option('--budget-scope <s>', 'meet --bits over the whole model (bits move to the layers that need them) or in every layer').choices(['global', 'layer']).default('global'))
    .option('--alpha <a>', 'exponent of expert frequency in the allocation weight', '1')
    .option('--beta <b>', 'exponent of mean routing weight in the allocation weight', '1.5')
    .option('--attn-bits <n>', 'fixed bits for attention (default: --bits, or at least 4 under lp)')
    .option('--shared-expert-bits <n>', 'fixed bits for shared experts (default: --bits, or at least 4 under lp)')
    .option('--keep-router-fp', 'leave the router unquantized (default: 8 bits)')
    .option('--act-order', 'GPTQ: quantize columns in order of decreasing Hessian diagonal')
    .option('--damp <f>', 'GPTQ dampening, a fraction of the mean Hessian diagonal', '0.01')
    .addOption(new Option('--format <f>', 'packed integers with scales (moe eval runs them), a plain checkpoint of dequantized weights, or a llama.cpp GGUF file').choices(['packed', 'dequantized', 'gguf']).default('packed'))
    .option('--type <t>', 'gguf: the ggml type of every weight (norms and routers stay F32): q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q4_0, f16, bf16', 'q8_0')
    .option('--bpw <b>', 'gguf with --allocate lp: average bits per weight (blocks\' scales included), e.g. 4.5')
    .option('--type-menu <list>', 'gguf with --allocate lp: the types the LP may choose', 'q2_k,q3_k,q4_k,q5_k,q6_k,q8_0')
    .option('--report <file>', 'write every group\'s bits and predicted error, the size and the solver\'s status as JSON')
    .option('--layers <A-B>', 'only decoder layers A to B (the rest of the model with layer 0): a part for moe assemble')
    .addOption(new Option('--backend <name>', 'matmul backend').choices(['onnx', 'ref', 'tfjs']).default('onnx'))
    .option('--threads <n>', 'compute threads (default: all cores)')
    .option('--max-shard-size <size>', 'largest shard', '5GB')
    .option('--force', 'replace an existing model folder at the destination')
    .option('--dry-run', 'allocate and report, write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText(
      'after',
      '\nExamples:\n  moe quantize ./model --bits 4 -o ./model-int4\n  moe quantize ./model --format gguf --type q4_k -o ./model-q4_k.gguf\n  moe quantize ./model --format gguf --allocate lp --bpw 4.5 --stats ./stats -o ./gguf\n  moe calibrate ./model --data calib.txt --hessians -o ./stats\n  moe quantize ./model --stats ./stats --bits 2.5 --allocate lp --report alloc.json -o ./model-2.5bit\n  moe quantize ./model --stats ./stats --bits 4 --format dequantized -o ./model-q4-hf',
    )
    .action(async (model: string, opts: OutputOpts & Record<string, string | boolean | undefined>, cmd: Command) => {
      if (opts.format === 'gguf') {
        const { exportGguf, formatGguf, parseGgmlType } = await import('./commands/gguf');
        const type = parseGgmlType(String(opts.type));
        if (!type) throw new UsageError(`--type ${JSON.stringify(opts.type)} is not a GGUF type moe writes`, { hint: 'use q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q4_0, f16 or bf16' });
        const menu = String(opts.typeMenu).split(',').map((x) => parseGgmlType(x.trim()));
        if (menu.some((x) => !x)) throw new UsageError(`--type-menu ${JSON.stringify(opts.typeMenu)} holds a type moe does not write`);
        if (opts.bits !== undefined) throw new UsageError('--format gguf takes --type (uniform) or --allocate lp --bpw B, not --bits');
        if (opts.layers !== undefined) throw new UsageError('--layers writes parts of a safetensors checkpoint; --format gguf writes one file', { hint: 'assemble the parts first, then write GGUF from the result' });
        const report = await exportGguf(
          { model, output: String(opts.output), type, allocate: opts.allocate as 'uniform' | 'lp', bpw: real(opts.bpw, '--bpw'), menu: menu as NonNullable<(typeof menu)[number]>[], stats: opts.stats as string | undefined, alpha: real(opts.alpha, '--alpha'), beta: real(opts.beta, '--beta'), force: !!opts.force, dryRun: !!opts.dryRun },
          context(cmd, !!opts.json),
        );
        emit({ ...report, tensors: report.tensors.length }, opts, () => formatGguf(report));
        return;
      }
      if (opts.bits === undefined) throw new UsageError('--bits is required (or --format gguf with --type)', { hint: 'e.g. moe quantize MODEL --bits 4 -o OUT' });
      const { quantize, formatQuantize, summary } = await import('./commands/quantize');
      const { parseBitChoices } = await import('./quant/plan');
      const choices = parseBitChoices(String(opts.bitChoices));
      if (!choices) throw new UsageError(`--bit-choices ${JSON.stringify(opts.bitChoices)} is not a list of integers from 1 to 8`, { hint: 'e.g. --bit-choices 2,3,4,8' });
      const report = await quantize(
        {
          model,
          output: String(opts.output),
          bits: real(opts.bits, '--bits')!,
          groupSize: num(opts.groupSize, '--group-size', 1),
          method: opts.method as 'rtn' | 'gptq' | undefined,
          stats: opts.stats as string | undefined,
          allocate: opts.allocate as 'uniform' | 'lp',
          bitChoices: choices,
          granularity: opts.granularity as 'expert' | 'projection' | 'layer',
          budgetScope: opts.budgetScope as 'global' | 'layer',
          alpha: real(opts.alpha, '--alpha'),
          beta: real(opts.beta, '--beta'),
          attnBits: num(opts.attnBits, '--attn-bits', 1),
          sharedExpertBits: num(opts.sharedExpertBits, '--shared-expert-bits', 1),
          keepRouterFp: !!opts.keepRouterFp,
          actOrder: !!opts.actOrder,
          damp: real(opts.damp, '--damp'),
          format: opts.format as 'packed' | 'dequantized',
          report: opts.report as string | undefined,
          dryRun: !!opts.dryRun,
          backend: opts.backend as 'onnx' | 'ref' | 'tfjs',
          threads: num(opts.threads, '--threads', 1),
          maxShardBytes: parseSize(String(opts.maxShardSize), '--max-shard-size'),
          force: !!opts.force,
          layers: opts.layers === undefined ? undefined : parseRange(String(opts.layers)),
        },
        context(cmd, !!opts.json),
      );
      emit(summary(report), opts, () => formatQuantize(report));
    });

  program
    .command('run')
    .description('run a recipe: calibrate → prune or merge → quantize → eval steps from a YAML file, resuming finished steps')
    .argument('<recipe>', 'the recipe (YAML)')
    .option('--fresh', 'run every step again, even those whose outputs are up to date')
    .option('--report-html <file>', 'also write the HTML report of the run (moe report)')
    .option('--dry-run', 'print which steps would run and which outputs would be reused, and write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe run recipes/demo.yaml\n  moe run recipes/demo.yaml --dry-run\n  moe run my-recipe.yaml --json > run.json\n\nSee recipes/demo.yaml for the format.')
    .action(async (recipe: string, opts: OutputOpts & { fresh?: boolean; reportHtml?: string; dryRun?: boolean }, cmd: Command) => {
      const { run, formatRun, formatRunPlan } = await import('./commands/run');
      const report = await run(recipe, context(cmd, !!opts.json), { fresh: !!opts.fresh, dryRun: !!opts.dryRun, reportHtml: opts.reportHtml });
      if (opts.dryRun) {
        const nodePath = await import('node:path');
        const html = opts.reportHtml ? nodePath.resolve(opts.reportHtml) : null;
        emit({ ...report, report_html: html }, opts, (r) => formatRunPlan(r) + (html ? `\nwould write the report ${html}` : ''));
        return;
      }
      let html: string | undefined;
      // A resumed run rewrites the report it wrote before.
      if (opts.reportHtml) html = (await (await import('./report/report')).writeReport(report.output, opts.reportHtml, { force: true })).file;
      emit({ ...report, report_html: html ?? null }, opts, (r) => formatRun(r) + (html ? `\nreport: ${html}` : ''));
    });

  program
    .command('report')
    .description('a self-contained HTML report of a moe run output folder, with charts (size against perplexity, expert usage, REAP saliency, bits, perplexity)')
    .argument('<run-dir>', 'the output folder of moe run')
    .option('-o, --output <file>', 'the HTML file (default: RUN-DIR/report.html, replaced on every call)')
    .option('--force', 'replace an existing -o file')
    .option('--dry-run', 'print the file and charts it would write, and write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe run recipes/demo.yaml && moe report .cache/demo-run')
    .action(async (runDir: string, opts: OutputOpts & { output?: string; force?: boolean; dryRun?: boolean }) => {
      const path = await import('node:path');
      const { writeReport } = await import('./report/report');
      // The default file lives in the run folder moe wrote, and is moe's to replace.
      const r = await writeReport(runDir, opts.output ?? path.join(runDir, 'report.html'), { force: !!opts.force || opts.output === undefined, dryRun: !!opts.dryRun });
      emit(r, opts, (x) => `${x.dry_run ? 'dry run: would write' : 'wrote'} ${x.file}: ${x.charts.length} charts (${x.charts.join('; ')})${x.dry_run ? ' (nothing written)' : ''}`);
    });

  program
    .command('assemble')
    .description('join the parts written by moe quantize --layers A-B into one checkpoint, identical to a single run')
    .argument('<parts...>', 'the part folders, in any order')
    .requiredOption('-o, --output <dir>', 'destination folder')
    .option('--force', 'replace an existing model folder at the destination')
    .option('--dry-run', 'print the parts, layers and output it would write, and write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe quantize ./model --bits 4 --layers 0-15 -o part-a   # on one machine\n  moe quantize ./model --bits 4 --layers 16-31 -o part-b  # on another\n  moe assemble part-a part-b -o ./model-int4')
    .action(async (parts: string[], opts: OutputOpts & { output: string; force?: boolean; dryRun?: boolean }, cmd: Command) => {
      const { assemble, formatAssemble } = await import('./commands/assemble');
      emit(await assemble(parts, { output: opts.output, force: opts.force, dryRun: opts.dryRun }, context(cmd, !!opts.json)), opts, formatAssemble);
    });

  program
    .command('verify')
    .description('re-open a checkpoint and check it whole: shards, index, config against tensors, packed weights; --nan: every value finite')
    .argument('<model>', 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache')
    .option('--nan', 'also read every floating value and fail on NaN or Inf')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe verify ./model-int4\n  moe verify ./model --nan --json')
    .action(async (model: string, opts: OutputOpts & { nan?: boolean }) => {
      const { verifyCheckpoint, checkFinite } = await import('./io/verify');
      const r = verifyCheckpoint(model, { nan: !!opts.nan });
      emit(r, opts, (x) => `ok: ${x.model} (${x.model_type}), ${x.tensors} tensors in ${x.shards} shard(s)${x.indexed ? ' with an index' : ''}, ${(x.bytes / 1e6).toFixed(1)} MB${x.values_checked !== null ? `; ${x.values_checked} values${x.nonfinite.length ? `, NaN/Inf in ${x.nonfinite.length} tensor(s)` : ', all finite'}` : ''}`);
      checkFinite(r);
    });

  program
    .command('eval')
    .description('perplexity on a text (and against a baseline: KL, top-1 and routing agreement), size and speed')
    .argument('<model>', 'model folder or a .gguf file')
    .requiredOption('--data <file>', '.txt, .jsonl (field "text") or .json (array of token-id arrays, used window by window)')
    .option('--seq-len <n>', 'window length in tokens', '2048')
    .option('--max-tokens <n>', 'use only the first N tokens of the data')
    .option('--baseline <model>', 'compare against this model (usually the uncompressed one; a folder or ORG/NAME[@REV])')
    .option('--max-ppl-increase <pct>', 'CI gate: exit 1 when perplexity is more than PCT % above the baseline\'s')
    .option('--dump-logits <file>', 'write every position\'s logits to a safetensors file')
    .addOption(new Option('--backend <name>', 'matmul backend').choices(['onnx', 'ref', 'tfjs']).default('onnx'))
    .addOption(new Option('--device <device>', 'onnx device').choices(['cpu', 'cuda']).default('cpu'))
    .option('--threads <n>', 'compute threads (default: all cores)')
    .option('--batch-tokens <n>', 'tokens run through each layer at once (more is faster, uses more memory)', '4096')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText(
      'after',
      '\nExamples:\n  moe eval ./model --data wiki.test.txt --seq-len 512 --max-tokens 65536\n  moe eval ./pruned --baseline ./model --data eval.txt --max-ppl-increase 5 --json',
    )
    .action(async (model: string, opts: OutputOpts & Record<string, string | undefined>, cmd: Command) => {
      const { evalCommand, formatEval, checkGate } = await import('./commands/eval');
      const pct = real(opts.maxPplIncrease, '--max-ppl-increase');
      const report = await evalCommand(
        {
          model,
          data: opts.data!,
          seqLen: num(opts.seqLen, '--seq-len', 2)!,
          maxTokens: num(opts.maxTokens, '--max-tokens', 2),
          baseline: opts.baseline,
          maxPplIncrease: pct,
          dumpLogits: opts.dumpLogits,
          backend: opts.backend as 'onnx' | 'ref' | 'tfjs',
          device: opts.device as 'cpu' | 'cuda',
          threads: num(opts.threads, '--threads', 1),
          batchTokens: num(opts.batchTokens, '--batch-tokens', 1),
        },
        context(cmd, opts.json as unknown as boolean),
      );
      emit(report, opts, formatEval);
      checkGate(report);
    });

  program
    .command('synth')
    .description('write a random checkpoint with the exact Hugging Face layout of a model type (for tests and benchmarks)')
    .requiredOption('--arch <model_type>', 'mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2 or deepseek_v3')
    .requiredOption('-o, --output <dir>', 'destination folder')
    .option('--set <key=value...>', 'override config keys (JSON values), e.g. --set hidden_size=1024 num_hidden_layers=6')
    .addOption(new Option('--dtype <dtype>', 'weight dtype').choices(['bf16', 'f16', 'f32']).default('f32'))
    .option('--seed <n>', 'random seed', '0')
    .option('--max-shard-size <size>', 'largest shard', '5GB')
    .option('--force', 'replace an existing model folder at the destination')
    .option('--dry-run', 'print the config summary, tensors and bytes it would write, and write nothing')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe synth --arch qwen3_moe -o /tmp/tiny\n  moe synth --arch mixtral --set hidden_size=4096 intermediate_size=14336 num_hidden_layers=2 --dtype bf16 -o /tmp/big')
    .action(async (opts: OutputOpts & { arch: string; output: string; set?: string[]; dtype: string; seed: string; maxShardSize: string; force?: boolean; dryRun?: boolean }, cmd: Command) => {
      const { synthesize } = await import('./synth/generate');
      const { PRESETS } = await import('./synth/presets');
      const { CAST_TARGETS } = await import('./io/dtype');
      const base = PRESETS[opts.arch];
      if (!base) throw new UsageError(`--arch ${JSON.stringify(opts.arch)} is not one of ${Object.keys(PRESETS).join(', ')}`);
      const config = { ...base, ...parseSets(opts.set ?? []) };
      const report = await synthesize(
        { config, output: opts.output, dtype: CAST_TARGETS[opts.dtype], seed: parseIntArg(opts.seed, '--seed'), maxShardBytes: parseSize(opts.maxShardSize, '--max-shard-size'), force: opts.force, dryRun: opts.dryRun },
        context(cmd, opts.json),
      );
      const summary = (r: typeof report) => `${r.model_type}, ${r.layers} layers, ${r.experts} experts, hidden ${r.hidden_size}, ${r.dtype}: ${r.tensors} tensors in ${r.shards} shard(s), ${(r.bytes / 1e6).toFixed(2)} MB`;
      emit(report, opts, (r) => (r.dry_run ? `dry run: would write ${r.output}: ${summary(r)} (nothing written)` : `wrote ${r.output}: ${r.model_type}, ${r.tensors} tensors in ${r.shards} shard(s)`));
    });

  program
    .command('demo')
    .description('run the bundled demo on the fixture model (what `npm start` runs)')
    .option('--json', 'print one JSON object on stdout')
    .addHelpText('after', '\nExamples:\n  moe demo                            # inspect, calibrate, prune, merge, quantize and evaluate fixtures/tiny-moe\n  moe demo --json | jq \'.results[] | {model, perplexity}\'')
    .action(async (opts: OutputOpts, cmd: Command) => {
      const { demo, formatDemo } = await import('./commands/demo');
      emit(await demo(context(cmd, opts.json)), opts, formatDemo);
    });

  for (const c of program.commands) c.exitOverride(usageExit(`moe ${c.name()}`));
  return program;
}

/** commander's exits that are not errors: help, version, and `moe` alone (help on stderr, exit 2 in main.ts). */
const NOT_ERRORS = new Set(['commander.helpDisplayed', 'commander.help', 'commander.version', 'commander.executeSubCommandAsync']);

/** Turns commander's own errors (unknown option, missing argument, invalid choice...) into one-line usage errors. */
function usageExit(name: string): (e: CommanderError) => never {
  return (e) => {
    if (NOT_ERRORS.has(e.code)) throw e;
    const message = e.message
      .replace(/^error: /, '')
      .replace(/\s*\n\s*\(Did you mean/, ' (did you mean')
      .replace(/\s*\n\s*/g, ' ')
      .replace(/\.$/, '');
    throw new UsageError(message, { hint: `run ${name} --help` });
  };
}

/** The options prune and merge share: stats, how many experts, the destination, backend and output flags. */
function reductionOptions(cmd: Command, dryRun: string): Command {
  return cmd
    .requiredOption('--stats <dir>', 'calibration stats from moe calibrate on this model')
    .option('--keep <k>', 'experts per MoE layer afterwards')
    .option('--ratio <r>', 'share of experts kept per MoE layer, e.g. 0.5')
    .requiredOption('-o, --output <dir>', 'destination folder')
    .addOption(new Option('--backend <name>', 'matmul backend').choices(['onnx', 'ref', 'tfjs']).default('onnx'))
    .option('--max-shard-size <size>', 'largest shard', '5GB')
    .option('--force', 'replace an existing model folder at the destination')
    .option('--dry-run', dryRun)
    .option('--json', 'print one JSON object on stdout');
}

function reductionArgs(model: string, opts: Record<string, string | boolean | undefined>) {
  return {
    model,
    stats: String(opts.stats),
    method: String(opts.method),
    keep: num(opts.keep, '--keep', 1),
    ratio: real(opts.ratio, '--ratio'),
    output: String(opts.output),
    seed: num(opts.seed, '--seed', 0),
    backend: opts.backend as 'onnx' | 'ref' | 'tfjs',
    maxShardBytes: parseSize(String(opts.maxShardSize), '--max-shard-size'),
    force: !!opts.force,
    dryRun: !!opts.dryRun,
  };
}

/** "A-B" (or "A") as an inclusive layer range. */
function parseRange(v: string): [number, number] {
  const m = /^(\d+)(?:-(\d+))?$/.exec(v.trim());
  if (!m) throw new UsageError(`--layers ${JSON.stringify(v)} is not a range like 0-15`);
  return [Number(m[1]), Number(m[2] ?? m[1])];
}

/** An optional integer flag value (undefined when absent). */
function num(v: unknown, flag: string, min: number): number | undefined {
  return v === undefined ? undefined : parseIntArg(String(v), flag, min);
}

/** An optional real-number flag value. */
function real(v: unknown, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`${flag} ${JSON.stringify(v)} is not a number`);
  return n;
}

function parseSets(items: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq < 1) throw new UsageError(`--set ${JSON.stringify(item)} is not key=value`);
    const value = item.slice(eq + 1);
    try {
      out[item.slice(0, eq)] = JSON.parse(value);
    } catch {
      out[item.slice(0, eq)] = value;
    }
  }
  return out;
}
