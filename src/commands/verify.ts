/** `moe verify MODEL`: re-opens a checkpoint and checks it whole (src/model/verify.ts); --nan reads every value. */
import { checkFinite, verifyCheckpoint, VerifyReport } from '../model/verify';
import { CommandSpec, JSON_OUTPUT, MODEL_ARG } from './spec';

function formatVerify(x: VerifyReport): string {
  const values =
    x.values_checked !== null
      ? `; ${x.values_checked} values${x.nonfinite.length ? `, NaN/Inf in ${x.nonfinite.length} tensor(s)` : ', all finite'}`
      : '';
  return `ok: ${x.model} (${x.model_type}), ${x.tensors} tensors in ${x.shards} shard(s)${x.indexed ? ' with an index' : ''}, ${(x.bytes / 1e6).toFixed(1)} MB${values}`;
}

export const verifySpec: CommandSpec<VerifyReport> = {
  name: 'verify',
  summary:
    're-open a checkpoint and check it whole: shards, index, config against tensors, packed weights; --nan: every value finite',
  args: [MODEL_ARG],
  options: [
    { flag: '--nan', type: 'bool', description: 'also read every floating value and fail on NaN or Inf' },
    JSON_OUTPUT,
  ],
  examples: ['moe verify ./model-int4', 'moe verify ./model --nan --json'],
  run: ([model], o) => verifyCheckpoint(model, { nan: o.nan as boolean }),
  format: formatVerify,
  check: checkFinite,
};
