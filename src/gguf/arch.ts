/**
 * What llama.cpp expects of each architecture in a GGUF file: its architecture name, the hyperparameter keys,
 * and the tensor names, with the routed experts of a layer stacked into one tensor per projection
 * (ffn_{gate,up,down}_exps, [experts, out, in]). Names and keys follow llama.cpp's convert_hf_to_gguf.py and
 * gguf-py's constants. The keys and tensors every architecture shares are written here; each family gives its
 * llama.cpp name, its own keys, warnings and attention tensors (Architecture.ggufMapping in src/model/*.ts: e.g.
 * Mixtral is llama.cpp's "llama" with experts, its q/k rows permuted from Hugging Face's rotate-half RoPE layout
 * to llama.cpp's interleaved one, as that converter does). Experts with biases (gpt-oss) get them stacked the same
 * way (ffn_{gate,up,down}_exps.bias, [experts, out], F32); a router whose bias is part of its logits (gpt-oss)
 * writes it as ffn_gate_inp.bias, a selection-only bias (DeepSeek-V3) as exp_probs_b.bias.
 */
import { CheckpointError } from '../errors';
import type { Architecture, Proj } from '../model/arch';
import { ropeBase } from '../model/forward/rope';
import { forwardSpec } from '../model/forward/spec';
import type { GgufMapping, GgufSource } from '../model/gguf-map';
import { architectures } from '../model/registry';
import type { GgufValue } from './writer';

export type { GgufSource } from '../model/gguf-map';

export interface GgufModel {
  arch: string;
  /** What llama.cpp will run differently from the checkpoint's own model. */
  warnings: string[];
  metadata: [string, GgufValue][];
  tensors: GgufSource[];
}

const u32 = (value: number): GgufValue => ({ type: 'u32', value });
const f32 = (value: number): GgufValue => ({ type: 'f32', value });

/** The keys every architecture writes, the rope scaling ones, then the family's own (Architecture.ggufMapping). */
export function ggufModel(a: Architecture, shapes: Map<string, number[]>): GgufModel {
  const spec = forwardSpec(a);
  const rope = spec.rope;
  const unsupported = () => {
    const types = architectures
      .families()
      .filter((f) => f.ggufReader)
      .map((f) => f.modelType);
    return new CheckpointError(`GGUF output for ${a.modelType} is not supported yet (supported: ${types.join(', ')})`, {
      file: a.dir,
      hint: "write --format packed or dequantized, then use llama.cpp's convert_hf_to_gguf.py",
    });
  };
  if (!architectures.get(a.modelType)?.ggufReader) throw unsupported();
  const map = a.ggufMapping(spec.attention, rope);
  if (!map) throw unsupported();
  // HunYuan's NTK-alpha rotary is a plain one with a raised base (convert_hf_to_gguf.py writes that base)
  const att = spec.attention;
  const rotary = att.kind === 'gqa' ? (att.ropeDim ?? att.headDim) : att.ropeDim;
  const alpha = rope.rope_type === 'dynamic' && typeof rope.alpha === 'number';
  const plain = ['default', 'yarn', 'linear'].includes(String(rope.rope_type ?? 'default'));
  if (!plain && !alpha && !map.ownRope) {
    throw new CheckpointError(`GGUF output with rope_type ${JSON.stringify(rope.rope_type)} is not supported yet`, {
      file: a.dir,
      hint: 'default, linear and yarn RoPE are written to GGUF',
    });
  }
  const arch = map.arch;
  const k = (name: string) => `${arch}.${name}`;
  const metadata: [string, GgufValue][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.quantization_version', u32(2)],
    [k('context_length'), u32(spec.maxPositions)],
    [k('embedding_length'), u32(a.hidden)],
    [k('block_count'), u32(a.numLayers)],
    [k('feed_forward_length'), u32(map.feedForwardLength)],
    [k('attention.head_count'), u32(spec.attention.heads)],
    [k('rope.freq_base'), f32(ropeBase(rope, rotary))],
    [k('attention.layer_norm_rms_epsilon'), f32(spec.eps)],
    [k('expert_count'), u32(a.numExperts)],
    [k('expert_used_count'), u32(a.topK)],
  ];
  if (rope.rope_type === 'yarn' || rope.rope_type === 'linear') {
    metadata.push(
      [k('rope.scaling.type'), { type: 'string', value: String(rope.rope_type) }],
      [k('rope.scaling.factor'), f32(Number(rope.factor ?? 1))],
    );
    if (rope.original_max_position_embeddings !== undefined)
      metadata.push([k('rope.scaling.original_context_length'), u32(Number(rope.original_max_position_embeddings))]);
  }
  for (const [key, value] of map.keys) metadata.push([k(key), value]);
  return { arch, metadata, tensors: ggufTensors(a, shapes, map), warnings: map.warnings };
}

/** The GGUF tensors, in llama.cpp's order: routed experts stacked per projection, absent tensors left out. */
function ggufTensors(a: Architecture, shapes: Map<string, number[]>, map: GgufMapping): GgufSource[] {
  const tensors: GgufSource[] = (map.computed ?? []).map(({ name, values }) => ({
    name,
    shape: [values.length],
    from: [],
    kind: 'norm',
    values,
  }));
  const one = (name: string, from: string, kind: GgufSource['kind'], extra: Partial<GgufSource> = {}) => {
    if (!shapes.has(from)) return;
    let shape = shapes.get(from)!;
    if (kind !== 'norm' && shape.length === 2 && shape[0] === 1 && name.includes('shexp')) shape = [shape[1]]; // shared_expert_gate [1, h] → {h}
    tensors.push({ name, shape, from: [from], kind, ...extra });
  };
  // PhiMoE: what writes into the residual stream has its mean removed (GgufTransform.center); a tied embedding
  // is also the output head, so it keeps its values.
  const centered = (along: 'rows' | 'cols'): Partial<GgufSource> =>
    map.centerResidual ? { transform: { center: along } } : {};
  const embed = a.tieEmbeddings ? {} : centered('cols');
  const ffn = (b: string, l: number, names: Record<Proj, string>, key: (proj: Proj) => string) => {
    for (const proj of ['gate', 'up', 'down'] as Proj[]) {
      const down = proj === 'down' ? centered('rows') : {};
      one(`${b}.ffn_${names[proj]}.weight`, key(proj), 'weight', { layer: l, proj, ...down });
    }
  };
  one('token_embd.weight', 'model.embed_tokens.weight', 'weight', { proj: 'embed', ...embed });
  // Zero-centred RMSNorms (Qwen3-Next: x · (1 + w)) are stored as 1 + w: llama.cpp multiplies by the weight.
  const norm: Partial<GgufSource> = a.normOffset ? { transform: { add: a.normOffset } } : {};
  for (let l = 0; l < a.numLayers; l++) {
    const p = `model.layers.${l}`;
    const b = `blk.${l}`;
    one(`${b}.attn_norm.weight`, `${p}.input_layernorm.weight`, 'norm', { layer: l, ...norm });
    one(`${b}.attn_norm.bias`, `${p}.input_layernorm.bias`, 'norm', { layer: l }); // LayerNorms (PhiMoE)
    for (const t of map.attentionTensors(l, b)) {
      const proj = t.kind === 'weight' ? { proj: 'attn' as const } : {};
      const { permuteHeads, splitKvB } = t;
      const out = t.name.startsWith(`${b}.attn_output.`);
      const transform = t.transform ?? (out ? centered('rows').transform : undefined);
      const extra: Partial<GgufSource> = { layer: l, ...proj, permuteHeads, splitKvB, transform };
      if (t.shape) tensors.push({ name: t.name, shape: t.shape, from: [t.from], kind: t.kind, ...extra });
      else one(t.name, t.from, t.kind, extra);
    }
    one(`${b}.attn_q_norm.weight`, `${p}.self_attn.q_norm.weight`, 'norm', { layer: l, ...norm });
    one(`${b}.attn_k_norm.weight`, `${p}.self_attn.k_norm.weight`, 'norm', { layer: l, ...norm });
    const ffnNorm = `${b}.${map.postAttentionNorm ?? 'ffn_norm'}`;
    one(`${ffnNorm}.weight`, `${p}.post_attention_layernorm.weight`, 'norm', { layer: l, ...norm });
    one(`${ffnNorm}.bias`, `${p}.post_attention_layernorm.bias`, 'norm', { layer: l });
    if (a.isMoeLayer(l)) {
      one(`${b}.ffn_gate_inp.weight`, a.routerKey(l), 'router', { layer: l });
      // A router with a bias in its logits (gpt-oss) has ffn_gate_inp.bias; a selection-only bias is exp_probs_b.
      const bias = a.correctionBiasKey(l);
      if (bias && a.routing.logitBias) one(`${b}.ffn_gate_inp.bias`, bias, 'router', { layer: l });
      for (const [proj, gg] of [
        ['gate', 'ffn_gate_exps'],
        ['up', 'ffn_up_exps'],
        ['down', 'ffn_down_exps'],
      ] as [Proj, string][]) {
        const from = [...Array(a.numExperts).keys()].map((e) => a.expertKey(l, e, proj));
        const shape = [a.numExperts, ...shapes.get(from[0])!];
        const down = proj === 'down' ? centered('rows') : {};
        tensors.push({ name: `${b}.${gg}.weight`, shape, from, kind: 'weight', layer: l, proj, ...down });
        // Expert biases (gpt-oss): [E, out], F32, stacked like the weights.
        const biases = [...Array(a.numExperts).keys()].map((e) => a.expertBiasKey(l, e, proj));
        if (biases.every((k): k is string => k !== undefined && shapes.has(k)))
          tensors.push({
            name: `${b}.${gg}.bias`,
            shape: [a.numExperts, shape[1]],
            from: biases,
            kind: 'norm',
            layer: l,
          });
      }
      // ({n_expert} in llama.cpp; ERNIE 4.5 stores it [1, E])
      if (bias && !a.routing.logitBias) one(`${b}.exp_probs_b.bias`, bias, 'norm', { layer: l, shape: [a.numExperts] });
      const shexp = { gate: 'gate_shexp', up: 'up_shexp', down: 'down_shexp' };
      ffn(b, l, shexp, (proj) => `${a.sharedExpertPrefix(l)}.${proj}_proj.weight`);
      one(`${b}.ffn_gate_inp_shexp.weight`, a.sharedGateKey(l), 'router', { layer: l });
    } else {
      const dense = a.denseMlpPrefix(l);
      ffn(b, l, { gate: 'gate', up: 'up', down: 'down' }, (proj) => `${dense}.${proj}_proj.weight`);
    }
  }
  one('output_norm.weight', 'model.norm.weight', 'norm', norm);
  one('output_norm.bias', 'model.norm.bias', 'norm');
  one('output.weight', a.tieEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight', 'weight', { proj: 'output' });
  if (a.headBias) one('output.bias', a.headBias, 'norm');
  return tensors;
}

/**
 * llama.cpp's q/k row order for "llama" models: within each head, HF keeps the two rotary halves apart
 * (rows 0..d/2 then d/2..d); llama.cpp interleaves them (row 2i from the first half, 2i+1 from the second).
 */
export function permuteRows(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      out.set(w.subarray((h * d + i) * cols, (h * d + i + 1) * cols), (h * d + 2 * i) * cols);
      out.set(w.subarray((h * d + d / 2 + i) * cols, (h * d + d / 2 + i + 1) * cols), (h * d + 2 * i + 1) * cols);
    }
  }
  return out;
}

/** The inverse of permuteRows: llama.cpp's interleaved q/k rows back to HF's rotate-half order. */
export function unpermuteRows(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      out.set(w.subarray((h * d + 2 * i) * cols, (h * d + 2 * i + 1) * cols), (h * d + i) * cols);
      out.set(w.subarray((h * d + 2 * i + 1) * cols, (h * d + 2 * i + 2) * cols), (h * d + d / 2 + i) * cols);
    }
  }
  return out;
}
