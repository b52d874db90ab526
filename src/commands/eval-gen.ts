/** `moe eval --task` on generative task files (src/eval/gen-tasks.ts): KV-cache decoders for the model and baseline. */
import type { Backend } from '../backend/backend';
import { GenModel, GenTaskRun, loadGenTask, runGenTasks } from '../eval/gen-tasks';
import { maxLengthOf } from '../eval/tasks';
import { Decoder } from '../model/forward/decode';
import type { Context } from '../ui/progress';
import type { openModel } from './open-model';

/** Tokens generated per item unless --max-new-tokens says otherwise (lm-eval's max_gen_toks is 256). */
export const DEFAULT_TASK_NEW_TOKENS = 64;

type Opened = ReturnType<typeof openModel>;

function genModel(o: Opened, be: Backend): GenModel {
  return {
    decoder: new Decoder(o.reader, o.arch, be),
    tokenizer: o.tokenizer(),
    eos: o.eos(),
    maxLength: maxLengthOf(o.ckpt.config as Record<string, unknown>),
  };
}

/** Runs the generative task files on the model (and the baseline); nothing when there are none. */
export async function runGenerativeTasks(
  files: string[],
  opts: { limit?: number; maxNewTokens?: number },
  m: Opened,
  b: Opened | undefined,
  be: Backend,
  ctx: Context,
): Promise<GenTaskRun> {
  if (!files.length) return { reports: {}, samples: {} };
  const tasks = files.map((f) => loadGenTask(f, opts.limit));
  const items = tasks.reduce((s, t) => s + t.items.length, 0);
  const progress = ctx.progress('generative tasks', items * (b ? 2 : 1), 'items');
  try {
    return await runGenTasks(tasks, genModel(m, be), b ? genModel(b, be) : undefined, {
      maxNewTokens: opts.maxNewTokens ?? DEFAULT_TASK_NEW_TOKENS,
      progress,
    });
  } finally {
    progress.done();
  }
}
