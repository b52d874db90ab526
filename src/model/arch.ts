/**
 * Architecture adapters: for one model_type, the full list of tensors a checkpoint holds (names, shapes and
 * roles), the routing rule's parameters, and how to rewrite the config when experts are removed.
 * Tensor names follow Hugging Face transformers' modeling files, which are the reference.
 */
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import type { Checkpoint, Config } from '../io/checkpoint';
import { ConfigReader, expertCount, withExpertCount } from './config';
import type { AttentionSpec, GqaSpec, LayerAttention } from './forward/attention';
import type { DeltaNetSpec } from './forward/deltanet';
import type { GgufAttentionTensor, GgufMapping, GgufReader } from './gguf-map';

export type Proj = 'gate' | 'up' | 'down';
/** The top-k's config key and its aliases (ERNIE 4.5: moe_k; HunYuan: moe_topk). */
const TOP_K_KEYS = ['num_experts_per_tok', 'moe_k', 'moe_topk'];
export const PROJS: readonly Proj[] = ['gate', 'up', 'down'];

export type TensorRole =
  | { kind: 'embed' }
  | { kind: 'lm_head' }
  | { kind: 'final_norm' }
  | { kind: 'norm'; layer: number; name: string }
  | { kind: 'attn'; layer: number; name: string; bias?: boolean }
  /** A tensor that does not change the dense forward (DeepSeek-V3.2's DSA indexer): kept as stored by every command. */
  | { kind: 'aux'; layer: number; name: string }
  | { kind: 'router'; layer: number }
  | { kind: 'router_bias'; layer: number }
  | { kind: 'expert'; layer: number; expert: number; proj: Proj }
  | { kind: 'expert_bias'; layer: number; expert: number; proj: Proj }
  | { kind: 'shared'; layer: number; proj: Proj }
  | { kind: 'shared_gate'; layer: number }
  | { kind: 'dense_mlp'; layer: number; proj: Proj; bias?: boolean };

export interface TensorSpec {
  name: string;
  shape: number[];
  role: TensorRole;
}

export interface RoutingRule {
  /**
   * How router logits become scores: softmax or sigmoid, then top-k; or PhiMoE's sparsemixer (top-1 or top-2, each
   * weighted by a softmax over the experts within `jitterEps` of it; see forward/moe.ts sparsemixer).
   */
  scoring: 'softmax' | 'sigmoid' | 'sparsemixer';
  /** sparsemixer: router_jitter_noise, the relative distance (×2) within which experts share a slot's softmax. */
  jitterEps?: number;
  topK: number;
  /** Renormalise the selected weights to sum to 1. */
  normTopK: boolean;
  /** Group-limited selection (DeepSeek): experts split into nGroup groups, the best topkGroup groups kept. */
  nGroup: number;
  topkGroup: number;
  /** How a group is scored: its best expert (DeepSeek-V2) or the sum of its best two (DeepSeek-V3). */
  groupScore: 'max' | 'top2sum';
  /** What the experts of dropped groups score: 0 (DeepSeek-V2's masked_fill 0.0) or −∞ (DeepSeek-V3). */
  groupMask: 'zero' | 'neg_inf';
  /** The selected weights are multiplied by this (DeepSeek). */
  scalingFactor: number;
  /** A per-expert bias added to the scores for selection only (DeepSeek-V3 e_score_correction_bias). */
  correctionBias: boolean;
  /**
   * The router is a linear layer with a bias (gpt-oss: `mlp.router.bias`, named by correctionBiasKey so that it is
   * sliced with the router rows): the bias is part of the logits, which the router's linear returns.
   */
  logitBias: boolean;
  /**
   * Llama 4: the expert is chosen on the raw logits (torch.topk of them) and its weight multiplies the expert's input,
   * not its output: y = E(g · x); the outputs are summed unweighted.
   */
  inputScaled?: boolean;
  /** Fewer experts per token, token by token (`moe eval --top-p` / `--skip-ratio`; src/model/top-k.ts). */
  dynamic?: DynamicRouting;
}

/**
 * Dynamic expert counts, applied after the model's own selection and weighting of its top-k: a dropped slot's weight
 * becomes exactly 0 and the others stay as the model computed them (no renormalisation).
 */
export interface DynamicRouting {
  /** "Harder Tasks Need More Experts" (Huang et al., ACL 2024): the fewest selected experts whose mass reaches P. */
  topP?: number;
  /** NAEE's dynamic skipping (Lu et al., ACL 2024): drop an expert whose weight is below β × the largest. */
  skipRatio?: number;
  /** When given, counts the tokens routed and the experts they keep (for the active-parameter report). */
  count?: { tokens: number; experts: number };
}

/**
 * gpt-oss's clamped SwiGLU of a routed expert (transformers GptOssExperts._apply_gate): gate = min(gate, limit),
 * up = clamp(up, −limit, limit), act = (up + 1) · gate · σ(alpha · gate).
 */
export interface ClampedGlu {
  alpha: number;
  limit: number;
}

/** Softmax over the router logits, top-k, no groups, no scaling (Mixtral, Qwen2/3-MoE, OLMoE). */
export function softmaxTopK(topK: number, normTopK: boolean): RoutingRule {
  return {
    scoring: 'softmax',
    topK,
    normTopK,
    nGroup: 1,
    topkGroup: 1,
    groupScore: 'max',
    groupMask: 'zero',
    scalingFactor: 1,
    correctionBias: false,
    logitBias: false,
  };
}

/** The stored names of one MoE layer's fused experts (Architecture.fusedExperts; views and writing: ./fused.ts). */
export interface FusedExpertLayout {
  /** [E, H, 2I]: gate and up projections, transposed ([in, out]), side by side on the last axis. */
  gateUp(layer: number): string;
  /** [E, 2I], in the same order as gateUp's last axis. */
  gateUpBias?(layer: number): string;
  /** [E, I, H]: the down projection, transposed. */
  down(layer: number): string;
  /** [E, H]. */
  downBias?(layer: number): string;
  /** Gate and up alternate on the last axis (gpt-oss); otherwise gate is the first half. */
  interleaved: boolean;
  /**
   * Stored in nn.Linear's orientation, each expert [out, in]: gateUp [E, 2I, H] (gate rows, then up rows), down
   * [E, H, I] (GraniteMoE's input_linear / output_linear); otherwise transposed as described above.
   */
  outIn?: boolean;
}

export abstract class Architecture {
  abstract readonly modelType: string;
  /** The expert-count key written when the config holds none (never happens for real checkpoints). */
  protected abstract readonly expertCountKey: string;

  readonly cfg: ConfigReader;
  readonly numLayers: number;
  readonly hidden: number;
  readonly vocab: number;
  readonly numExperts: number;
  readonly topK: number;
  readonly tieEmbeddings: boolean;
  private specs?: TensorSpec[];
  private byName?: Map<string, TensorSpec>;

  constructor(
    readonly config: Config,
    readonly dir: string,
  ) {
    this.cfg = new ConfigReader(config, dir);
    this.numLayers = this.cfg.int('num_hidden_layers');
    this.hidden = this.cfg.int('hidden_size');
    this.vocab = this.cfg.int('vocab_size');
    this.numExperts = expertCount(this.cfg);
    this.topK = this.cfg.int(TOP_K_KEYS);
    this.tieEmbeddings = this.cfg.bool('tie_word_embeddings', this.tiedByDefault);
    if (this.numExperts < 1) throw this.cfg.error('the routed expert count is 0: this is a dense model');
    if (this.topK < 1 || this.topK > this.numExperts)
      throw this.cfg.error(`num_experts_per_tok ${this.topK} is not between 1 and the expert count ${this.numExperts}`);
  }

  /** transformers' default of tie_word_embeddings for this family (ERNIE 4.5: true); read in the constructor. */
  protected get tiedByDefault(): boolean {
    return false;
  }

  abstract isMoeLayer(layer: number): boolean;
  /** Width of one routed expert (its intermediate size). */
  abstract get expertWidth(): number;
  /** Shared experts per MoE layer (as separate modules: Qwen2-MoE 1; DeepSeek n_shared_experts fused into one MLP). */
  abstract get sharedExperts(): number;
  abstract get routing(): RoutingRule;
  /** Attention and norm tensors of one layer. */
  protected abstract attentionSpecs(layer: number): TensorSpec[];
  /** The MLP part of one layer that is not a routed expert: dense MLP, router, shared expert. */
  protected abstract mlpSpecs(layer: number): TensorSpec[];

  /** The attention of the forward pass (forward/spec.ts adds the rope tables, eps and positions). */
  abstract attentionSpec(rope: Record<string, unknown>, eps: number): AttentionSpec;

  /** How shared experts enter the MoE block: added (DeepSeek), scaled by sigmoid(shared_expert_gate·x) (Qwen2-MoE). */
  get sharedMode(): 'none' | 'gated' | 'plain' {
    return 'none';
  }

  /** Prefix of the shared expert's gate/up/down projections. */
  sharedExpertPrefix(layer: number): string {
    return `${this.moePrefix(layer)}.shared_expert`;
  }

  /** The shared expert's gate (sharedMode 'gated'). */
  sharedGateKey(layer: number): string {
    return `${this.moePrefix(layer)}.shared_expert_gate.weight`;
  }

  /**
   * What llama.cpp calls this model in GGUF (src/gguf/arch.ts writes the common keys and tensors around it);
   * undefined when it has no GGUF form. Throws CheckpointError for a config llama.cpp cannot run.
   */
  ggufMapping(_att: AttentionSpec, _rope: Record<string, unknown>): GgufMapping | undefined {
    return undefined;
  }

  /** llama.cpp renormalises the top-k weights of some architectures always, of others never (build_moe_ffn). */
  protected normTopKWarnings(ggufArch: string, llamaNorm: boolean): string[] {
    if (this.routing.normTopK === llamaNorm) return [];
    const how = llamaNorm ? 'always' : 'never';
    return [
      `llama.cpp ${how} renormalises the top-k routing weights of ${ggufArch}; ` +
        `this model has norm_topk_prob ${this.routing.normTopK}, so llama.cpp weighs the experts differently`,
    ];
  }

  /** Grouped-query attention with these head sizes and q/k norm (Mixtral, Qwen, OLMoE). */
  protected gqaSpec(headDim: number, qkNorm: GqaSpec['qkNorm'], eps: number, clipQkv?: number): GqaSpec {
    const { heads, kvHeads } = this.cfg.heads();
    return { kind: 'gqa', heads, kvHeads, headDim, qkNorm, clipQkv, scale: headDim ** -0.5, eps };
  }

  /** Prefix of the MoE block: `model.layers.L.mlp` (Mixtral: `block_sparse_moe`). */
  moePrefix(layer: number): string {
    return `model.layers.${layer}.mlp`;
  }

  projName(p: Proj): string {
    return `${p}_proj`;
  }

  /** How routed experts are stored when fused into one tensor per projection (gpt-oss); undefined: one per expert. */
  readonly fusedExperts?: FusedExpertLayout;

  /** The bias of an expert's projection, for experts with biases (gpt-oss); undefined: no biases. */
  expertBiasKey(_layer: number, _expert: number, _p: Proj): string | undefined {
    return undefined;
  }

  expertKey(layer: number, expert: number, p: Proj): string {
    return `${this.moePrefix(layer)}.experts.${expert}.${this.projName(p)}.weight`;
  }

  /** The routed experts' activation when it is gpt-oss's clamped SwiGLU; undefined: silu(gate) · up. */
  get expertGlu(): ClampedGlu | undefined {
    return undefined;
  }

  /** The linear attention (Gated DeltaNet) of a layer, when it has one instead of self-attention (Qwen3-Next). */
  linearAttention(_layer: number): DeltaNetSpec | undefined {
    return undefined;
  }

  /** Added to every RMSNorm weight but the linear attention's gated norm (Qwen3-Next's zero-centred norms: 1). */
  get normOffset(): number {
    return 0;
  }

  /** The sliding window of a layer's attention (a token sees itself and the window − 1 before it); undefined: all. */
  slidingWindow(_layer: number): number | undefined {
    return undefined;
  }

  /** How layer l's self-attention differs from plain causal rotary attention (NoPE, sliding window, chunks). */
  layerAttention(layer: number): LayerAttention {
    return { rope: true, window: this.slidingWindow(layer) };
  }

  /**
   * GraniteMoE's scalars: the embeddings are multiplied by `embedding`, each sub-layer's output by `residual` before
   * it is added to the residual stream, and the logits divided by `logits`; 1 for every other family.
   */
  get multipliers(): { embedding: number; residual: number; logits: number } {
    return { embedding: 1, residual: 1, logits: 1 };
  }

  /** PhiMoE: the layer and final norms are LayerNorms with a bias (`<norm>.bias`); RMSNorm for the others. */
  get layerNorms(): boolean {
    return false;
  }

  /** With layerNorms: RMSNorm plus the bias instead, the mean kept (PhiMoE as llama.cpp runs it, read from GGUF). */
  get biasedRmsNorms(): boolean {
    return false;
  }

  /** The lm_head's bias (PhiMoE with lm_head_bias), added to the logits; undefined: none. */
  get headBias(): string | undefined {
    return undefined;
  }

  /** Prefix of a dense layer's gate/up/down MLP (Llama 4: `feed_forward`). */
  denseMlpPrefix(layer: number): string {
    return `model.layers.${layer}.mlp`;
  }

  /** Refuses a window of `tokens` tokens that the forward pass would not run as the model does; default: any. */
  checkWindow(_tokens: number): void {}

  routerKey(layer: number): string {
    return `${this.moePrefix(layer)}.gate.weight`;
  }

  /** The selection bias that must be sliced with the router rows, if this model has one. */
  correctionBiasKey(_layer: number): string | undefined {
    return undefined;
  }

  get moeLayers(): number[] {
    return [...Array(this.numLayers).keys()].filter((l) => this.isMoeLayer(l));
  }

  /** Every tensor a checkpoint with this config holds, in a stable order. */
  schema(): TensorSpec[] {
    if (this.specs) return this.specs;
    const h = this.hidden;
    const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [this.vocab, h], role: { kind: 'embed' } }];
    for (let l = 0; l < this.numLayers; l++) {
      const p = `model.layers.${l}`;
      out.push({
        name: `${p}.input_layernorm.weight`,
        shape: [h],
        role: { kind: 'norm', layer: l, name: 'input_layernorm' },
      });
      out.push(...this.attentionSpecs(l));
      out.push({
        name: `${p}.post_attention_layernorm.weight`,
        shape: [h],
        role: { kind: 'norm', layer: l, name: 'post_attention_layernorm' },
      });
      out.push(...this.mlpSpecs(l));
      if (this.isMoeLayer(l)) {
        const w = this.expertWidth;
        for (let e = 0; e < this.numExperts; e++) {
          for (const proj of PROJS) {
            out.push({
              name: this.expertKey(l, e, proj),
              shape: proj === 'down' ? [h, w] : [w, h],
              role: { kind: 'expert', layer: l, expert: e, proj },
            });
            const bias = this.expertBiasKey(l, e, proj);
            if (bias)
              out.push({
                name: bias,
                shape: [proj === 'down' ? h : w],
                role: { kind: 'expert_bias', layer: l, expert: e, proj },
              });
          }
        }
      }
    }
    out.push({ name: 'model.norm.weight', shape: [h], role: { kind: 'final_norm' } });
    if (!this.tieEmbeddings) out.push({ name: 'lm_head.weight', shape: [this.vocab, h], role: { kind: 'lm_head' } });
    this.specs = out;
    return out;
  }

  /** The role of a tensor, or undefined for tensors outside the schema (kept and copied as they are). */
  classify(name: string): TensorRole | undefined {
    if (!this.byName) this.byName = new Map(this.schema().map((s) => [s.name, s]));
    return this.byName.get(name)?.role;
  }

  /** Checks that every tensor the config implies is present with the right shape. Reads headers only. */
  validate(ckpt: Checkpoint): void {
    for (const spec of this.schema()) {
      const t = ckpt.tensors.get(spec.name);
      if (!t) {
        throw new CheckpointError(`missing tensor "${spec.name}" that config.json implies`, {
          file: ckpt.dir,
          hint: 'the checkpoint is incomplete or its config does not match the weights',
        });
      }
      if (t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
        throw new CheckpointError(`tensor "${spec.name}" has shape [${t.shape}], config.json implies [${spec.shape}]`, {
          file: path.basename(t.file) === t.file ? ckpt.dir : t.file,
          hint: 'the config does not match the weights',
        });
      }
    }
  }

  /**
   * The config with `n` routed experts per MoE layer, and this object's top-k when it is not the config's (a view
   * made by withTopK: `moe prune --top-k`); every other key untouched.
   */
  rewriteConfig(n: number): Config {
    const out = withExpertCount(this.config, n, this.expertCountKey);
    if (this.topK !== this.cfg.int(TOP_K_KEYS)) {
      for (const k of TOP_K_KEYS) if (out[k] !== undefined) out[k] = this.topK; // the config holds one of them
      // gpt-oss's original config repeats it under its own name
      if (out.experts_per_token !== undefined) out.experts_per_token = this.topK;
    }
    return out;
  }
}

/**
 * Everything moe knows of one model_type that does not depend on a config: how to build its Architecture, its
 * synth preset, its tokenizer rule for GGUF and how a GGUF file of it is read back. One per family file,
 * registered in ./registry.ts.
 */
export interface ArchitectureFamily {
  modelType: string;
  create(config: Config, dir: string): Architecture;
  /** A tiny config with the keys and aliases transformers writes (`moe synth`, tests). */
  preset: Config;
  /** llama.cpp's tokenizer.ggml.pre for a byte-level BPE tokenizer without the GPT-2 regex (default: "default"). */
  ggufPreTokenizer?: string;
  /** How a GGUF file of this family's llama.cpp architecture becomes a config.json again. */
  ggufReader?: GgufReader;
}

/** Keys every synth preset shares. */
export const SYNTH_COMMON: Config = {
  vocab_size: 128,
  hidden_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_experts_per_tok: 2,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 512,
  tie_word_embeddings: false,
  hidden_act: 'silu',
};

/** llama.cpp's names for the four GQA projections, with their biases; q and k permuted for "llama" models. */
export function gqaGgufTensors(layer: number, blk: string, permute?: { q: number; k: number }): GgufAttentionTensor[] {
  const out: GgufAttentionTensor[] = [];
  const names = [
    ['q_proj', 'attn_q'],
    ['k_proj', 'attn_k'],
    ['v_proj', 'attn_v'],
    ['o_proj', 'attn_output'],
  ];
  for (const [hf, gg] of names) {
    const permuteHeads = hf === 'q_proj' ? permute?.q : hf === 'k_proj' ? permute?.k : undefined;
    const from = `model.layers.${layer}.self_attn.${hf}`;
    out.push({ name: `${blk}.${gg}.weight`, from: `${from}.weight`, kind: 'weight', permuteHeads });
    out.push({ name: `${blk}.${gg}.bias`, from: `${from}.bias`, kind: 'norm' });
  }
  return out;
}

/** Helpers for the adapters. */
export function linear(name: string, out: number, inp: number, role: TensorRole): TensorSpec {
  return { name, shape: [out, inp], role };
}

export function vector(name: string, n: number, role: TensorRole): TensorSpec {
  return { name, shape: [n], role };
}

/** A gate/up/down MLP under `prefix` (dense layers and shared experts). */
export function mlp(prefix: string, hidden: number, width: number, role: (p: Proj) => TensorRole): TensorSpec[] {
  return PROJS.map((p) =>
    linear(`${prefix}.${p}_proj.weight`, p === 'down' ? hidden : width, p === 'down' ? width : hidden, role(p)),
  );
}

/** Per-head RMSNorms of q and k, `self_attn.q_norm` / `k_norm` [width] (Qwen3, GLM-4.5, dots.llm1). */
export function qkNormSpecs(layer: number, width: number): TensorSpec[] {
  const p = `model.layers.${layer}.self_attn`;
  return [
    vector(`${p}.q_norm.weight`, width, { kind: 'norm', layer, name: 'q_norm' }),
    vector(`${p}.k_norm.weight`, width, { kind: 'norm', layer, name: 'k_norm' }),
  ];
}

/** Standard multi-head / grouped-query attention projections (Mixtral, Qwen, OLMoE). */
export function gqaAttention(
  layer: number,
  hidden: number,
  heads: number,
  kvHeads: number,
  headDim: number,
  bias: { qkv: boolean; o: boolean },
): TensorSpec[] {
  const p = `model.layers.${layer}.self_attn`;
  const dims: Record<string, [number, number]> = {
    q_proj: [heads * headDim, hidden],
    k_proj: [kvHeads * headDim, hidden],
    v_proj: [kvHeads * headDim, hidden],
    o_proj: [hidden, heads * headDim],
  };
  const out: TensorSpec[] = [];
  for (const [name, [o, i]] of Object.entries(dims)) {
    out.push(linear(`${p}.${name}.weight`, o, i, { kind: 'attn', layer, name }));
    const hasBias = name === 'o_proj' ? bias.o : bias.qkv;
    if (hasBias) out.push(vector(`${p}.${name}.bias`, o, { kind: 'attn', layer, name, bias: true }));
  }
  return out;
}
