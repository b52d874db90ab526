/**
 * AWQ's scale groups (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
 * Acceleration"): the weights that read one input x, and the tensor that produces x, so that
 *   W·x = (W·diag(s))·(diag(s)⁻¹·x)
 * holds exactly when the consumers' columns are multiplied by s and the producer's output is divided by s.
 * Per decoder layer, in the forward's order:
 *   attn_in   input_layernorm → q_proj, k_proj, v_proj (grouped-query attention; MLA: q_a_proj or q_proj, and
 *             kv_a_proj_with_mqa)
 *   q_latent  MLA: q_a_layernorm → q_b_proj;   kv_latent  MLA: kv_a_layernorm → kv_b_proj
 *   v_o       v_proj rows (and bias) → o_proj columns; o_proj column (head h, dim d) reads kv head ⌊h / (H/KV)⌋, so
 *             the scale is one per (kv head, d), repeated over the heads of the group (MLA: kv_b_proj's v rows of
 *             head h → o_proj column (h, d), one scale each)
 *   mlp_in    post_attention_layernorm → router, every routed expert's gate and up, the shared expert's gate and up
 *             and the shared-expert gate (a dense layer: its MLP's gate and up)
 *   up_down   each MLP's up_proj rows (and bias) → its down_proj columns (silu(gate·x)·up·x is linear in up·x)
 * A norm y = (off + w)·x̂ (RMSNorm; off the architecture's normOffset) becomes w' = (off + w)/s − off.
 * Where the identity does not hold exactly, the group is not formed and the reason is returned: linear attention
 * (not implemented), OLMoE's clip_qkv (clamps v: v_o), gpt-oss's clamped SwiGLU (clamps up: up_down of routed
 * experts), DeepSeek-V3.2's indexer (reads the normed input and q_a_layernorm's output: attn_in, q_latent).
 */
import type { Architecture, Proj, TensorSpec } from '../model/arch';
import type { MlaSpec } from '../model/forward/attention';
import { forwardSpec } from '../model/forward/spec';

/**
 * What divides its output by s: a norm's weight, or a projection's rows (and its bias); `rows` maps each row to its
 * scale index, −1 for rows left alone (MLA's kv_b_proj: only the v rows), and is absent when row r takes s[r].
 */
export type Producer =
  { kind: 'norm'; name: string } | { kind: 'rows'; name: string; bias?: string; rows?: Int32Array };

export interface ScaleGroup {
  key: string;
  layer: number;
  kind: 'attn_in' | 'v_o' | 'q_latent' | 'kv_latent' | 'mlp_in' | 'up_down';
  producer: Producer;
  /** Weights whose columns are multiplied by s. */
  consumers: string[];
  /** The weight whose calibrated input (imatrix) gives the activation magnitude m. */
  source: string;
  /** Length of s (the producer's outputs). */
  size: number;
  /** v_o: the scale index of each consumer column (undefined: column c takes s[c]). */
  expand?: Int32Array;
}

export interface Skipped {
  layer: number;
  kind: ScaleGroup['kind'];
  reason: string;
}

interface LayerParts {
  attn: Map<string, string>;
  attnBias: Map<string, string>;
  norms: Map<string, string>;
  /** Tensors outside the dense forward (DeepSeek-V3.2's indexer, which reads the attention's normed input). */
  aux: boolean;
  router?: string;
  sharedGate?: string;
  experts: Map<number, Partial<Record<Proj, string>>>;
  expertBias: Map<number, Partial<Record<Proj, string>>>;
  shared: Partial<Record<Proj, string>>;
  dense: Partial<Record<Proj, string>>;
  denseBias: Partial<Record<Proj, string>>;
  shapes: Map<string, number[]>;
}

/** The tensors of one layer by role, from the architecture's schema. */
function layerParts(schema: TensorSpec[], layer: number): LayerParts {
  const p: LayerParts = {
    attn: new Map(),
    attnBias: new Map(),
    norms: new Map(),
    aux: false,
    experts: new Map(),
    expertBias: new Map(),
    shared: {},
    dense: {},
    denseBias: {},
    shapes: new Map(),
  };
  for (const s of schema) {
    const r = s.role;
    if (!('layer' in r) || r.layer !== layer) continue;
    p.shapes.set(s.name, s.shape);
    if (r.kind === 'attn' && s.shape.length === 2 && !r.bias) p.attn.set(r.name, s.name);
    else if (r.kind === 'attn' && r.bias) p.attnBias.set(r.name, s.name);
    else if (r.kind === 'norm') p.norms.set(r.name, s.name);
    else if (r.kind === 'aux') p.aux = true;
    else if (r.kind === 'router') p.router = s.name;
    else if (r.kind === 'shared_gate') p.sharedGate = s.name;
    else if (r.kind === 'expert')
      (p.experts.get(r.expert) ?? p.experts.set(r.expert, {}).get(r.expert)!)[r.proj] = s.name;
    else if (r.kind === 'expert_bias')
      (p.expertBias.get(r.expert) ?? p.expertBias.set(r.expert, {}).get(r.expert)!)[r.proj] = s.name;
    else if (r.kind === 'shared') p.shared[r.proj] = s.name;
    else if (r.kind === 'dense_mlp') (r.bias ? p.denseBias : p.dense)[r.proj] = s.name;
  }
  return p;
}

/** The scale groups of every layer, and the groups not formed with their reasons. */
export function scaleGroups(arch: Architecture): { groups: ScaleGroup[]; skipped: Skipped[] } {
  const groups: ScaleGroup[] = [];
  const skipped: Skipped[] = [];
  const att = forwardSpec(arch).attention;
  const byLayer = new Map<number, TensorSpec[]>();
  for (const s of arch.schema())
    if ('layer' in s.role) (byLayer.get(s.role.layer) ?? byLayer.set(s.role.layer, []).get(s.role.layer)!).push(s);
  for (let l = 0; l < arch.numLayers; l++) {
    const parts = layerParts(byLayer.get(l) ?? [], l);
    const skip = (kind: ScaleGroup['kind'], reason: string) => skipped.push({ layer: l, kind, reason });
    if (arch.linearAttention(l)) {
      for (const kind of ['attn_in', 'v_o'] as const) skip(kind, 'linear attention (Gated DeltaNet): not implemented');
    } else if (att.kind === 'mla') {
      groups.push(...mlaGroups(arch, l, parts, att, skip));
    } else {
      groups.push(...attentionGroups(arch, l, parts, att, skip));
    }
    groups.push(...mlpGroups(arch, l, parts, skip));
  }
  return { groups, skipped };
}

function attentionGroups(
  arch: Architecture,
  l: number,
  parts: LayerParts,
  att: { heads: number; kvHeads: number; headDim: number; clipQkv?: number },
  skip: (kind: ScaleGroup['kind'], reason: string) => void,
): ScaleGroup[] {
  const [q, k, v, o] = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((n) => parts.attn.get(n));
  if (!q || !k || !v || !o) {
    skip('attn_in', 'no q_proj/k_proj/v_proj/o_proj');
    return [];
  }
  const out: ScaleGroup[] = [
    {
      key: `layers.${l}.attn_in`,
      layer: l,
      kind: 'attn_in',
      producer: { kind: 'norm', name: `model.layers.${l}.input_layernorm.weight` },
      consumers: [q, k, v],
      source: q,
      size: arch.hidden,
    },
  ];
  if (att.clipQkv !== undefined) {
    skip('v_o', 'clip_qkv clamps v, so scaling v_proj does not commute with it');
    return out;
  }
  const { heads: H, kvHeads: KV, headDim: d } = att;
  const expand = new Int32Array(H * d);
  for (let h = 0; h < H; h++) for (let j = 0; j < d; j++) expand[h * d + j] = Math.floor(h / (H / KV)) * d + j;
  out.push({
    key: `layers.${l}.v_o`,
    layer: l,
    kind: 'v_o',
    producer: { kind: 'rows', name: v, bias: parts.attnBias.get('v_proj') },
    consumers: [o],
    source: o,
    size: KV * d,
    expand,
  });
  return out;
}

/**
 * Multi-head latent attention (DeepSeek-V2/V3): input_layernorm → q_a_proj (or q_proj) and kv_a_proj_with_mqa;
 * q_a_layernorm → q_b_proj; kv_a_layernorm → kv_b_proj; kv_b_proj's v rows (head h, dim d) → o_proj column (h, d).
 * DeepSeek-V3.2's indexer also reads the normed input and q_a_layernorm's output: those two groups are not formed.
 */
function mlaGroups(
  arch: Architecture,
  l: number,
  parts: LayerParts,
  att: MlaSpec,
  skip: (kind: ScaleGroup['kind'], reason: string) => void,
): ScaleGroup[] {
  const a = (n: string) => parts.attn.get(n);
  const [qa, q, kva, kvb, o] = ['q_a_proj', 'q_proj', 'kv_a_proj_with_mqa', 'kv_b_proj', 'o_proj'].map(a);
  const [qNorm, kvNorm] = ['q_a_layernorm', 'kv_a_layernorm'].map((n) => parts.norms.get(n));
  const group = (kind: ScaleGroup['kind'], producer: Producer, consumers: string[], size: number): ScaleGroup => ({
    key: `layers.${l}.${kind}`,
    layer: l,
    kind,
    producer,
    consumers,
    source: consumers[0],
    size,
  });
  const out: ScaleGroup[] = [];
  const indexer = "DeepSeek-V3.2's indexer reads this input too";
  if (parts.aux) skip('attn_in', indexer);
  else if ((qa ?? q) && kva)
    out.push(
      group(
        'attn_in',
        { kind: 'norm', name: `model.layers.${l}.input_layernorm.weight` },
        [qa ?? q!, kva],
        arch.hidden,
      ),
    );
  if (qa && qNorm && a('q_b_proj')) {
    if (parts.aux) skip('q_latent', indexer);
    else out.push(group('q_latent', { kind: 'norm', name: qNorm }, [a('q_b_proj')!], att.qLoraRank!));
  }
  if (!kvb || !kvNorm || !o) return out;
  out.push(group('kv_latent', { kind: 'norm', name: kvNorm }, [kvb], att.kvLoraRank));
  const { heads: H, nopeDim: nope, vDim } = att;
  const rows = new Int32Array(H * (nope + vDim)).fill(-1);
  for (let h = 0; h < H; h++) for (let d = 0; d < vDim; d++) rows[h * (nope + vDim) + nope + d] = h * vDim + d;
  out.push(group('v_o', { kind: 'rows', name: kvb, rows }, [o], H * vDim));
  return out;
}

function mlpGroups(
  arch: Architecture,
  l: number,
  parts: LayerParts,
  skip: (kind: ScaleGroup['kind'], reason: string) => void,
): ScaleGroup[] {
  const h = arch.hidden;
  const gu = (m: Partial<Record<Proj, string>>) => [m.gate, m.up].filter((n): n is string => !!n);
  const moe = arch.isMoeLayer(l);
  const consumers = moe
    ? [
        ...(parts.router ? [parts.router] : []),
        ...[...parts.experts.values()].flatMap(gu),
        ...gu(parts.shared),
        ...(parts.sharedGate ? [parts.sharedGate] : []),
      ]
    : gu(parts.dense);
  const source = moe ? parts.router : parts.dense.gate;
  const out: ScaleGroup[] = [];
  if (!source || consumers.length === 0) skip('mlp_in', 'no router or MLP gate to read the input statistics of');
  else
    out.push({
      key: `layers.${l}.mlp_in`,
      layer: l,
      kind: 'mlp_in',
      producer: { kind: 'norm', name: `model.layers.${l}.post_attention_layernorm.weight` },
      consumers,
      source,
      size: h,
    });
  const upDown = (key: string, m: Partial<Record<Proj, string>>, bias?: string) => {
    if (m.up && m.down && parts.shapes.get(m.up)![0] > 0)
      out.push({
        key,
        layer: l,
        kind: 'up_down',
        producer: { kind: 'rows', name: m.up, bias },
        consumers: [m.down],
        source: m.down,
        size: parts.shapes.get(m.up)![0],
      });
  };
  if (moe) {
    if (arch.expertGlu) skip('up_down', `${arch.modelType}'s routed experts clamp up_proj's output`);
    else for (const [e, m] of parts.experts) upDown(`layers.${l}.experts.${e}.up_down`, m, parts.expertBias.get(e)?.up);
    upDown(`layers.${l}.shared.up_down`, parts.shared);
  } else {
    upDown(`layers.${l}.mlp.up_down`, parts.dense, parts.denseBias.up);
  }
  return out;
}
