#!/usr/bin/env python3
"""Generate the golden reference checkpoints in fixtures/golden/.

Run from the repository root:

    .venv/bin/python scripts/make_golden.py

For every case this builds a tiny random Mixture-of-Experts model with Hugging Face
transformers, re-initialises its weights deterministically (larger std than the
default so routing and logits are not degenerate), saves it with `save_pretrained`
(safetensors), reloads it from disk in float32 and records transformers' logits and
loss on fixed token ids:

    fixtures/golden/<case>/config.json, generation_config.json,
        model.safetensors  or  model-0000i-of-0000n.safetensors + model.safetensors.index.json
    fixtures/golden/<case>/golden.safetensors   input_ids I64 [2,16], logits F32 [2,16,vocab]
    fixtures/golden/<case>/golden.json          loss, hf_loss, dtype, params_total, moe_layers, ...
    fixtures/golden/index.json                  list of cases (generated)

Every case is also checked against an independent float64 re-implementation of the
forward pass (`ref_forward` below) that only reads config.json and the saved tensors
and follows the rules written in fixtures/golden/README.md. That check guards the
README summary and makes sure no top-k selection sits on a near tie (seeds are bumped
until every routing decision has a margin >= MIN_MARGIN).

fixtures/golden/README.md is hand-written and is kept; everything else under
fixtures/golden/ is deleted and regenerated. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

try:  # tqdm progress bars of save_pretrained
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "golden"

VOCAB = 256
BATCH, SEQ = 2, 16
MIN_MARGIN = 3e-4  # minimum gap at every top-k / top-group boundary (score units)
REF_TOL = 1e-4  # max |logits_ref64 - logits_hf32| accepted
MAX_SEED_TRIES = 50

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    config_cls: Any
    model_cls: Any
    config: dict
    seed: int
    save_dtype: torch.dtype = torch.float32
    max_shard_size: str | None = None
    notes: list[str] = field(default_factory=list)
    # init std by tensor-name suffix (overrides init_std; first match wins)
    std: dict[str, float] = field(default_factory=dict)
    # record the top-k of transformers' router_logits (output_router_logits=True) as golden `router_topk`
    record_router: bool = False


COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    max_position_embeddings=256,
    initializer_range=0.1,
    output_router_logits=False,
    tie_word_embeddings=False,
    use_cache=True,
)

MIXTRAL = dict(
    COMMON,
    intermediate_size=8,  # expert width
    num_hidden_layers=2,
    num_key_value_heads=2,  # GQA: 2 query heads per kv head
    num_local_experts=4,
    num_experts_per_tok=2,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)

CASES: list[Case] = [
    Case(
        "mixtral",
        MixtralConfig,
        MixtralForCausalLM,
        MIXTRAL,
        seed=1000,
        notes=["GQA: 4 query heads, 2 kv heads (head_dim 16)."],
    ),
    Case(
        "mixtral-bf16-sharded",
        MixtralConfig,
        MixtralForCausalLM,
        MIXTRAL,
        seed=2000,
        save_dtype=torch.bfloat16,
        max_shard_size="64KB",
        notes=[
            "Saved in bfloat16 with max_shard_size=64KB -> several shards + model.safetensors.index.json.",
            "Golden logits come from from_pretrained(dir, dtype=torch.float32): the stored bf16 weights "
            "upcast exactly to f32, everything computed in f32.",
        ],
    ),
    Case(
        "qwen2_moe",
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        dict(
            COMMON,
            num_hidden_layers=3,
            num_key_value_heads=2,
            intermediate_size=32,  # dense MLP width (layer 1)
            moe_intermediate_size=8,  # routed expert width
            shared_expert_intermediate_size=16,  # shared expert width
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            qkv_bias=True,
            use_sliding_window=False,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=3000,
        notes=[
            "Layer 1 is dense (mlp_only_layers=[1]); layers 0 and 2 are MoE with a shared expert "
            "gated by sigmoid(shared_expert_gate).",
            "norm_topk_prob=false: routing weights are the raw softmax probabilities of the top-k experts.",
            "q/k/v have biases (config key qkv_bias), o_proj has none.",
        ],
    ),
    Case(
        "qwen3_moe",
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        dict(
            COMMON,
            num_hidden_layers=2,
            num_key_value_heads=2,
            head_dim=24,  # != hidden/heads = 16
            intermediate_size=48,  # unused (no dense layer) but written to config
            moe_intermediate_size=8,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            attention_bias=False,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=4000,
        notes=[
            "head_dim=24 while hidden/heads=16: q_proj is [96,64], k_proj/v_proj [48,64], o_proj [64,96].",
            "q_norm/k_norm are per-head RMSNorms with weight [head_dim], applied before RoPE.",
        ],
    ),
    Case(
        "qwen3_moe-rope-scaled",
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        dict(
            COMMON,
            num_hidden_layers=1,
            tie_word_embeddings=True,  # no lm_head.weight in the file: logits use embed_tokens.weight
            num_key_value_heads=2,
            head_dim=24,
            intermediate_size=48,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            attention_bias=False,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        seed=5000,
        notes=[
            "Same architecture as qwen3_moe (but 1 layer, 4 experts of width 16) with YaRN RoPE scaling (factor 4, "
            "original_max_position_embeddings 64, beta_fast/beta_slow defaults 32/1, truncate default true). "
            "cos/sin are multiplied by attention_factor = 0.1*ln(4)+1.",
            "tie_word_embeddings=true: the checkpoint has no lm_head.weight; logits = final_norm(x) @ embed_tokens.weight^T.",
        ],
    ),
    Case(
        "olmoe",
        OlmoeConfig,
        OlmoeForCausalLM,
        dict(
            COMMON,
            num_hidden_layers=2,
            num_key_value_heads=2,
            intermediate_size=8,  # OLMoE: expert width is intermediate_size
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            attention_bias=False,
            clip_qkv=None,
            eos_token_id=2,  # OlmoeConfig defaults to 50279, outside our 256-token vocab
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=6000,
        notes=[
            "q_norm weight [hidden=64] over the whole q projection, k_norm weight [kv_heads*head_dim=32] over "
            "the whole k projection, applied before the head split and RoPE.",
            "norm_topk_prob=false (as in allenai/OLMoE-1B-7B).",
        ],
    ),
    Case(
        "deepseek_v3",
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        dict(
            COMMON,
            num_hidden_layers=3,
            num_key_value_heads=4,
            intermediate_size=16,  # dense MLP (layer 0)
            moe_intermediate_size=8,  # routed + shared expert width
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            first_k_dense_replace=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=16,
            v_head_dim=12,
            rope_interleave=True,
            attention_bias=False,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=7000,
        notes=[
            "MLA with q_lora_rank=16 (q_a_proj, q_a_layernorm, q_b_proj), kv_lora_rank=16, "
            "qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12 (!= qk_nope_head_dim).",
            "Layer 0 dense (first_k_dense_replace=1); layers 1-2: 8 routed experts in n_group=2 groups, "
            "topk_group=1, top-2, sigmoid scores + e_score_correction_bias (random, non-zero) for selection, "
            "norm_topk_prob=true, routed_scaling_factor=2.5, 1 shared expert.",
            "rope_interleave=true (transformers default for deepseek_v3): RoPE rotates adjacent pairs "
            "(x[2i], x[2i+1]).",
            "config.json carries num_nextn_predict_layers=1 (MTP) but transformers builds and saves no MTP layer.",
        ],
    ),
    Case(
        "deepseek_v2",
        DeepseekV2Config,
        DeepseekV2ForCausalLM,
        dict(
            COMMON,
            num_hidden_layers=2,
            num_key_value_heads=4,
            intermediate_size=32,
            moe_intermediate_size=8,
            n_routed_experts=8,
            n_shared_experts=2,  # shared expert width = 2*8 = 16
            num_experts_per_tok=2,
            topk_method="group_limited_greedy",
            n_group=2,
            topk_group=1,
            routed_scaling_factor=1.5,
            norm_topk_prob=False,
            first_k_dense_replace=1,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=16,
            v_head_dim=12,
            attention_bias=False,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
            },
        ),
        seed=8000,
        notes=[
            "MLA without q LoRA (q_lora_rank=null -> plain self_attn.q_proj).",
            "topk_method=group_limited_greedy, n_group=2, topk_group=1, softmax scores, no renormalisation "
            "(transformers' DeepseekV2TopkRouter ignores norm_topk_prob; it is false here so both readings agree), "
            "weights x routed_scaling_factor=1.5; n_shared_experts=2 -> shared expert width 2*8=16.",
            "Layer 0 dense (first_k_dense_replace=1), layer 1 MoE; kv_lora_rank=16, qk_nope 16, qk_rope 8, v 12.",
            "RoPE: interleaved pairs via complex multiplication (apply_rotary_emb), no rope_interleave key.",
            "YaRN RoPE with DeepSeek mscale: factor 4, original_max_position_embeddings 64, mscale 1.0, "
            "mscale_all_dim 0.5 (deliberately different so both effects show): cos/sin x "
            "attention_factor = m(4,1.0)/m(4,0.5), softmax scale = qk_head_dim^-0.5 * m(4,0.5)^2, "
            "m(s,k) = 0.1*k*ln(s)+1.",
        ],
    ),
]


# ---- gpt_oss (bf16) ------------------------------------------------------------------

GPT_OSS = dict(
    COMMON,
    max_position_embeddings=131072,  # as published: YaRN factor 32 over 4096
    num_hidden_layers=3,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=16,  # expert width
    num_local_experts=8,
    num_experts_per_tok=4,
    sliding_window=4,  # matters on 16 tokens
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    attention_bias=True,
    rms_norm_eps=1e-5,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
)

CASES.append(
    Case(
        "gpt_oss",
        GptOssConfig,
        GptOssForCausalLM,
        GPT_OSS,
        seed=9000,
        save_dtype=torch.bfloat16,
        record_router=True,
        std={
            "self_attn.sinks": 1.0,  # sink logits of the size of the scores: they take a visible share
            "mlp.router.weight": 0.3,  # decisive routing
            "mlp.router.bias": 0.3,
            "experts.gate_up_proj": 0.5,  # gate/up values beyond +-7: the SwiGLU clamp takes effect
            "experts.gate_up_proj_bias": 0.5,
            "experts.down_proj_bias": 0.3,
        },
        notes=[
            "Saved in bfloat16 by transformers' own save_pretrained: experts fused as mlp.experts.gate_up_proj "
            "[E, H, 2I] (gate = even columns, up = odd columns), gate_up_proj_bias [E, 2I], down_proj [E, I, H], "
            "down_proj_bias [E, H]; golden logits from from_pretrained(dir, dtype=torch.float32).",
            "3 layers: layer_types sliding/full/sliding with sliding_window=4 (a token sees itself and the 3 before "
            "it); attention sinks (self_attn.sinks, std 1.0); q/k/v/o biases; GQA 4 heads / 2 kv heads, head_dim 16.",
            "Router: linear with bias, top-4 of 8 on the logits, softmax over the 4; golden router_topk [layers, "
            "tokens, 4] = topk of transformers' router_logits (output_router_logits=True), in topk order.",
            "Experts: clamped SwiGLU (alpha 1.702, limit 7: gate_up_proj std 0.5 so the clamp takes effect), "
            "out = ((up + 1) * gate * sigmoid(1.702 * gate)) @ down + down_bias, times the routing weight.",
            "YaRN RoPE as published: rope_theta 150000, factor 32, original_max_position_embeddings 4096, "
            "beta_fast 32, beta_slow 1, truncate false; cos/sin x attention_factor 0.1*ln(32)+1.",
        ],
    )
)


# --------------------------------------------------------------------------------------
# gpt_oss-mxfp4: gpt-oss with its experts stored as MXFP4, as openai/gpt-oss-* publish them
# (issue 18; the MXFP4 layout and the encoding rule: src/io/mxfp4.ts)
# --------------------------------------------------------------------------------------

MXFP4_CASE = "gpt_oss-mxfp4"
MXFP4_SEED = 1800
MXFP4_MIN_MARGIN = 0.05  # router logits: gap at every top-k boundary
GPT_OSS_MXFP4 = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=64,  # a multiple of 32: down_proj's input is stored in blocks of 32
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_local_experts=8,
    num_experts_per_tok=2,
    sliding_window=8,
    max_position_embeddings=256,
    initializer_range=0.1,
    tie_word_embeddings=False,
    output_router_logits=False,
    use_cache=True,
)
# As openai/gpt-oss-20b's config.json has it.
MXFP4_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
E2M1_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_encode(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., out, in] -> blocks U8 [..., out, in/32, 16] (element 2j in byte j's low nibble), scales U8
    [..., out, in/32] (E8M0), by the OCP MX rule: shared exponent floor(log2 amax) - 2 clamped to [-127, 127]
    (-127 for an all-zero block), values rounded to the nearest E2M1 value with ties to the even code, saturating
    at 6, a zero magnitude stored as code 0. Our own code, the same rule as src/io/mxfp4.ts."""
    x = w.to(torch.float64)
    *pre, rows, n = x.shape
    assert n % 32 == 0, f"in = {n} is not a multiple of 32"
    x = x.reshape(*pre, rows, n // 32, 32)
    amax = x.abs().amax(-1)
    _, ex = torch.frexp(amax)  # amax = m * 2^ex with m in [0.5, 1): floor(log2 amax) = ex - 1
    e = torch.where(amax > 0, ex.to(torch.int64) - 3, torch.full_like(ex, -127, dtype=torch.int64)).clamp(-127, 127)
    q = x / torch.pow(2.0, e.to(torch.float64)).unsqueeze(-1)  # exact: a power of two
    a = q.abs().contiguous()
    code = torch.searchsorted(E2M1_MIDPOINTS, a)  # how many midpoints lie below a (a tie: the lower code)
    tie = (code < 7) & (a == E2M1_MIDPOINTS[code.clamp(max=6)])
    code = code + (tie & (code % 2 == 1)).to(code.dtype)
    code = torch.where((q < 0) & (code > 0), code | 8, code).to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks.contiguous(), (e + 127).to(torch.uint8).contiguous()


def mxfp4_decode(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks [..., out, G, 16], scales [..., out, G] -> float64 [..., out, G*32] (our own decoder, for checks)."""
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float64)
    codes = torch.stack([blocks & 15, blocks >> 4], -1).reshape(*blocks.shape[:-1], 32).long()
    v = lut[codes] * torch.pow(2.0, scales.to(torch.float64) - 127).unsqueeze(-1)
    return v.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def sha256_f32(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def build_gpt_oss_mxfp4(seed: int, d: Path):
    """A tiny gpt-oss in bf16 whose expert weights are then stored as MXFP4; returns the bf16 state dict (experts
    replaced by their decoded values) that the MXFP4 folder stands for."""
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(**GPT_OSS_MXFP4)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(cfg).eval()
    reinit(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.router.weight"):
                p.mul_(10.0)  # std 1: routing is decisive
    model = model.to(torch.bfloat16)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    bf16: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            # transformers' orientation [E, in, out]; stored transposed, [E, out, in/32, 16]
            blocks, scales = mxfp4_encode(p.float().transpose(-1, -2))
            tensors[f"{name}_blocks"] = blocks
            tensors[f"{name}_scales"] = scales
            bf16[name] = mxfp4_decode(blocks, scales).transpose(-1, -2).to(torch.bfloat16)
            # the rule keeps a block's largest value within one E2M1 step of the bf16 weight
            assert float((bf16[name].float() - p.float()).abs().max()) < float(p.float().abs().max()) / 2
        else:
            tensors[name] = p.detach().contiguous()
            bf16[name] = p.detach()
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it
    model.config.save_pretrained(str(d))
    model.generation_config.save_pretrained(str(d))
    cfg_json = json.loads((d / "config.json").read_text())
    cfg_json["quantization_config"] = {"modules_to_not_convert": MXFP4_NOT_CONVERTED, "quant_method": "mxfp4"}
    cfg_json["dtype"] = "bfloat16"
    (d / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    return bf16


def mxfp4_encode_rows() -> torch.Tensor:
    """Awkward rows of 64 float32 values (two blocks each) for the encoder check: ties at every E2M1 midpoint (both
    signs), saturation, all-zero blocks, exponents at and beyond E8M0's clamps, powers of two and their neighbours."""
    g = torch.Generator().manual_seed(4242)
    rows = []
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    for k in (0, -3, 5):  # ties: amax 4 * 2^k fixes the exponent at k, the values sit on midpoints * 2^k
        r = torch.tensor([4.0] + mids + [-m for m in mids] + [0.0] * 17, dtype=torch.float64) * 2.0**k
        rows.append(torch.cat([r, -r]))
    rows.append(torch.cat([torch.linspace(-7.99, 7.99, 32, dtype=torch.float64), torch.zeros(32, dtype=torch.float64)]))
    rows.append(torch.zeros(64, dtype=torch.float64))
    rows.append(torch.full((64,), 2.0**-140, dtype=torch.float64) * torch.arange(64))  # below E8M0: clamped to -127
    rows.append(torch.full((64,), 3.0e38, dtype=torch.float64) * torch.linspace(-1, 1, 64, dtype=torch.float64))
    for k in (0, 7, -9):  # amax exactly a power of two, and the float32 just below it
        r = torch.randn(64, generator=g, dtype=torch.float64) * 2.0 ** (k - 2)
        r[0], r[32] = 2.0**k, float(torch.nextafter(torch.tensor(2.0**k, dtype=torch.float32), torch.tensor(0.0)))
        rows.append(r)
    for std in (1.0, 0.02, 300.0):
        rows.append(torch.randn(64, generator=g, dtype=torch.float64) * std)
    heavy = torch.randn(64, generator=g, dtype=torch.float64)
    heavy[5] = 50.0
    rows.append(heavy)
    return torch.stack(rows).to(torch.float32)


def save_mxfp4_encode_reference(d: Path) -> None:
    """mxfp4-encode.safetensors: rows x F32 [R, 64] and what mxfp4_encode makes of them (blocks, scales); the TS
    encoder (src/io/mxfp4.ts) must write the same bytes."""
    x = mxfp4_encode_rows()
    blocks, scales = mxfp4_encode(x)
    # decoding is the identity on what was encoded, and re-encoding the decoded values gives the same bytes
    again = mxfp4_encode(mxfp4_decode(blocks, scales).to(torch.float32))
    assert torch.equal(again[0], blocks) and torch.equal(again[1], scales)
    save_file({"x": x.contiguous(), "blocks": blocks, "scales": scales}, str(d / "mxfp4-encode.safetensors"))


@torch.no_grad()
def make_gpt_oss_mxfp4() -> dict:
    from transformers import GptOssConfig, GptOssForCausalLM, Mxfp4Config

    d = OUT / MXFP4_CASE
    for attempt in range(MAX_SEED_TRIES):
        seed = MXFP4_SEED + attempt
        bf16 = build_gpt_oss_mxfp4(seed, d)
        g = torch.Generator().manual_seed(seed + 12345)
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
        # Mxfp4Config(dequantize=True): transformers' CPU path, its MXFP4 decoding to bf16 on load (without it,
        # the quantizer asks for accelerate and the triton kernels before falling back to the same decoding).
        model = GptOssForCausalLM.from_pretrained(
            str(d), dtype=torch.float32, attn_implementation="eager", quantization_config=Mxfp4Config(dequantize=True)
        ).eval()
        # It leaves the dequantized experts in bf16 (and runs them so); every other weight is float32, as in the
        # other goldens. In float32 the decoded values are the same (they are exact in bf16).
        as_loaded = model(input_ids=ids, use_cache=False).logits.float()
        loaded_dtypes = {n: str(p.dtype).replace("torch.", "") for n, p in model.named_parameters()}
        model = model.float()
        out = model(input_ids=ids, use_cache=False, output_router_logits=True)
        logits = out.logits.float()
        hf_loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        margins, topk = [], {}
        for L, rl in enumerate(out.router_logits):
            rl = rl.reshape(-1, rl.shape[-1]).double()
            v, idx = rl.topk(GPT_OSS_MXFP4["num_experts_per_tok"] + 1, dim=-1)
            margins.append(float((v[:, -2] - v[:, -1]).min()))
            topk[str(L)] = idx[:, :-1].tolist()
        # transformers' dequantized experts are exactly our decoding of the blocks
        sd = model.state_dict()
        hashes = {}
        for name, t in bf16.items():
            if name.endswith("_proj") and ".experts." in name:
                assert torch.equal(sd[name].float(), t.float()), f"{name}: transformers' dequantization differs"
                hashes[name] = {
                    "shape": list(sd[name].shape),
                    "dtype_as_loaded": loaded_dtypes[name],
                    "sha256_f32": sha256_f32(sd[name]),
                    "sum_abs": float(sd[name].double().abs().sum()),
                }
        # the same model built from the bf16 tensors gives the same logits
        ref = GptOssForCausalLM(GptOssConfig(**GPT_OSS_MXFP4)).eval()
        ref.load_state_dict({k: v.float() for k, v in bf16.items()}, strict=True)
        ref.config._attn_implementation = "eager"
        bf16_diff = float((ref(input_ids=ids, use_cache=False).logits - logits).abs().max())
        as_loaded_diff = float((as_loaded - logits).abs().max())
        print(f"[{MXFP4_CASE}] seed {seed}: min router margin {min(margins):.3g}, |bf16 model - mxfp4 load| {bf16_diff:.3g}")
        if min(margins) >= MXFP4_MIN_MARGIN:
            break
    else:
        raise SystemExit(f"{MXFP4_CASE}: no seed with clean routing margins")
    assert bf16_diff < 1e-5, f"{MXFP4_CASE}: the bf16 model differs from the MXFP4 load by {bf16_diff}"

    save_mxfp4_encode_reference(d)
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous()},
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": MXFP4_CASE, "transformers_version": transformers.__version__})},
    )
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, dtypes = load_saved_tensors(d)
    info = {
        "case": MXFP4_CASE,
        "model_type": cfg_json["model_type"],
        "architecture": cfg_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": ce_loss(logits, ids),
        "hf_loss": hf_loss,
        "dtype": "mxfp4",
        "stored_dtypes": sorted(set(dtypes.values())),
        "params_total": sum(t.numel() for t in bf16.values()),
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": list(range(cfg_json["num_hidden_layers"])),
        "dense_layers": [],
        "experts_per_layer": {str(L): cfg_json["num_local_experts"] for L in range(cfg_json["num_hidden_layers"])},
        "top_k": cfg_json["num_experts_per_tok"],
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": ["model.safetensors"],
        "files": sorted([p.name for p in d.iterdir()] + ["golden.json"]),
        "num_tensors": len(tensors),
        "router_topk": topk,
        "mxfp4": {
            "dequantized": hashes,
            "note": "transformers' dequantized expert tensors (loaded on CPU with Mxfp4Config(dequantize=True)): "
            "sha256 of their values as float32 little-endian, [E, in, out]",
            "encode_reference": "mxfp4-encode.safetensors: awkward rows x and their blocks and scales by mxfp4_encode",
        },
        "checks": {
            "min_router_margin": min(margins),
            "max_abs_diff_bf16_model_vs_mxfp4_load": bf16_diff,
            "max_abs_diff_experts_run_in_bf16_vs_golden": as_loaded_diff,
        },
        "notes": [
            "gpt-oss with MXFP4 experts: *_blocks U8 [E, out, in/32, 16] and *_scales U8 [E, out, in/32], encoded from "
            "the bf16 weights by the OCP MX rule (scripts/make_golden.py mxfp4_encode = src/io/mxfp4.ts).",
            "Reference: transformers loading this folder on CPU with Mxfp4Config(dequantize=True) (it decodes MXFP4 "
            "to bf16 expert tensors), then .float(): logits in float32, eager attention; router top-k from its "
            "router_logits; the router weights have std 1 so routing is decisive.",
        ],
    }
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES = {MXFP4_CASE: make_gpt_oss_mxfp4}


# --------------------------------------------------------------------------------------
# qwen3_next (issue 19): hybrid Gated DeltaNet linear attention + gated full attention, shared expert
# Golden from transformers' own forward (its torch fallbacks: causal_conv1d_fn, torch_chunk_gated_delta_rule);
# no independent float64 reference yet: the routing margin is measured on transformers' router probabilities.
QWEN3_NEXT_CASE = "qwen3_next"
QWEN3_NEXT = dict(
    COMMON,
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    num_key_value_heads=2,
    head_dim=16,
    partial_rotary_factor=0.25,  # rotary dim 4 of 16
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_conv_kernel_dim=4,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=8,
    shared_expert_intermediate_size=16,
    intermediate_size=48,
    norm_topk_prob=True,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
QWEN3_NEXT_STD = {
    "mlp.gate.weight": 1.0,  # decisive routing
    "linear_attn.conv1d.weight": 0.5,  # the conv mixes visibly
    "linear_attn.A_log": 0.5,
    "linear_attn.dt_bias": 0.5,
}


@torch.no_grad()
def make_qwen3_next() -> dict:
    d = OUT / QWEN3_NEXT_CASE
    cfg = Qwen3NextConfig(**QWEN3_NEXT)
    for attempt in range(MAX_SEED_TRIES):
        seed = 19000 + attempt
        torch.manual_seed(seed)
        model = Qwen3NextForCausalLM(cfg).eval()
        reinit(model, seed, QWEN3_NEXT_STD)
        g = torch.Generator().manual_seed(seed + 777)
        for name, t in model.named_parameters():
            # Qwen3NextRMSNorm applies (1 + weight): zero-centred weights; the gated norm applies weight itself
            if name.endswith("norm.weight") and "linear_attn.norm" not in name:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        save_bf16(model, d)
        model.float()
        ids = seeded_ids(seed)
        hf = load_f32(Qwen3NextForCausalLM, d)
        out = hf(input_ids=ids, use_cache=False, output_router_logits=True)
        logits = out.logits.float()
        k = cfg.num_experts_per_tok
        # the logits' top-k gap (softmax is monotone; saturated probabilities would hide the gap)
        margin = min(topk_margin(r.reshape(ids.numel(), -1), k) for r in out.router_logits)
        print(f"[{QWEN3_NEXT_CASE}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("qwen3_next: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(Qwen3NextForCausalLM, d, hf, ids, logits)
    topk = torch.stack([r.reshape(ids.numel(), -1).topk(k, -1).indices for r in out.router_logits])
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous(), "router_topk": topk.to(torch.int64).contiguous()},
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": QWEN3_NEXT_CASE, "transformers_version": transformers.__version__})},
    )
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, dtypes = load_saved_tensors(d)
    moe_layers = list(range(cfg_json["num_hidden_layers"]))
    info = {
        "case": QWEN3_NEXT_CASE,
        "model_type": cfg_json["model_type"],
        "architecture": cfg_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": ce_loss(logits, ids),
        "hf_loss": hf_loss,
        "dtype": "bfloat16",
        "stored_dtypes": sorted(set(dtypes.values())),
        "params_total": sum(t.numel() for t in tensors.values()),
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": moe_layers,
        "dense_layers": [],
        "experts_per_layer": {str(L): cfg_json["num_experts"] for L in moe_layers},
        "top_k": k,
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": sorted(p.name for p in d.glob("model*.safetensors")),
        "files": sorted([p.name for p in d.iterdir()] + ["golden.json"]),
        "num_tensors": len(tensors),
        "logits_stats": {
            "min": float(logits.min()),
            "max": float(logits.max()),
            "std": float(logits.std()),
            "mean_row_range": float((logits.max(-1).values - logits.min(-1).values).mean()),
        },
        "checks": {"max_abs_diff_sdpa_vs_eager": sdpa_diff, "min_routing_margin": margin},
        "notes": [
            "4 layers: layer_types linear/linear/linear/full. Linear layers: Gated DeltaNet (in_proj_qkvz, in_proj_ba, "
            "causal depthwise conv1d kernel 4 + silu, l2-normed q/k, gated delta rule with g = -exp(A_log) * "
            "softplus(a + dt_bias), beta = sigmoid(b), gated RMSNorm (weight, silu(z)), out_proj); 2 key heads, "
            "4 value heads, head dims 8.",
            "Full layer: q_proj gives query and an output gate per head ([q_h | gate_h] per head), per-head q/k "
            "RMSNorm, partial rotary 0.25 (4 of 16 dims, rotate-half), attn * sigmoid(gate) before o_proj.",
            "Qwen3NextRMSNorm (input/post-attention/final/q/k norms) multiplies by (1 + weight): weights are "
            "zero-centred (std 0.1); the gated norm multiplies by weight (1 + 0.1 noise).",
            "MoE on every layer: softmax top-2 of 8 renormalised (norm_topk_prob), shared expert times "
            "sigmoid(shared_expert_gate); router std 1.0; router_topk [layers, tokens, 2] from router_logits.",
            "Saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, dtype=torch.float32).",
            "transformers runs its torch fallbacks (no fla / causal-conv1d kernels): torch_chunk_gated_delta_rule.",
        ],
    }
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[QWEN3_NEXT_CASE] = make_qwen3_next


# --------------------------------------------------------------------------------------
# qwen3_5_moe_text (issue 19): Qwen3.5-MoE's text model. Against qwen3_next: separate in_proj_qkv (flat
# [q of every key head | k | v]) / in_proj_z / in_proj_b / in_proj_a instead of the per-head fused in_proj_qkvz /
# in_proj_ba, MoE on every layer (router always renormalised), mrope (identical on text positions)
QWEN3_5_MOE_TEXT_CASE = "qwen3_5_moe_text"
QWEN3_5_MOE_TEXT = {
    k: v
    for k, v in QWEN3_NEXT.items()
    if k not in ("intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")
}
QWEN3_5_MOE_TEXT["rope_parameters"] = {
    "rope_type": "default",
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.25,
    "mrope_section": [1, 1, 0],
    "mrope_interleaved": True,
}


# the nested case: Qwen3_5MoeForConditionalGeneration, the same text model under text_config beside a 1-block
# vision tower (never run on text input; its tensors model.visual.* are kept as they are)
QWEN3_5_MOE_CASE = "qwen3_5_moe"
QWEN3_5_MOE_VISION = dict(
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=4,
    num_position_embeddings=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
)


@torch.no_grad()
def make_qwen3_5_moe_text(nested: bool = False) -> dict:
    from transformers import (
        Qwen3_5MoeConfig,
        Qwen3_5MoeForCausalLM,
        Qwen3_5MoeForConditionalGeneration,
        Qwen3_5MoeTextConfig,
    )

    case = QWEN3_5_MOE_CASE if nested else QWEN3_5_MOE_TEXT_CASE
    d = OUT / case
    if nested:
        cls = Qwen3_5MoeForConditionalGeneration
        top = Qwen3_5MoeConfig(
            text_config=dict(QWEN3_5_MOE_TEXT),
            vision_config=QWEN3_5_MOE_VISION,
            image_token_id=VOCAB - 4,
            video_token_id=VOCAB - 3,
            vision_start_token_id=VOCAB - 2,
            vision_end_token_id=VOCAB - 1,
        )
        cfg = top.text_config
    else:
        cls = Qwen3_5MoeForCausalLM
        top = cfg = Qwen3_5MoeTextConfig(**QWEN3_5_MOE_TEXT)
    for attempt in range(MAX_SEED_TRIES):
        seed = (19700 if nested else 19500) + attempt
        torch.manual_seed(seed)
        model = cls(top).eval()
        reinit(model, seed, QWEN3_NEXT_STD)
        g = torch.Generator().manual_seed(seed + 777)
        for name, t in model.named_parameters():
            # (1 + weight) norms zero-centred; the gated norm applies weight itself
            if name.endswith("norm.weight") and "linear_attn.norm" not in name:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(cls, d)
        out = hf(input_ids=ids, use_cache=False, output_router_logits=True)
        logits = out.logits.float()
        k = cfg.num_experts_per_tok
        margin = min(topk_margin(r.reshape(ids.numel(), -1), k) for r in out.router_logits)
        print(f"[{case}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("qwen3_5_moe_text: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(cls, d, hf, ids, logits)
    topk = torch.stack([r.reshape(ids.numel(), -1).topk(k, -1).indices for r in out.router_logits])
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous(), "router_topk": topk.to(torch.int64).contiguous()},
        str(d / "golden.safetensors"),
        metadata={
            "golden": json.dumps({"case": case, "transformers_version": transformers.__version__})
        },
    )
    top_json = json.loads((d / "config.json").read_text())
    cfg_json = top_json.get("text_config", top_json)
    tensors, dtypes = load_saved_tensors(d)
    moe_layers = list(range(cfg_json["num_hidden_layers"]))
    info = {
        "case": case,
        "model_type": top_json["model_type"],
        "architecture": top_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": ce_loss(logits, ids),
        "hf_loss": hf_loss,
        "dtype": "bfloat16",
        "stored_dtypes": sorted(set(dtypes.values())),
        "params_total": sum(t.numel() for t in tensors.values()),
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": moe_layers,
        "dense_layers": [],
        "experts_per_layer": {str(L): cfg_json["num_experts"] for L in moe_layers},
        "top_k": k,
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": sorted(p.name for p in d.glob("model*.safetensors")),
        "files": sorted([p.name for p in d.iterdir()] + ["golden.json"]),
        "num_tensors": len(tensors),
        "logits_stats": {
            "min": float(logits.min()),
            "max": float(logits.max()),
            "std": float(logits.std()),
            "mean_row_range": float((logits.max(-1).values - logits.min(-1).values).mean()),
        },
        "checks": {"max_abs_diff_sdpa_vs_eager": sdpa_diff, "min_routing_margin": margin},
        "notes": (["Qwen3_5MoeForConditionalGeneration: the text model below under text_config (tensors "
                   "model.language_model.*, lm_head.weight at the top) beside a 1-block vision tower (model.visual.*, "
                   "not run on text input)."] if nested else []) + [
            "Qwen3_5MoeForCausalLM (text only), 4 layers linear/linear/linear/full, sizes as the qwen3_next case.",
            "Linear layers: separate in_proj_qkv ([q of every key head | k | v], the conv1d channel order), "
            "in_proj_z, in_proj_b, in_proj_a; the rest of the Gated DeltaNet as qwen3_next.",
            "Full layer as qwen3_next (output gate, per-head q/k (1 + weight) RMSNorm, partial rotary 0.25); "
            "mrope_section [1, 1, 0] interleaved: text positions are equal on every axis, so plain rotary.",
            "MoE on every layer: softmax top-2 of 8 always renormalised, shared expert times "
            "sigmoid(shared_expert_gate); router std 1.0; router_topk [layers, tokens, 2] from router_logits.",
            "Saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, dtype=torch.float32).",
        ],
    }
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[QWEN3_5_MOE_TEXT_CASE] = make_qwen3_5_moe_text
EXTRA_CASES[QWEN3_5_MOE_CASE] = lambda: make_qwen3_5_moe_text(nested=True)


# --------------------------------------------------------------------------------------
# minimax_m2 (issue 20): MiniMax-M2 / M2.1, and minimax_m2-fp8 (the same weights stored block-scaled FP8)
# --------------------------------------------------------------------------------------

MINIMAX_M2_CASE = "minimax_m2"
MINIMAX_M2_FP8_CASE = "minimax_m2-fp8"
MINIMAX_M2 = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # heads x head_dim = 64 != hidden 32, as MiniMax-M2 (48 x 128 vs 3072)
    intermediate_size=16,  # expert width
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
    tie_word_embeddings=False,
    output_router_logits=False,
    use_cache=True,
    bos_token_id=1,
    eos_token_id=2,
    rotary_dim=8,  # the released checkpoints' legacy key: transformers 5.18 reads it as partial_rotary_factor 0.5
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    # keys MiniMaxAI/MiniMax-M2's config.json carries that transformers' MiniMaxM2 does not use (kept as written)
    qk_norm_type="per_layer",
    use_qk_norm=True,
    scoring_func="sigmoid",
    use_routing_bias=True,
    shared_intermediate_size=0,
    use_mtp=True,
    num_mtp_modules=3,
    mtp_transformer_layers=1,
    attn_type_list=[1, 1],
)
MINIMAX_M2_STD = {"mlp.gate.weight": 0.5}  # routers: sigmoid scores spread, not saturated
# MiniMaxAI/MiniMax-M2's own FP8 settings, with a block that leaves partial edge blocks in every weight
MINIMAX_M2_FP8_BLOCK = (24, 24)
MINIMAX_M2_FP8_QC = {
    "activation_scheme": "dynamic",
    "fmt": "float8_e4m3fn",
    "quant_method": "fp8",
    "weight_block_size": list(MINIMAX_M2_FP8_BLOCK),
    "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
}


def minimax_router(model, ids: torch.Tensor) -> tuple[dict[int, torch.Tensor], float]:
    """transformers' MiniMaxM2TopKRouter on every token of every layer: the chosen experts ordered by their biased
    score (sigmoid + e_score_correction_bias, highest first; torch.topk there is unsorted) [tokens, k], and the
    smallest gap at the top-k boundary of the biased scores."""
    gates = {L: layer.mlp.gate for L, layer in enumerate(model.model.layers)}
    got = hooked(model, ids, gates, lambda _m, inp, out: (out[0].detach().double(), out[2].detach(), inp[1].detach().double()))
    k = model.config.num_experts_per_tok
    topk, margin = {}, float("inf")
    for L, (logits, idx, bias) in sorted(got.items()):
        score = logits.sigmoid() + bias  # [tokens, E]
        ordered = score.topk(k, -1).indices
        assert torch.equal(ordered.sort(-1).values, idx.sort(-1).values), f"layer {L}: top-k differs from the router"
        topk[L] = ordered
        margin = min(margin, topk_margin(score, k))
    return topk, margin


def minimax_info(case: str, d: Path, cfg_json: dict, ids, logits, hf_loss, seed, dtype, params, checks, notes) -> dict:
    tensors, dtypes = load_saved_tensors(d)
    layers = list(range(cfg_json["num_hidden_layers"]))
    return {
        "case": case,
        "model_type": cfg_json["model_type"],
        "architecture": cfg_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": ce_loss(logits, ids),
        "hf_loss": hf_loss,
        "dtype": dtype,
        "stored_dtypes": sorted(set(dtypes.values())),
        "params_total": params,
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": layers,
        "dense_layers": [],
        "experts_per_layer": {str(L): cfg_json["num_local_experts"] for L in layers},
        "top_k": cfg_json["num_experts_per_tok"],
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": sorted(p.name for p in d.glob("model*.safetensors")),
        "files": sorted([p.name for p in d.iterdir()] + ["golden.json"]),
        "num_tensors": len(tensors),
        "logits_stats": {
            "min": float(logits.min()),
            "max": float(logits.max()),
            "std": float(logits.std()),
            "mean_row_range": float((logits.max(-1).values - logits.min(-1).values).mean()),
        },
        "checks": checks,
        "notes": notes,
    }


def save_minimax_golden(d: Path, case: str, ids, logits, topk: dict[int, torch.Tensor]) -> None:
    save_file(
        {
            "input_ids": ids.contiguous(),
            "logits": logits.contiguous(),
            "router_topk": torch.stack([topk[L] for L in sorted(topk)]).to(torch.int64).contiguous(),
        },
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": case, "transformers_version": transformers.__version__})},
    )


@torch.no_grad()
def make_minimax_m2() -> dict:
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM

    d = OUT / MINIMAX_M2_CASE
    cfg = MiniMaxM2Config(**MINIMAX_M2)
    for attempt in range(MAX_SEED_TRIES):
        seed = 20200 + attempt
        torch.manual_seed(seed)
        model = MiniMaxM2ForCausalLM(cfg).eval()
        reinit(model, seed, MINIMAX_M2_STD)
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(MiniMaxM2ForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        topk, margin = minimax_router(hf, ids)
        print(f"[{MINIMAX_M2_CASE}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("minimax_m2: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(MiniMaxM2ForCausalLM, d, hf, ids, logits)
    # the selection bias matters: without it some tokens choose other experts
    plain = 0
    for L, layer in enumerate(hf.model.layers):
        layer.mlp.e_score_correction_bias.zero_()
    topk0, _ = minimax_router(hf, ids)
    plain = sum(int((topk0[L].sort(-1).values != topk[L].sort(-1).values).any(-1).sum()) for L in topk)
    save_minimax_golden(d, MINIMAX_M2_CASE, ids, logits, topk)
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, _ = load_saved_tensors(d)
    info = minimax_info(
        MINIMAX_M2_CASE,
        d,
        cfg_json,
        ids,
        logits,
        hf_loss,
        seed,
        "bfloat16",
        sum(t.numel() for t in tensors.values()),
        {
            "max_abs_diff_sdpa_vs_eager": sdpa_diff,
            "min_routing_margin": margin,
            "tokens_where_the_selection_bias_changed_the_choice": plain,
        },
        [
            "MiniMaxM2ForCausalLM saved in bfloat16 by save_pretrained: Mixtral's names block_sparse_moe.gate.weight, "
            "block_sparse_moe.experts.E.w1/w3/w2 (gate/up/down) and block_sparse_moe.e_score_correction_bias "
            "(random, std 0.1); golden logits from from_pretrained(dir, dtype=torch.float32), eager attention.",
            "Routing: sigmoid of the router logits (router std 1.0); top-2 of 8 chosen on sigmoid + "
            "e_score_correction_bias; weights = the unbiased sigmoids of the chosen two, renormalised; no scaling. "
            "router_topk [layers, tokens, 2]: the chosen experts by biased score, highest first.",
            "Attention: 4 heads, 2 kv heads, head_dim 16 (heads x head_dim 64 != hidden 32); q_norm [64] and k_norm "
            "[32] are RMSNorms over the whole q and k projections before the head split (qk_norm_type per_layer); "
            "rotate-half RoPE on the first 8 dims of each head (rotary_dim 8 -> partial_rotary_factor 0.5).",
            "config.json keeps MiniMax-M2's extra keys (use_mtp, num_mtp_modules, qk_norm_type, scoring_func, ...); "
            "transformers builds no MTP module and saves no MTP tensor.",
        ],
    )
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


@torch.no_grad()
def make_minimax_m2_fp8() -> dict:
    import tempfile

    from transformers import FineGrainedFP8Config, MiniMaxM2ForCausalLM

    base = OUT / MINIMAX_M2_CASE
    if not (base / "golden.safetensors").exists():
        raise SystemExit(f"{MINIMAX_M2_FP8_CASE}: make the base case {MINIMAX_M2_CASE} first")
    d = OUT / MINIMAX_M2_FP8_CASE
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg["dtype"] = "float32"  # weights not stored FP8 are the base's bf16 values in float32
    raw, _ = load_saved_tensors(base)
    raw = {k: t.to(torch.float32) for k, t in raw.items()}
    targets = sorted(
        k
        for k, t in raw.items()
        if k.startswith("model.layers.") and k.endswith(".weight") and t.dim() == 2 and not k.endswith(".gate.weight")
    )
    stored: dict[str, torch.Tensor] = {}
    dequant: dict[str, torch.Tensor] = {}
    for k, t in raw.items():
        if k in targets:
            q, inv = fp8_quantize(t, MINIMAX_M2_FP8_BLOCK, False)
            stored[k] = q
            stored[k[: -len(".weight")] + ".weight_scale_inv"] = inv
            dequant[k] = fp8_dequantize(q, inv, MINIMAX_M2_FP8_BLOCK)
        else:
            stored[k] = dequant[k] = t.contiguous()
    save_file(stored, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(
        json.dumps({**cfg, "quantization_config": MINIMAX_M2_FP8_QC}, indent=2, sort_keys=True) + "\n"
    )
    shutil.copy(base / "generation_config.json", d / "generation_config.json")
    with safe_open(str(base / "golden.safetensors"), "pt") as f:
        ids = f.get_tensor("input_ids")
    with tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        save_file(dequant, str(td / "model.safetensors"), metadata={"format": "pt"})
        (td / "config.json").write_text(json.dumps(cfg))
        model = MiniMaxM2ForCausalLM.from_pretrained(str(td), dtype=torch.float32, attn_implementation="eager").eval()
        logits = model(input_ids=ids, use_cache=False).logits.float()
        hf_loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        topk, margin = minimax_router(model, ids)
    print(f"[{MINIMAX_M2_FP8_CASE}] min routing margin {margin:.3g}")
    if margin < MIN_MARGIN:
        raise SystemExit(f"{MINIMAX_M2_FP8_CASE}: routing margin too small ({margin})")
    # transformers' own CPU path from the FP8 folder (FineGrainedFP8Config(dequantize=True)), edge blocks fixed
    undo = hf_fp8_cpu_patch(True)
    try:
        fm = MiniMaxM2ForCausalLM.from_pretrained(
            str(d),
            dtype=torch.float32,
            attn_implementation="eager",
            quantization_config=FineGrainedFP8Config(dequantize=True),
        ).eval()
        tf_diff = float((fm(input_ids=ids, use_cache=False).logits.float() - logits).abs().max())
    finally:
        undo()
    print(f"[{MINIMAX_M2_FP8_CASE}] transformers' own CPU dequantize (edges fixed): max |dlogits| {tf_diff:.3g}")
    save_minimax_golden(d, MINIMAX_M2_FP8_CASE, ids, logits, topk)
    info = minimax_info(
        MINIMAX_M2_FP8_CASE,
        d,
        {**cfg, "quantization_config": MINIMAX_M2_FP8_QC},
        ids,
        logits,
        hf_loss,
        None,
        "float32",
        sum(t.numel() for k, t in stored.items() if not k.endswith("_scale_inv")),
        {
            "min_routing_margin": margin,
            "transformers_fp8_dequantize_edge_fixed_max_abs_logit_diff": tf_diff,
            "max_abs_dequantized_minus_base_weight": max(float((dequant[k] - raw[k]).abs().max()) for k in targets),
        },
        [
            "The minimax_m2 case's weights (bf16 values, stored float32) with every linear weight of model.layers.* "
            "but the routers (block_sparse_moe.gate) stored as F8_E4M3 + float32 weight_scale_inv in blocks of "
            "24x24, scale_fmt float, fmt float8_e4m3fn and modules_to_not_convert [gate, e_score_correction_bias, "
            "lm_head] as MiniMaxAI/MiniMax-M2 publishes them. Partial edge blocks in every weight: q_proj [64,32], "
            "k/v_proj [32,32], o_proj [32,64], w1/w3 [16,32], w2 [32,16].",
            "Golden logits: the weights dequantized by the published rule (w = code x scale_inv[r // 24, c // 24], "
            "float32) loaded into MiniMaxM2ForCausalLM in float32.",
        ],
    )
    info["base_case"] = MINIMAX_M2_CASE
    info["quantization_config"] = MINIMAX_M2_FP8_QC
    info["fp8_weights"] = len(targets)
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[MINIMAX_M2_CASE] = make_minimax_m2
EXTRA_CASES[MINIMAX_M2_FP8_CASE] = make_minimax_m2_fp8


# --------------------------------------------------------------------------------------
# glm4_moe (issue 20): GLM-4.5/4.6/4.7. Grouped-query attention with q/k/v biases, head_dim != hidden/heads,
# per-head q/k RMSNorm (use_qk_norm), partial rotary 0.5 (rotate-half on the first half of each head); DeepSeek-V3's
# MoE (sigmoid + e_score_correction_bias, n_group groups scored by their best two, renormalised, x
# routed_scaling_factor, one shared expert); layer 0 dense. glm4_moe-fp8: the same weights block-scaled FP8.
# Checked against our own float64 forward (glm_ref_forward below), which also measures the routing margins.
GLM4_MOE_CASE = "glm4_moe"
GLM4_MOE_FP8_CASE = "glm4_moe-fp8"
GLM4_MOE = dict(
    COMMON,
    num_hidden_layers=3,
    num_key_value_heads=2,
    head_dim=24,  # != hidden/heads = 16; rotary on 12 of 24
    partial_rotary_factor=0.5,
    use_qk_norm=True,
    attention_bias=True,
    intermediate_size=32,  # dense MLP (layer 0)
    moe_intermediate_size=8,  # routed and shared expert width
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
)
GLM4_MOE_FP8_BLOCK = (32, 32)
GLM4_MOE_FP8_KEEP = ["lm_head"]


def glm_ref_forward(cfg: dict, W: dict, ids: torch.Tensor) -> tuple[torch.Tensor, float, list[torch.Tensor]]:
    """float64 GLM-4.5 forward from config.json and the saved tensors: logits [B, T, V], the smallest gap at every
    group / top-k boundary, and per MoE layer the selected experts [tokens, k] ordered by selection score."""
    W = {k: v.double() for k, v in W.items()}
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, E, k = cfg["rms_norm_eps"], cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    G, TG = cfg["n_group"], cfg["topk_group"]
    rot = int(D * cfg["rope_parameters"].get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5)))
    inv, _ = rope_freqs(cfg, rot)
    margin = float("inf")
    chosen: dict[int, list[torch.Tensor]] = {}
    outs = []
    for b in range(ids.shape[0]):
        x = W["model.embed_tokens.weight"][ids[b]]
        T = x.shape[0]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos(), ang.sin()
        for L in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{L}."
            h = rms(x, W[p + "input_layernorm.weight"], eps)
            a = p + "self_attn."
            q = lin(h, W, a + "q_proj").view(T, H, D).transpose(0, 1)
            kk = lin(h, W, a + "k_proj").view(T, KV, D).transpose(0, 1)
            v = lin(h, W, a + "v_proj").view(T, KV, D).transpose(0, 1)
            q, kk = rms(q, W[a + "q_norm.weight"], eps), rms(kk, W[a + "k_norm.weight"], eps)
            q = torch.cat([rope_half(q[..., :rot], cos, sin), q[..., rot:]], -1)
            kk = torch.cat([rope_half(kk[..., :rot], cos, sin), kk[..., rot:]], -1)
            kk, v = kk.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
            x = x + lin(attend(q, kk, v, D**-0.5), W, a + "o_proj")
            h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
            m = p + "mlp."
            if L < cfg["first_k_dense_replace"]:
                x = x + swiglu(h, W[m + "gate_proj.weight"], W[m + "up_proj.weight"], W[m + "down_proj.weight"])
                continue
            s = (h @ W[m + "gate.weight"].T).sigmoid()
            choice = s + W[m + "gate.e_score_correction_bias"]
            gs = choice.view(T, G, E // G).topk(2, -1).values.sum(-1)
            margin = min(margin, topk_margin(gs, TG))
            gmask = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(TG, -1).indices, True)
            masked = choice.masked_fill(~gmask.repeat_interleave(E // G, 1), float("-inf"))
            margin = min(margin, topk_margin(masked, k))
            idx = masked.topk(k, -1).indices  # sorted by selection score
            chosen.setdefault(L, []).append(idx)
            wts = s.gather(1, idx)
            wts = wts / (wts.sum(-1, keepdim=True) + 1e-20) * cfg["routed_scaling_factor"]
            out = swiglu(h, W[m + "shared_experts.gate_proj.weight"], W[m + "shared_experts.up_proj.weight"],
                         W[m + "shared_experts.down_proj.weight"])
            for t in range(T):
                for j in range(k):
                    e = f"{m}experts.{int(idx[t, j])}."
                    g, u, dn = W[e + "gate_proj.weight"], W[e + "up_proj.weight"], W[e + "down_proj.weight"]
                    out[t] += wts[t, j] * swiglu(h[t : t + 1], g, u, dn)[0]
            x = x + out
        x = rms(x, W["model.norm.weight"], eps)
        outs.append(x @ W["lm_head.weight"].T)
    topk = [torch.cat(chosen[L]) for L in sorted(chosen)]
    return torch.stack(outs), margin, topk


def glm_hf_topk(model, ids: torch.Tensor, moe_layers: list[int]) -> torch.Tensor:
    """transformers' selected experts per MoE layer [layers, tokens, k] (the router's topk_indices, which it takes
    unsorted), ordered by the router's own selection score (sigmoid + correction bias), highest first."""

    def ordered(m, _inp, out):
        logits, _, idx = out
        choice = logits.sigmoid() + m.e_score_correction_bias
        return idx.gather(1, choice.gather(1, idx).argsort(-1, descending=True)).to(torch.int64)

    got = hooked(model, ids, {L: model.model.layers[L].mlp.gate for L in moe_layers}, ordered)
    return torch.stack([got[L] for L in moe_layers]).contiguous()


def glm_info(case: str, d: Path, cfg_json: dict, seed: int, logits: torch.Tensor, ids, hf_loss, checks, notes,
             stored: dict[str, torch.Tensor]) -> dict:
    moe_layers = [L for L in range(cfg_json["num_hidden_layers"]) if L >= cfg_json["first_k_dense_replace"]]
    return {
        "case": case,
        "model_type": cfg_json["model_type"],
        "architecture": cfg_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": ce_loss(logits, ids),
        "hf_loss": hf_loss,
        "dtype": "bfloat16",
        "stored_dtypes": sorted({str(t.dtype).replace("torch.", "") for t in stored.values()}),
        "params_total": sum(t.numel() for k, t in stored.items() if not k.endswith("_scale_inv")),
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": moe_layers,
        "dense_layers": [L for L in range(cfg_json["num_hidden_layers"]) if L not in moe_layers],
        "experts_per_layer": {str(L): cfg_json["n_routed_experts"] for L in moe_layers},
        "top_k": cfg_json["num_experts_per_tok"],
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": sorted(p.name for p in d.glob("model*.safetensors")),
        "files": sorted([p.name for p in d.iterdir()] + ["golden.json"]),
        "num_tensors": len(stored),
        "checks": checks,
        "notes": notes,
    }


def glm_save_golden(d: Path, case: str, ids, logits, topk) -> None:
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous(), "router_topk": topk},
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": case, "transformers_version": transformers.__version__})},
    )


@torch.no_grad()
def make_glm4_moe() -> dict:
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    d = OUT / GLM4_MOE_CASE
    cfg = Glm4MoeConfig(**GLM4_MOE)
    for attempt in range(MAX_SEED_TRIES):
        seed = 20000 + attempt
        torch.manual_seed(seed)
        model = Glm4MoeForCausalLM(cfg).eval()
        reinit(model, seed)
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(Glm4MoeForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        cfg_json = json.loads((d / "config.json").read_text())
        tensors, _ = load_saved_tensors(d)
        ref, margin, ref_topk = glm_ref_forward(cfg_json, tensors, ids)
        ref_diff = float((ref - logits.double()).abs().max())
        print(f"[{GLM4_MOE_CASE}] seed {seed}: min routing margin {margin:.3g}, |ref64 - hf32| {ref_diff:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("glm4_moe: no seed with clean routing margins")
    if ref_diff > REF_TOL:
        raise SystemExit(f"glm4_moe: reference forward disagrees with transformers ({ref_diff})")
    moe_layers = [1, 2]
    topk = glm_hf_topk(hf, ids, moe_layers)
    assert torch.equal(topk, torch.stack(ref_topk)), "glm4_moe: transformers' experts differ from the reference's"
    hf_loss, sdpa_diff = loss_and_sdpa_diff(Glm4MoeForCausalLM, d, hf, ids, logits)
    glm_save_golden(d, GLM4_MOE_CASE, ids, logits, topk)
    checks = {
        "max_abs_diff_ref_float64_vs_golden": ref_diff,
        "max_abs_diff_sdpa_vs_eager": sdpa_diff,
        "min_routing_margin": margin,
    }
    notes = [
        "Glm4MoeForCausalLM saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, "
        "dtype=torch.float32), eager attention.",
        "Attention: 4 heads, 2 kv heads, head_dim 24 (!= hidden/heads 16), q/k/v biases (attention_bias), no o_proj "
        "bias, per-head q_norm/k_norm [24] (use_qk_norm) before RoPE, partial_rotary_factor 0.5: rotate-half on the "
        "first 12 dims of each head (pairs i, i+6), the other 12 unrotated.",
        "Layer 0 dense (first_k_dense_replace 1, intermediate_size 32); layers 1-2: 8 routed experts of width 8 in "
        "n_group 2 groups, topk_group 1, top-2 of sigmoid(logits) + e_score_correction_bias (groups scored by their "
        "best two), weights sigmoid(logits) renormalised (+1e-20) x routed_scaling_factor 2.5, plus one shared expert "
        "(mlp.shared_experts, width 8).",
        "router_topk [layers 1-2, tokens, 2]: transformers' selected experts (router topk_indices) ordered by "
        "selection score; equal to the float64 reference's.",
        "config.json carries num_nextn_predict_layers 1 (MTP) but transformers builds and saves no MTP layer.",
    ]
    info = glm_info(GLM4_MOE_CASE, d, cfg_json, seed, logits, ids, hf_loss, checks, notes, tensors)
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


@torch.no_grad()
def make_glm4_moe_fp8() -> dict:
    import tempfile

    from transformers import FineGrainedFP8Config, Glm4MoeForCausalLM

    base = OUT / GLM4_MOE_CASE
    if not (base / "golden.safetensors").exists():
        raise SystemExit(f"{GLM4_MOE_FP8_CASE}: make the base case {GLM4_MOE_CASE} first")
    d = OUT / GLM4_MOE_FP8_CASE
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = json.loads((base / "config.json").read_text())
    qc = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": list(GLM4_MOE_FP8_BLOCK),
        "modules_to_not_convert": GLM4_MOE_FP8_KEEP,
    }
    raw, _ = load_saved_tensors(base)
    targets = set(fp8_targets(raw, GLM4_MOE_FP8_KEEP))
    stored: dict[str, torch.Tensor] = {}
    dequant: dict[str, torch.Tensor] = {}
    for k, t in raw.items():
        if k in targets:
            q, inv = fp8_quantize(t, GLM4_MOE_FP8_BLOCK, False)
            stored[k] = q
            stored[k[: -len(".weight")] + ".weight_scale_inv"] = inv
            # rounded to the checkpoint's dtype (config "dtype": bfloat16), as transformers loads it and moe reads it
            dequant[k] = fp8_dequantize(q, inv, GLM4_MOE_FP8_BLOCK).to(torch.bfloat16)
        else:
            stored[k] = t.contiguous()
            dequant[k] = t.contiguous()
    save_file(stored, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}, indent=2, sort_keys=True) + "\n")
    shutil.copy(base / "generation_config.json", d / "generation_config.json")
    with safe_open(str(base / "golden.safetensors"), "pt") as f:
        ids = f.get_tensor("input_ids")
    with tempfile.TemporaryDirectory() as tmp:
        save_file(dequant, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        model = Glm4MoeForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        logits = model(input_ids=ids, use_cache=False).logits.float()
        hf_loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        topk = glm_hf_topk(model, ids, [1, 2])
    ref, margin, ref_topk = glm_ref_forward(cfg, {k: v.float() for k, v in dequant.items()}, ids)
    ref_diff = float((ref - logits.double()).abs().max())
    print(f"[{GLM4_MOE_FP8_CASE}] min routing margin {margin:.3g}, |ref64 - hf32| {ref_diff:.3g}")
    if ref_diff > REF_TOL or margin < MIN_MARGIN or not torch.equal(topk, torch.stack(ref_topk)):
        raise SystemExit(f"{GLM4_MOE_FP8_CASE}: reference disagrees ({ref_diff}) or routing margin too small ({margin})")
    undo = hf_fp8_cpu_patch(True)  # transformers' own CPU dequantize with the edge blocks fixed (see FP8_CASES)
    try:
        fm = Glm4MoeForCausalLM.from_pretrained(
            str(d), dtype=torch.bfloat16, attn_implementation="eager",
            quantization_config=FineGrainedFP8Config(dequantize=True),
        ).float().eval()
        tf_diff = float((fm(input_ids=ids, use_cache=False).logits.float() - logits).abs().max())
    finally:
        undo()
    glm_save_golden(d, GLM4_MOE_FP8_CASE, ids, logits, topk)
    checks = {
        "max_abs_diff_ref_float64_vs_golden": ref_diff,
        "min_routing_margin": margin,
        "transformers_fp8_dequantize_edge_fixed_max_abs_logit_diff": tf_diff,
        "max_abs_dequantized_minus_base_weight": max(float((dequant[k] - raw[k].float()).abs().max()) for k in targets),
    }
    notes = [
        "The glm4_moe case's bf16 weights with every 2-D weight of model.layers.* (routers excepted) stored as "
        "F8_E4M3 + float32 weight_scale_inv in blocks of 32x32 (no scale_fmt: float scales), lm_head listed in "
        "modules_to_not_convert; embeddings, norms, biases, routers and correction biases stay bf16/float32. Partial "
        "edge blocks: k_proj/v_proj [48,64], o_proj [64,96] (3 blocks) vs q_proj [96,64], experts [8,64] and [64,8].",
        "Golden logits: transformers 5.18 on the weights dequantized by the published rule (w = q * scale_inv[r//32, "
        "c//32]) and rounded to the checkpoint's dtype bfloat16 (as transformers loads it), run in float32; "
        "transformers' own CPU FP8 dequantize path (dtype bfloat16, then .float(); edge blocks fixed, see FP8_CASES) "
        "is recorded in checks.",
    ]
    info = glm_info(GLM4_MOE_FP8_CASE, d, cfg, 0, logits, ids, hf_loss, checks, notes, stored)
    info["base_case"] = GLM4_MOE_CASE
    info["quantization_config"] = qc
    info["fp8_weights"] = len(targets)
    info["fp8_params"] = sum(raw[k].numel() for k in targets)
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[GLM4_MOE_CASE] = make_glm4_moe
EXTRA_CASES[GLM4_MOE_FP8_CASE] = make_glm4_moe_fp8


# --------------------------------------------------------------------------------------
# llama4_text (issue 26): Llama 4's text model (Scout / Maverick language model)
# --------------------------------------------------------------------------------------

LLAMA4_TEXT_CASE = "llama4_text"
LLAMA4_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=16,  # routed and shared expert width
    intermediate_size_mlp=24,  # the dense layers' MLP
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # heads x head_dim = 64 != hidden 32
    num_local_experts=8,
    num_experts_per_tok=1,
    interleave_moe_layer_step=2,  # Maverick's layout: MoE on layers 1 and 3, dense MLP on 0 and 2
    no_rope_layer_interval=4,  # layer 3 is a NoPE layer (no rotary, full attention, temperature tuning)
    attention_chunk_size=8,  # the rope layers attend within chunks of 8 positions (SEQ 16: two chunks)
    attn_temperature_tuning=True,
    floor_scale=4,  # the NoPE layer's query scale changes every 4 positions (8192 in the released models)
    attn_scale=0.1,
    use_qk_norm=True,  # Scout: L2 norm of q and k per head after the rotary, on rope layers only
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
)
LLAMA4_STD = {"feed_forward.router.weight": 0.5}


def llama4_router(model, ids: torch.Tensor) -> tuple[dict[int, torch.Tensor], float]:
    """Llama4Router on every MoE layer: the chosen experts by logit, highest first [tokens, k], and the smallest gap
    at the top-k boundary of the logits."""
    routers = {L: layer.feed_forward.router for L, layer in enumerate(model.model.layers) if layer.is_moe_layer}
    got = hooked(model, ids, routers, lambda _m, _inp, out: out[1].detach().double())
    k = model.config.num_experts_per_tok
    topk, margin = {}, float("inf")
    for L, logits in sorted(got.items()):
        topk[L] = logits.topk(k, -1).indices
        margin = min(margin, topk_margin(logits, k))
    return topk, margin


LLAMA4_CASE = "llama4"
# A 1-layer vision tower for the nested case (Llama4ForConditionalGeneration): not run on text input
LLAMA4_VISION = dict(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    image_size=28,
    patch_size=14,
    vision_output_dim=32,
    projector_input_dim=32,
    projector_output_dim=32,
    pixel_shuffle_ratio=0.5,
)


@torch.no_grad()
def make_llama4_text(nested: bool = False) -> dict:
    from transformers import Llama4Config, Llama4ForCausalLM, Llama4ForConditionalGeneration, Llama4TextConfig

    case = LLAMA4_CASE if nested else LLAMA4_TEXT_CASE
    d = OUT / case
    if nested:
        cls = Llama4ForConditionalGeneration
        top = Llama4Config(
            text_config=dict(LLAMA4_TEXT),
            vision_config=LLAMA4_VISION,
            boi_token_index=VOCAB - 3,
            eoi_token_index=VOCAB - 2,
            image_token_index=VOCAB - 1,
        )
    else:
        cls = Llama4ForCausalLM
        top = Llama4TextConfig(**LLAMA4_TEXT)
    text_of = (lambda m: m.language_model) if nested else (lambda m: m)
    for attempt in range(MAX_SEED_TRIES):
        seed = (20700 if nested else 20600) + attempt
        torch.manual_seed(seed)
        model = cls(top).eval()
        reinit(model, seed, LLAMA4_STD)
        save_bf16(model, d)
        # the nested model's last three ids are its image tokens: text only below them
        ids = seeded_ids(seed, VOCAB - 3 if nested else VOCAB)
        hf = load_f32(cls, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        topk, margin = llama4_router(text_of(hf), ids)
        print(f"[{case}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit(f"{case}: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(cls, d, hf, ids, logits)
    # the rules the golden exercises change the logits: chunking, the NoPE layer's temperature
    sensitivity = {}
    if not nested:
        for key, value in (("attention_chunk_size", 64), ("attn_temperature_tuning", False)):
            alt = cls.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager", **{key: value}).eval()
            sensitivity[f"max_abs_logit_change_with_{key}_{value}"] = float(
                (alt(input_ids=ids, use_cache=False).logits - logits).abs().max()
            )
    save_minimax_golden(d, case, ids, logits, topk)
    top_json = json.loads((d / "config.json").read_text())
    cfg_json = top_json.get("text_config", top_json)
    tensors, _ = load_saved_tensors(d)
    info = minimax_info(
        case,
        d,
        {**cfg_json, "architectures": top_json["architectures"]},
        ids,
        logits,
        hf_loss,
        seed,
        "bfloat16",
        sum(t.numel() for t in tensors.values()),
        {"max_abs_diff_sdpa_vs_eager": sdpa_diff, "min_routing_margin": margin, **sensitivity},
        (
            [
                "Llama4ForConditionalGeneration: the text model below under text_config (tensors "
                "language_model.model.*, language_model.lm_head.weight) beside a 1-layer vision tower "
                "(vision_model.*) and multi_modal_projector.*, not run on text input (ids below the image tokens)."
            ]
            if nested
            else []
        )
        + [
            "Llama4ForCausalLM (model_type llama4_text) saved in bfloat16 by save_pretrained; golden logits from "
            "from_pretrained(dir, dtype=torch.float32), eager attention.",
            "MoE on layers 1 and 3 (interleave_moe_layer_step 2): feed_forward.router [8, 32]; top-1 of the logits; "
            "the chosen expert's weight sigmoid(logit) multiplies the expert's INPUT (experts.gate_up_proj "
            "[8, 32, 2 x 16] gate then up on the last axis, experts.down_proj [8, 16, 32], both [in, out]); "
            "plus feed_forward.shared_expert (width 16). Layers 0 and 2: dense feed_forward.gate/up/down_proj "
            "(intermediate_size_mlp 24).",
            "Attention: 4 heads, 2 kv heads, head_dim 16; rope layers (0, 1, 2): interleaved-pair rotary (llama3 "
            "rope_type), then an L2 norm (no weight, eps rms_norm_eps) of each head of q and k, chunked causal "
            "attention (attention_chunk_size 8: a position sees its own chunk only); layer 3 (NoPE, "
            "no_rope_layer_interval 4): no rotary, no q/k norm, full causal attention, q scaled by "
            "1 + attn_scale x log1p(floor((pos + 1) / floor_scale)) (floor_scale 4).",
            "router_topk [moe layers, tokens, 1]: the chosen expert of every token.",
        ],
    )
    info["model_type"] = top_json["model_type"]
    info["moe_layers"] = [L for L in range(cfg_json["num_hidden_layers"]) if L in cfg_json["moe_layers"]]
    info["dense_layers"] = [L for L in range(cfg_json["num_hidden_layers"]) if L not in cfg_json["moe_layers"]]
    info["experts_per_layer"] = {str(L): cfg_json["num_local_experts"] for L in info["moe_layers"]}
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[LLAMA4_TEXT_CASE] = make_llama4_text
EXTRA_CASES[LLAMA4_CASE] = lambda: make_llama4_text(nested=True)


# --------------------------------------------------------------------------------------
# dots1 (issue 26): rednote-hilab dots.llm1, DeepSeek-V3's MoE under Qwen3's attention
# --------------------------------------------------------------------------------------

DOTS1_CASE = "dots1"
DOTS1 = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,  # the leading dense layer
    moe_intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # heads x head_dim = 64 != hidden 32
    n_routed_experts=8,
    n_shared_experts=2,  # dots.llm1: 2 shared experts, fused into one MLP of width 2 x 16
    n_group=2,
    topk_group=1,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    sliding_window=8,  # dots.llm1 ships sliding_window with max_window_layers = all layers (no sliding layer);
    max_window_layers=2,  # here layer 2 slides over 8 positions, so the rule is exercised
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    attention_bias=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    bos_token_id=1,
    eos_token_id=2,
)


@torch.no_grad()
def make_dots1() -> dict:
    from transformers import Dots1Config, Dots1ForCausalLM

    d = OUT / DOTS1_CASE
    cfg = Dots1Config(**DOTS1)
    moe_layers = [1, 2]
    for attempt in range(MAX_SEED_TRIES):
        seed = 20800 + attempt
        torch.manual_seed(seed)
        model = Dots1ForCausalLM(cfg).eval()
        reinit(model, seed)
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(Dots1ForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        # the routing margins: selection scores (sigmoid + bias) at the top-k boundary, and the group scores
        gates = {L: hf.model.layers[L].mlp.gate for L in moe_layers}
        got = hooked(hf, ids, gates, lambda _m, _i, o: o[0].detach().double())
        margin = float("inf")
        for L, gate in gates.items():
            choice = got[L].sigmoid() + gate.e_score_correction_bias.double()
            groups = choice.view(-1, 2, 4).topk(2, -1).values.sum(-1)
            margin = min(margin, topk_margin(groups, 1))
            best = groups.argmax(-1)
            inside = choice.view(-1, 2, 4)[torch.arange(choice.shape[0]), best]
            margin = min(margin, topk_margin(inside, 2))
        print(f"[{DOTS1_CASE}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("dots1: no seed with clean routing margins")
    topk = glm_hf_topk(hf, ids, moe_layers)
    hf_loss, sdpa_diff = loss_and_sdpa_diff(Dots1ForCausalLM, d, hf, ids, logits)
    full = Dots1ForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager", layer_types=["full_attention"] * 3
    ).eval()
    window_change = float((full(input_ids=ids, use_cache=False).logits - logits).abs().max())
    glm_save_golden(d, DOTS1_CASE, ids, logits, topk)
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, _ = load_saved_tensors(d)
    checks = {
        "max_abs_diff_sdpa_vs_eager": sdpa_diff,
        "min_routing_margin": margin,
        "max_abs_logit_change_without_the_sliding_layer": window_change,
    }
    notes = [
        "Dots1ForCausalLM saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, "
        "dtype=torch.float32), eager attention.",
        "Attention as Qwen3: 4 heads, 2 kv heads, head_dim 16 (!= hidden/heads 8), per-head q_norm/k_norm [16] "
        "before a full rotate-half RoPE; layer 2 is a sliding_attention layer (sliding_window 8, max_window_layers "
        "2): a position sees itself and the 7 before it.",
        "Layer 0 dense (first_k_dense_replace 1, intermediate_size 48); layers 1-2: DeepSeek-V3's MoE: 8 routed "
        "experts of width 16 in n_group 2 groups (scored by their best two), topk_group 1, top-2 of sigmoid(logits) + "
        "e_score_correction_bias, weights sigmoid(logits) renormalised (+1e-20) x routed_scaling_factor 2.5, plus "
        "the shared experts (n_shared_experts 2: one MLP mlp.shared_experts of width 32), added.",
        "router_topk [layers 1-2, tokens, 2]: transformers' selected experts ordered by selection score.",
    ]
    info = glm_info(DOTS1_CASE, d, cfg_json, seed, logits, ids, hf_loss, checks, notes, tensors)
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[DOTS1_CASE] = make_dots1


# --------------------------------------------------------------------------------------
# ernie4_5_moe (issue 26): Baidu ERNIE 4.5 MoE (21B-A3B, 300B-A47B)
# --------------------------------------------------------------------------------------

ERNIE_CASE = "ernie4_5_moe"
ERNIE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,  # the dense layer
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # heads x head_dim = 64 != hidden 32
    moe_intermediate_size=16,
    moe_k=2,
    moe_num_experts=8,
    moe_num_shared_experts=2,  # fused into one MLP of width 2 x 16
    moe_layer_start_index=1,  # layer 0 dense
    moe_layer_end_index=-1,
    moe_layer_interval=1,
    use_bias=False,
    tie_word_embeddings=True,  # as ERNIE-4.5-21B-A3B
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def ernie_router(model, ids: torch.Tensor, moe_layers: list[int]):
    """The router of every MoE layer: its experts ordered by selection score (softmax + e_score_correction_bias,
    highest first) [layers, tokens, k], the smallest gap at the top-k boundary of that score, and how many tokens
    the correction bias changed the choice of."""
    gates = {L: model.model.layers[L].mlp.gate for L in moe_layers}
    got = hooked(
        model,
        ids,
        gates,
        lambda m, _i, out: (out[0].detach().double(), out[2].detach(), m.moe_statics.e_score_correction_bias.detach().double()),
    )
    k = model.config.moe_k
    topk, margin, changed = [], float("inf"), 0
    for L in moe_layers:
        logits, idx, bias = got[L]
        score = logits.softmax(-1) + bias.squeeze(0)
        ordered = score.topk(k, -1).indices
        assert torch.equal(ordered.sort(-1).values, idx.sort(-1).values), f"layer {L}: top-k differs from the router"
        topk.append(ordered)
        margin = min(margin, topk_margin(score, k))
        plain = logits.softmax(-1).topk(k, -1).indices
        changed += int((plain.sort(-1).values != ordered.sort(-1).values).any(-1).sum())
    return torch.stack(topk).to(torch.int64).contiguous(), margin, changed


@torch.no_grad()
def make_ernie4_5_moe() -> dict:
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    d = OUT / ERNIE_CASE
    cfg = Ernie4_5_MoeConfig(**ERNIE)
    moe_layers = [1, 2]
    for attempt in range(MAX_SEED_TRIES):
        seed = 20900 + attempt
        torch.manual_seed(seed)
        model = Ernie4_5_MoeForCausalLM(cfg).eval()
        reinit(model, seed, {"mlp.gate.weight": 0.5, "e_score_correction_bias": 0.05})
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(Ernie4_5_MoeForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        topk, margin, changed = ernie_router(hf, ids, moe_layers)
        print(f"[{ERNIE_CASE}] seed {seed}: min routing margin {margin:.3g}, bias changed {changed} choices")
        if margin >= MIN_MARGIN and changed > 0:
            break
    else:
        raise SystemExit("ernie4_5_moe: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(Ernie4_5_MoeForCausalLM, d, hf, ids, logits)
    glm_save_golden(d, ERNIE_CASE, ids, logits, topk)
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, _ = load_saved_tensors(d)
    info = minimax_info(
        ERNIE_CASE,
        d,
        {**cfg_json, "num_local_experts": cfg_json["moe_num_experts"], "num_experts_per_tok": cfg_json["moe_k"]},
        ids,
        logits,
        hf_loss,
        seed,
        "bfloat16",
        sum(t.numel() for t in tensors.values()),
        {
            "max_abs_diff_sdpa_vs_eager": sdpa_diff,
            "min_routing_margin": margin,
            "tokens_where_the_selection_bias_changed_the_choice": changed,
        },
        [
            "Ernie4_5_MoeForCausalLM saved in bfloat16 by save_pretrained (the router and moe_statics kept float32); "
            "golden logits from from_pretrained(dir, dtype=torch.float32), eager attention; tied embeddings.",
            "Attention: 4 heads, 2 kv heads, head_dim 16, no biases (use_bias false); rotary on interleaved pairs "
            "(2i, 2i + 1) with frequency i (cos/sin repeat_interleave'd), full head.",
            "Layer 0 dense (moe_layer_start_index 1, intermediate_size 48); layers 1-2: softmax over 8 experts (float32); "
            "top-2 chosen on softmax + mlp.moe_statics.e_score_correction_bias [1, 8]; weights the unbiased softmax "
            "of the chosen two divided by max(their sum, moe_norm_min); plus the shared experts "
            "(moe_num_shared_experts 2: one MLP mlp.shared_experts of width 32), added.",
            "router_topk [layers 1-2, tokens, 2]: the chosen experts by selection score, highest first.",
        ],
    )
    info["moe_layers"] = moe_layers
    info["dense_layers"] = [0]
    info["experts_per_layer"] = {str(L): 8 for L in moe_layers}
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[ERNIE_CASE] = make_ernie4_5_moe


# --------------------------------------------------------------------------------------
# hunyuan_v1_moe (issue 26): Tencent Hunyuan-A13B
# --------------------------------------------------------------------------------------

HUNYUAN_CASE = "hunyuan_v1_moe"
HUNYUAN = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=16,  # the routed experts' and the shared MLP's width
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # heads x head_dim = 64 != hidden 32
    num_experts=8,
    moe_topk=2,
    attention_bias=False,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    # Hunyuan-A13B's NTK-alpha rotary: base = rope_theta x alpha^(head_dim / (head_dim - 2))
    rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def softmax_router(model, ids: torch.Tensor, routers: dict, pick, k: int):
    """The experts each router (layer -> module) chose, ordered by logit, highest first [layers, tokens, k], checked
    against the router's own choice, and the smallest gap at the top-k boundary of the softmax.
    pick(module, inputs, output) -> (logits, chosen experts)."""
    got = hooked(model, ids, routers, pick)
    topk, margin = [], float("inf")
    for L in sorted(got):
        logits, idx = got[L]
        ordered = logits.topk(k, -1).indices
        assert torch.equal(ordered.sort(-1).values, idx.sort(-1).values), f"layer {L}: top-k differs from the router"
        topk.append(ordered)
        margin = min(margin, topk_margin(logits.softmax(-1), k))
    return torch.stack(topk).to(torch.int64).contiguous(), margin


@torch.no_grad()
def make_hunyuan_v1_moe() -> dict:
    from transformers import HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM

    d = OUT / HUNYUAN_CASE
    cfg = HunYuanMoEV1Config(**HUNYUAN)
    for attempt in range(MAX_SEED_TRIES):
        seed = 21000 + attempt
        torch.manual_seed(seed)
        model = HunYuanMoEV1ForCausalLM(cfg).eval()
        reinit(model, seed, {"mlp.gate.wg.weight": 0.5})
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(HunYuanMoEV1ForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        gates = {L: layer.mlp.gate for L, layer in enumerate(hf.model.layers)}
        pick = lambda _m, _i, out: (out[0].detach().double(), out[2].detach())  # noqa: E731
        topk, margin = softmax_router(hf, ids, gates, pick, cfg.moe_topk)
        print(f"[{HUNYUAN_CASE}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("hunyuan_v1_moe: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(HunYuanMoEV1ForCausalLM, d, hf, ids, logits)
    plain = HunYuanMoEV1ForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ).eval()
    alpha_change = float((plain(input_ids=ids, use_cache=False).logits - logits).abs().max())
    glm_save_golden(d, HUNYUAN_CASE, ids, logits, topk)
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, _ = load_saved_tensors(d)
    info = minimax_info(
        HUNYUAN_CASE,
        d,
        {**cfg_json, "num_local_experts": cfg_json["num_experts"], "num_experts_per_tok": cfg_json["moe_topk"]},
        ids,
        logits,
        hf_loss,
        seed,
        "bfloat16",
        sum(t.numel() for t in tensors.values()),
        {
            "max_abs_diff_sdpa_vs_eager": sdpa_diff,
            "min_routing_margin": margin,
            "max_abs_logit_change_without_the_alpha_rotary": alpha_change,
        },
        [
            "HunYuanMoEV1ForCausalLM saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, "
            "dtype=torch.float32), eager attention.",
            "Attention: 4 heads, 2 kv heads, head_dim 16; rotate-half RoPE with the NTK-alpha base rope_theta x "
            "alpha^(16 / 14) (rope_type dynamic, alpha 1000), THEN per-head RMSNorms self_attn.query_layernorm / "
            "key_layernorm [16].",
            "Every layer MoE: router mlp.gate.wg [8, 32] (no bias), softmax, top-2 renormalised; experts of width "
            "intermediate_size 16; plus mlp.shared_mlp (the same width), added.",
            "router_topk [layers, tokens, 2]: the chosen experts by logit, highest first.",
        ],
    )
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[HUNYUAN_CASE] = make_hunyuan_v1_moe


# --------------------------------------------------------------------------------------
# granitemoe (issue 26): IBM Granite 3.0/3.1 MoE (granite-3.x-1b-a400m, -3b-a800m)
# --------------------------------------------------------------------------------------

GRANITE_CASE = "granitemoe"
GRANITE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=16,  # the experts' width
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=8,
    num_experts_per_tok=2,
    # granite-3.1-1b-a400m's multipliers (logits_scaling 6.0 there)
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
    attention_multiplier=0.015625,
    logits_scaling=8.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


@torch.no_grad()
def make_granitemoe() -> dict:
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    d = OUT / GRANITE_CASE
    cfg = GraniteMoeConfig(**GRANITE)
    for attempt in range(MAX_SEED_TRIES):
        seed = 21100 + attempt
        torch.manual_seed(seed)
        model = GraniteMoeForCausalLM(cfg).eval()
        reinit(model, seed, {"router.weight": 0.5})
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(GraniteMoeForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        routers = {L: layer.block_sparse_moe.router for L, layer in enumerate(hf.model.layers)}
        pick = lambda _m, _i, out: (out[2].detach().double(), out[0].detach())  # noqa: E731
        topk, margin = softmax_router(hf, ids, routers, pick, cfg.num_experts_per_tok)
        print(f"[{GRANITE_CASE}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("granitemoe: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(GraniteMoeForCausalLM, d, hf, ids, logits)
    checks = {"max_abs_diff_sdpa_vs_eager": sdpa_diff, "min_routing_margin": margin}
    for key in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
        alt = GraniteMoeForCausalLM.from_pretrained(
            str(d), dtype=torch.float32, attn_implementation="eager", **{key: 1.0}
        ).eval()
        checks[f"max_abs_logit_change_with_{key}_1"] = float((alt(input_ids=ids, use_cache=False).logits - logits).abs().max())
    glm_save_golden(d, GRANITE_CASE, ids, logits, topk)
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, _ = load_saved_tensors(d)
    info = minimax_info(
        GRANITE_CASE,
        d,
        cfg_json,
        ids,
        logits,
        hf_loss,
        seed,
        "bfloat16",
        sum(t.numel() for t in tensors.values()),
        checks,
        [
            "GraniteMoeForCausalLM saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, "
            "dtype=torch.float32), eager attention; tied embeddings.",
            "Multipliers: embeddings x embedding_multiplier 12; each sub-layer's output x residual_multiplier 0.22 "
            "before the residual add; attention scores x attention_multiplier 0.015625 (instead of head_dim^-0.5); "
            "logits / logits_scaling 8.",
            "Every layer MoE: router block_sparse_moe.router.layer [8, 32], top-2 of the logits, softmax over the two; "
            "experts fused block_sparse_moe.input_linear [8, 2 x 16, 32] (gate rows then up rows, [out, in]) and "
            "output_linear [8, 32, 16]; no shared expert.",
            "router_topk [layers, tokens, 2]: the chosen experts by logit, highest first.",
        ],
    )
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[GRANITE_CASE] = make_granitemoe


# --------------------------------------------------------------------------------------
# phimoe (issue 26): Microsoft Phi-3.5-MoE
# --------------------------------------------------------------------------------------

PHIMOE_CASE = "phimoe"
PHIMOE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=8,
    num_experts_per_tok=2,
    # Phi-3.5-MoE's router_jitter_noise is 0.01; larger here so sparsemixer's masks keep some experts besides the best
    router_jitter_noise=0.3,
    attention_bias=True,  # as Phi-3.5-MoE
    lm_head_bias=True,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,  # the LayerNorms' eps
    max_position_embeddings=256,
    # Phi-3.5-MoE's longrope (short factors within original_max_position_embeddings, scaled cos/sin)
    rope_parameters={
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": [1.0, 1.05, 1.1, 1.2],
        "long_factor": [1.0, 2.0, 4.0, 8.0],
        "short_mscale": 1.243,
        "long_mscale": 1.243,
        "original_max_position_embeddings": 64,
    },
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def phimoe_router(model, ids: torch.Tensor):
    routers = {L: layer.mlp.router for L, layer in enumerate(model.model.layers)}
    got = hooked(model, ids, routers, lambda _m, _i, out: (out[0].detach().double(), out[2].detach()))
    eps = model.config.router_jitter_noise
    topk, margin = [], float("inf")
    for L in sorted(got):
        logits, idx = got[L]
        topk.append(idx.to(torch.int64))
        # margins: the best two logits apart, and every logit away from sparsemixer's mask thresholds (2 eps)
        s = logits.sort(-1, descending=True).values
        margin = min(margin, float((s[:, 0] - s[:, 1]).min()), float((s[:, 1] - s[:, 2]).min()))
        for j in range(2):
            top = logits.gather(1, idx[:, j : j + 1])
            rel = (top - logits) / logits.abs().clamp(min=top)
            gap = (rel - 2 * eps).abs()
            margin = min(margin, float(gap.min()))
    return torch.stack(topk).contiguous(), margin


@torch.no_grad()
def make_phimoe() -> dict:
    from transformers import PhimoeConfig, PhimoeForCausalLM

    d = OUT / PHIMOE_CASE
    cfg = PhimoeConfig(**PHIMOE)
    for attempt in range(MAX_SEED_TRIES):
        seed = 21200 + attempt
        torch.manual_seed(seed)
        model = PhimoeForCausalLM(cfg).eval()
        reinit(model, seed, {"router.weight": 0.5})
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(PhimoeForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        topk, margin = phimoe_router(hf, ids)
        print(f"[{PHIMOE_CASE}] seed {seed}: min routing margin {margin:.3g}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("phimoe: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(PhimoeForCausalLM, d, hf, ids, logits)
    glm_save_golden(d, PHIMOE_CASE, ids, logits, topk)
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, _ = load_saved_tensors(d)
    info = minimax_info(
        PHIMOE_CASE,
        d,
        cfg_json,
        ids,
        logits,
        hf_loss,
        seed,
        "bfloat16",
        sum(t.numel() for t in tensors.values()),
        {"max_abs_diff_sdpa_vs_eager": sdpa_diff, "min_routing_margin": margin},
        [
            "PhimoeForCausalLM saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, "
            "dtype=torch.float32), eager attention.",
            "Norms: LayerNorm with weight and bias (input_layernorm, post_attention_layernorm, model.norm; eps "
            "rms_norm_eps); q/k/v/o biases; lm_head with a bias.",
            "Rotary: longrope; PhimoeRotaryEmbedding computes the inverse frequencies with the short factors "
            "(1 / (short_factor_i x theta^(2i/d))) and scales cos/sin by short_mscale (long_mscale past "
            "original_max_position_embeddings 64; windows here are 16).",
            "Routing: sparsemixer (eval): e1 = argmax of the logits, its weight the softmax over the experts whose "
            "(max - s) / max(|s|, max) <= 2 x router_jitter_noise (0.3); e2 = argmax with e1 removed, its weight the "
            "softmax over the others within the same threshold of it (e1 excluded). router_topk [layers, tokens, 2] "
            "= [e1, e2].",
        ],
    )
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


EXTRA_CASES[PHIMOE_CASE] = make_phimoe








# --------------------------------------------------------------------------------------
# deepseek_v32 (issue 20): DeepSeek-V3.2 = DeepSeek-V3 (MLA, sigmoid group routing with correction bias, routed
# scaling, shared expert, first dense layer) plus the DSA lightning indexer (self_attn.indexer.wq_b, wk,
# k_norm (LayerNorm with bias), weights_proj). The indexer keeps each query's index_topk best earlier tokens; with
# index_topk >= the window every earlier token is kept and attention is dense MLA: index_topk 32 covers the golden
# windows (16) and the 32-token windows of fixtures/reference/golden-data. Golden from transformers' own forward;
# routing margins measured on the gate's scores (the float64 ref_forward does not know this family).
# The FP8 variant stores wq_b and wk as FP8 like deepseek-ai/DeepSeek-V3.2 and keeps weights_proj in high
# precision (transformers' _keep_in_fp32_modules); see make_deepseek_v32_fp8.
DSV32_CASE = "deepseek_v32"
DSV32_FP8_CASE = "deepseek_v32-fp8"
DSV32 = dict(
    COMMON,
    num_hidden_layers=3,
    num_key_value_heads=4,
    intermediate_size=16,  # dense MLP (layer 0)
    moe_intermediate_size=8,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    first_k_dense_replace=1,
    q_lora_rank=16,
    kv_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=12,
    index_n_heads=2,
    index_head_dim=64,  # llama.cpp rotates the indexer q/k by a Hadamard matrix: a power of two >= 64
    index_topk=32,
    attention_bias=False,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
DSV32_STD = {"mlp.gate.weight": 1.0}  # decisive routing


def dsv32_gate_margin(model, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """Top-k / top-group margins of every MoE layer's selection scores (sigmoid + correction bias), and the experts
    the gate selects on every token (router.L I64 [tokens, k], the gate's topk_indices)."""
    cfg = model.config

    def pick(m, _inp, out):
        logits = out[0].float()
        s = logits.sigmoid() + m.e_score_correction_bias
        g = s.view(-1, m.num_group, m.num_experts // m.num_group).topk(2, -1).values.sum(-1)
        keep = g.topk(m.topk_group, -1).indices
        mask = torch.zeros_like(g).scatter(1, keep, 1).bool()
        mask = mask.unsqueeze(-1).expand(-1, m.num_group, m.num_experts // m.num_group).reshape(s.shape)
        margin = min(topk_margin(g, m.topk_group), topk_margin(s.masked_fill(~mask, float("-inf")), m.top_k))
        return margin, out[-1].detach().to(torch.int64).contiguous()

    gates = {L: layer.mlp.gate for L, layer in enumerate(model.model.layers) if cfg.mlp_layer_types[L] == "sparse"}
    got = hooked(model, ids, gates, pick)
    return min(m for m, _ in got.values()), {f"router.{L}": idx for L, (_, idx) in got.items()}


def dsv32_sparse_diff(d: Path, ids: torch.Tensor) -> float:
    """How far transformers' logits move when the window (ids repeated to 3 x index_topk tokens) is longer than
    index_topk: the indexer then drops tokens, so moe refuses such windows."""
    from transformers import DeepseekV32ForCausalLM

    model = load_f32(DeepseekV32ForCausalLM, d)
    topk = model.config.index_topk
    long = ids.repeat(1, -(-3 * topk // ids.shape[1]))[:, : 3 * topk]
    sparse = model(input_ids=long, use_cache=False).logits
    for layer in model.model.layers:
        layer.self_attn.indexer.index_topk = long.shape[1]
    dense = model(input_ids=long, use_cache=False).logits
    return float((sparse - dense).abs().max())


def dsv32_info(d: Path, case: str, logits, ids, hf_loss: float, dtype: str, extra_checks: dict, notes: list[str]) -> dict:
    cfg_json = json.loads((d / "config.json").read_text())
    tensors, dtypes = load_saved_tensors(d)
    moe_layers = [i for i, t in enumerate(cfg_json["mlp_layer_types"]) if t == "sparse"]
    return {
        "case": case,
        "model_type": cfg_json["model_type"],
        "architecture": cfg_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "loss": ce_loss(logits, ids),
        "hf_loss": hf_loss,
        "dtype": dtype,
        "stored_dtypes": sorted(set(dtypes.values())),
        "params_total": sum(t.numel() for k, t in tensors.items() if not k.endswith("_scale_inv")),
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": moe_layers,
        "dense_layers": [i for i in range(cfg_json["num_hidden_layers"]) if i not in moe_layers],
        "experts_per_layer": {str(L): cfg_json["n_routed_experts"] for L in moe_layers},
        "top_k": cfg_json["num_experts_per_tok"],
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": list(ids.shape),
        "weight_files": sorted(p.name for p in d.glob("model*.safetensors")),
        "files": sorted([p.name for p in d.iterdir()] + ["golden.json"]),
        "num_tensors": len(tensors),
        "logits_stats": {
            "min": float(logits.min()),
            "max": float(logits.max()),
            "std": float(logits.std()),
            "mean_row_range": float((logits.max(-1).values - logits.min(-1).values).mean()),
        },
        "checks": extra_checks,
        "notes": notes,
    }


DSV32_NOTES = [
    "DeepseekV32ForCausalLM: MLA as the deepseek_v3 case (q_lora_rank 16, kv_lora_rank 16, nope 16, rope 8, v 12; "
    "RoPE always interleaved, config.json has no rope_interleave), layer 0 dense (mlp_layer_types dense/sparse/"
    "sparse), 8 routed experts in 2 groups, topk_group 1, top-2, sigmoid + e_score_correction_bias, "
    "norm_topk_prob, routed_scaling_factor 2.5, 1 shared expert; router std 1.0.",
    "DSA lightning indexer per layer: self_attn.indexer.wq_b [index_n_heads*index_head_dim=128, q_lora_rank=16], "
    "wk [64, 64], k_norm.weight/bias [64] (LayerNorm), weights_proj [2, 64]; index_topk 32 >= every window here "
    "(16 golden, 32 in fixtures/reference/golden-data), so every earlier token is selected and attention is dense "
    "MLA (the indexer weights do not change these logits). checks.max_abs_diff_sparse_vs_dense_3x_topk: what the "
    "indexer changes on windows of 3 x index_topk tokens (why moe refuses windows longer than index_topk).",
]


DSV32_FP8_BLOCK = (32, 32)


def dsv32_fp8(raw: dict[str, torch.Tensor]):
    """The FP8 variant's stored tensors, their dequantized values (published rule) and the FP8 targets."""
    targets = {k for k in fp8_targets(raw, []) if not k.endswith("indexer.weights_proj.weight")}
    stored: dict[str, torch.Tensor] = {}
    dequant: dict[str, torch.Tensor] = {}
    for k, t in raw.items():
        if k in targets:
            q, inv = fp8_quantize(t.float(), DSV32_FP8_BLOCK, True)
            stored[k] = q
            stored[k[: -len(".weight")] + ".weight_scale_inv"] = inv
            dequant[k] = fp8_dequantize(q, inv, DSV32_FP8_BLOCK)
        else:
            stored[k] = t.contiguous()
            dequant[k] = t.float().contiguous()
    return stored, dequant, targets


@torch.no_grad()
def make_deepseek_v32() -> dict:
    import tempfile

    from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

    d = OUT / DSV32_CASE
    cfg = DeepseekV32Config(**DSV32)
    for attempt in range(MAX_SEED_TRIES):
        seed = 20300 + attempt
        torch.manual_seed(seed)
        model = DeepseekV32ForCausalLM(cfg).eval()
        reinit(model, seed, DSV32_STD)
        g = torch.Generator().manual_seed(seed + 777)
        for name, t in model.named_parameters():
            if name.endswith("indexer.k_norm.bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        save_bf16(model, d)
        ids = seeded_ids(seed)
        hf = load_f32(DeepseekV32ForCausalLM, d)
        logits = hf(input_ids=ids, use_cache=False).logits.float()
        margin, routers = dsv32_gate_margin(hf, ids)
        # the FP8 variant (made from these weights) must route with a margin too
        _, dequant, _ = dsv32_fp8(load_saved_tensors(d)[0])
        with tempfile.TemporaryDirectory() as tmp:
            save_file(dequant, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
            shutil.copy(d / "config.json", Path(tmp) / "config.json")
            fp8 = DeepseekV32ForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
            fp8_margin, _ = dsv32_gate_margin(fp8.eval(), ids)
        print(f"[{DSV32_CASE}] seed {seed}: min routing margin {margin:.3g} (FP8 variant {fp8_margin:.3g})")
        if min(margin, fp8_margin) >= MIN_MARGIN:
            break
    else:
        raise SystemExit("deepseek_v32: no seed with clean routing margins")
    hf_loss, sdpa_diff = loss_and_sdpa_diff(DeepseekV32ForCausalLM, d, hf, ids, logits)
    sparse_diff = dsv32_sparse_diff(d, ids)
    print(f"[{DSV32_CASE}] |sdpa - eager| {sdpa_diff:.3g}, sparse vs dense at 3 x index_topk {sparse_diff:.3g}")
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous(), **routers},
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": DSV32_CASE, "transformers_version": transformers.__version__})},
    )
    checks = {
        "max_abs_diff_sdpa_vs_eager": sdpa_diff,
        "min_routing_margin": margin,
        "max_abs_diff_sparse_vs_dense_3x_topk": sparse_diff,
    }
    notes = DSV32_NOTES + [
        "Saved in bfloat16 by save_pretrained; golden logits from from_pretrained(dir, dtype=torch.float32), eager "
        "attention; router.L [tokens, 2]: the experts the gate selects (its topk_indices) on every token.",
    ]
    info = dsv32_info(d, DSV32_CASE, logits, ids, hf_loss, "bfloat16", checks, notes)
    info["seed"] = seed
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    describe(d)
    return info


@torch.no_grad()
def make_deepseek_v32_fp8() -> dict:
    """The deepseek_v32 case's weights with every 2-D weight of model.layers.* stored as F8_E4M3 + weight_scale_inv
    (blocks 32x32, ue8m0), except the routers and indexer.weights_proj (deepseek-ai/DeepSeek-V3.2 stores it in
    bf16; transformers keeps it in float32 and does not convert it). Reference: transformers on the dequantized
    weights (the published rule), as make_fp8_case."""
    import tempfile

    from transformers import DeepseekV32ForCausalLM, FineGrainedFP8Config

    base = OUT / DSV32_CASE
    if not (base / "golden.safetensors").exists():
        raise SystemExit(f"{DSV32_FP8_CASE}: make the base case {DSV32_CASE} first")
    d = OUT / DSV32_FP8_CASE
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    block = DSV32_FP8_BLOCK
    cfg = json.loads((base / "config.json").read_text())
    qc = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "scale_fmt": "ue8m0",
        "weight_block_size": list(block),
    }
    raw, _ = load_saved_tensors(base)
    stored, dequant, targets = dsv32_fp8(raw)
    save_file(stored, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}, indent=2, sort_keys=True) + "\n")
    shutil.copy(base / "generation_config.json", d / "generation_config.json")
    with safe_open(str(base / "golden.safetensors"), "pt") as f:
        ids = f.get_tensor("input_ids")
    with tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        save_file(dequant, str(td / "model.safetensors"), metadata={"format": "pt"})
        (td / "config.json").write_text(json.dumps(cfg))
        model = DeepseekV32ForCausalLM.from_pretrained(str(td), dtype=torch.float32, attn_implementation="eager").eval()
        logits = model(input_ids=ids, use_cache=False).logits.float()
        hf_loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        margin, routers = dsv32_gate_margin(model, ids)
    print(f"[{DSV32_FP8_CASE}] min routing margin {margin:.3g}")
    if margin < MIN_MARGIN:
        raise SystemExit(f"{DSV32_FP8_CASE}: routing margin too small ({margin})")
    tf: dict[str, Any] = {}
    for key, fixed in (("transformers_fp8_dequantize", False), ("transformers_fp8_dequantize_edge_fixed", True)):
        undo = hf_fp8_cpu_patch(fixed)
        try:
            fm = DeepseekV32ForCausalLM.from_pretrained(
                str(d),
                dtype=torch.float32,
                attn_implementation="eager",
                quantization_config=FineGrainedFP8Config(dequantize=True),
            ).eval()
            tf[f"{key}_max_abs_logit_diff"] = float(
                (fm(input_ids=ids, use_cache=False).logits.float() - logits).abs().max()
            )
        except Exception as e:  # recorded, not fatal: see the comment above FP8_CASES
            tf[f"{key}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            undo()
    print(f"[{DSV32_FP8_CASE}] transformers' own CPU dequantize: {tf}")
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous(), **routers},
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": DSV32_FP8_CASE, "transformers_version": transformers.__version__})},
    )
    checks = {
        "min_routing_margin": margin,
        "max_abs_dequantized_minus_base_weight": max(float((dequant[k] - raw[k].float()).abs().max()) for k in targets),
        **tf,
    }
    notes = DSV32_NOTES + [
        "The deepseek_v32 case's weights with every 2-D weight of model.layers.* but the routers and "
        "indexer.weights_proj (kept bfloat16, as deepseek-ai/DeepSeek-V3.2 stores it) as F8_E4M3 + float32 "
        "weight_scale_inv in blocks of 32x32, scale_fmt ue8m0; indexer.wq_b [128,16] and wk [64,64] are FP8 like the "
        "published checkpoint. Reference logits: transformers on the dequantized weights (published rule).",
    ]
    info = dsv32_info(d, DSV32_FP8_CASE, logits, ids, hf_loss, "bfloat16", checks, notes)
    info["base_case"] = DSV32_CASE
    info["quantization_config"] = qc
    info["fp8_weights"] = len(targets)
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    describe(d)
    return info


EXTRA_CASES[DSV32_CASE] = make_deepseek_v32
EXTRA_CASES[DSV32_FP8_CASE] = make_deepseek_v32_fp8


# --------------------------------------------------------------------------------------
# Weight initialisation
# --------------------------------------------------------------------------------------


def init_std(name: str, tied: bool) -> float:
    if name.endswith("embed_tokens.weight"):
        return 0.35 if tied else 1.0  # tied: it is also the output projection
    if name == "lm_head.weight":
        return 0.35
    if name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.gate.weight"):
        return 0.3  # router
    return 0.1


def save_bf16(model: torch.nn.Module, d: Path) -> None:
    """The model saved in bfloat16 by save_pretrained into d (replaced)."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.to(torch.bfloat16).save_pretrained(str(d))


def seeded_ids(seed: int, vocab: int = VOCAB) -> torch.Tensor:
    """The golden's input ids [BATCH, SEQ] below `vocab`, from the case's seed."""
    gen = torch.Generator().manual_seed(seed + 12345)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=gen, dtype=torch.int64)


def load_f32(cls, d: Path, attn: str = "eager"):
    """The saved model read back by transformers in float32, with this attention implementation."""
    return cls.from_pretrained(str(d), dtype=torch.float32, attn_implementation=attn).eval()


def loss_and_sdpa_diff(cls, d: Path, hf, ids: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """transformers' own loss on ids, and the largest |logit| difference of its sdpa attention from eager."""
    hf_loss = float(hf(input_ids=ids, labels=ids, use_cache=False).loss)
    sdpa = load_f32(cls, d, "sdpa")
    return hf_loss, float((sdpa(input_ids=ids, use_cache=False).logits - logits).abs().max())


def hooked(model, ids: torch.Tensor, modules: dict, pick) -> dict:
    """Runs the model on ids with a forward hook on each module (key -> module): {key: pick(module, inputs, output)}."""
    got: dict = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, key=key: got.__setitem__(key, pick(mod, inp, out)))
        for key, m in modules.items()
    ]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return got


@torch.no_grad()
def reinit(model: torch.nn.Module, seed: int, std: dict[str, float] | None = None) -> None:
    """Deterministic re-initialisation of every parameter and persistent buffer."""
    g = torch.Generator().manual_seed(seed)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors = dict(model.named_parameters())
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            tensors[name] = buf
    for name in sorted(tensors):
        t = tensors[name]
        noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
        override = next((v for k, v in (std or {}).items() if name.endswith(k)), None)
        if override is not None:
            val = override * noise
        elif name.endswith("e_score_correction_bias"):
            val = 0.1 * noise
        elif name.endswith("norm.weight"):  # every RMSNorm (layer, final, q/k, MLA latent)
            val = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            val = 0.1 * noise
        else:
            val = init_std(name, tied) * noise
        t.copy_(val.to(t.dtype))


# --------------------------------------------------------------------------------------
# Independent float64 reference forward (reads only config.json + saved tensors)
# --------------------------------------------------------------------------------------


def load_saved_tensors(d: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    files = sorted(p.name for p in d.glob("model*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for fn in files:
        with safe_open(str(d / fn), "pt") as f:
            for k in f.keys():
                assert k not in out, f"duplicate tensor {k}"
                t = f.get_tensor(k)
                dtypes[k] = str(t.dtype).replace("torch.", "")
                out[k] = t
    return out, dtypes


def expert_count(cfg: dict) -> int:
    for k in ("num_local_experts", "num_experts", "n_routed_experts"):
        if cfg.get(k) is not None:
            return int(cfg[k])
    raise KeyError("no expert-count key")


def moe_layer_indices(cfg: dict) -> list[int]:
    """MoE layers as determined from config.json alone (rules of each modeling file)."""
    mt, n = cfg["model_type"], cfg["num_hidden_layers"]
    if mt in ("mixtral", "olmoe", "gpt_oss"):
        return list(range(n))
    if mt in ("qwen2_moe", "qwen3_moe"):
        only = cfg.get("mlp_only_layers") or []
        step = cfg.get("decoder_sparse_step", 1) or 1
        return [i for i in range(n) if i not in only and expert_count(cfg) > 0 and (i + 1) % step == 0]
    if mt in ("deepseek_v2", "deepseek_v3"):
        k = cfg.get("first_k_dense_replace") or 0
        return [i for i in range(n) if i >= k]
    raise ValueError(mt)


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_freqs(cfg: dict, dim: int) -> tuple[torch.Tensor, float]:
    """inv_freq [dim/2] (float64) and the cos/sin multiplier (attention_factor)."""
    rp = dict(cfg.get("rope_parameters") or {})
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rtype = rp.get("rope_type", rp.get("type", "default"))
    idx = torch.arange(0, dim, 2, dtype=torch.float64)
    pos_freqs = theta ** (idx / dim)
    inv = 1.0 / pos_freqs
    if rtype == "default":
        return inv, 1.0
    if rtype == "linear":
        return inv / rp["factor"], 1.0
    if rtype == "yarn":
        factor = rp["factor"]
        omax = rp.get("original_max_position_embeddings", cfg["max_position_embeddings"])
        att = rp.get("attention_factor")
        ms, msa = rp.get("mscale"), rp.get("mscale_all_dim")
        if att is None:
            att = yarn_get_mscale(factor, ms) / yarn_get_mscale(factor, msa) if (ms and msa) else yarn_get_mscale(factor)
        beta_fast = rp.get("beta_fast") or 32
        beta_slow = rp.get("beta_slow") or 1

        def corr_dim(nrot: float) -> float:
            return (dim * math.log(omax / (nrot * 2 * math.pi))) / (2 * math.log(theta))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if rp.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extrap = 1 - ramp  # weight of the unscaled frequency
        inv = (inv / factor) * (1 - extrap) + inv * extrap
        return inv, float(att)
    raise NotImplementedError(rtype)


def rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rotate_half layout: pairs (x[i], x[i+d/2]). x [..., T, d], cos/sin [T, d/2]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """interleaved layout: pairs (x[2i], x[2i+1]); output keeps the interleaved layout."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x2 * cos + x1 * sin
    return out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [H,T,dq], k [H,T,dq], v [H,T,dv] (kv already repeated) -> [T, H*dv]."""
    T = q.shape[1]
    s = (q @ k.transpose(-1, -2)) * scale
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    s = s.masked_fill(mask, float("-inf"))
    p = s.softmax(-1)
    o = p @ v  # [H,T,dv]
    return o.transpose(0, 1).reshape(T, -1)


def lin(x: torch.Tensor, W: dict, name: str) -> torch.Tensor:
    y = x @ W[name + ".weight"].T
    if name + ".bias" in W:
        y = y + W[name + ".bias"]
    return y


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


class RoutingLog:
    def __init__(self) -> None:
        self.min_margin = float("inf")
        self.layers: dict[int, dict] = {}

    def margin(self, m: float) -> None:
        self.min_margin = min(self.min_margin, m)


def topk_margin(vals: torch.Tensor, k: int) -> float:
    """Gap between the k-th and (k+1)-th largest finite values of each row, min over rows."""
    s = vals.sort(-1, descending=True).values
    if s.shape[-1] <= k:
        return float("inf")
    gap = s[:, k - 1] - s[:, k]
    gap = gap[torch.isfinite(gap)]
    return float(gap.min()) if gap.numel() else float("inf")


def route(cfg: dict, W: dict, pre: str, x: torch.Tensor, layer: int, log: RoutingLog):
    """Returns (indices [T,k], weights [T,k]) following the README rules."""
    mt = cfg["model_type"]
    E, k = expert_count(cfg), cfg["num_experts_per_tok"]
    logits = x @ W[pre + "gate.weight"].T  # [T,E]
    info: dict = {}
    if mt in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"):
        p = logits.softmax(-1)
        top = p.topk(k, -1)
        idx, w = top.indices, top.values
        if mt == "mixtral" or cfg.get("norm_topk_prob"):
            w = w / w.sum(-1, keepdim=True)
        log.margin(topk_margin(p, k))
    elif mt == "deepseek_v3":
        s = logits.sigmoid()
        choice = s + W[pre + "gate.e_score_correction_bias"]
        G, TG = cfg["n_group"], cfg["topk_group"]
        gs = choice.view(-1, G, E // G).topk(2, -1).values.sum(-1)  # [T,G]
        log.margin(topk_margin(gs, TG))
        gsel = gs.topk(TG, -1).indices
        gmask = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gsel, True)
        emask = gmask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        masked = choice.masked_fill(~emask, float("-inf"))
        log.margin(topk_margin(masked, k))
        idx = masked.topk(k, -1).indices
        w = s.gather(1, idx)
        if cfg.get("norm_topk_prob"):
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * cfg["routed_scaling_factor"]
        # how often do the bias and the group limit change the selection?
        plain = set_rows(s.topk(k, -1).indices)
        no_group = set_rows(choice.topk(k, -1).indices)
        chosen = set_rows(idx)
        info["tokens_where_bias_or_group_changed_selection"] = sum(a != b for a, b in zip(plain, chosen))
        info["tokens_where_group_limit_changed_selection"] = sum(a != b for a, b in zip(no_group, chosen))
    elif mt == "deepseek_v2":
        s = logits.softmax(-1)
        method = cfg.get("topk_method", "greedy")
        if method == "greedy":
            sel = s
        elif method == "group_limited_greedy":
            G, TG = cfg["n_group"], cfg["topk_group"]
            gs = s.view(-1, G, E // G).max(-1).values
            log.margin(topk_margin(gs, TG))
            gsel = gs.topk(TG, -1).indices
            gmask = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gsel, True)
            emask = gmask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
            sel = s.masked_fill(~emask, 0.0)
            info["tokens_where_group_limit_changed_selection"] = sum(
                a != b for a, b in zip(set_rows(s.topk(k, -1).indices), set_rows(sel.topk(k, -1).indices))
            )
        else:
            raise NotImplementedError(method)
        log.margin(topk_margin(sel, k))
        top = sel.topk(k, -1)
        idx, w = top.indices, top.values * cfg["routed_scaling_factor"]
    else:
        raise ValueError(mt)
    counts = torch.bincount(idx.reshape(-1), minlength=E).tolist()
    log.layers[layer] = dict(expert_token_counts=counts, **info)
    return idx, w


def set_rows(idx: torch.Tensor) -> list[frozenset]:
    return [frozenset(r) for r in idx.tolist()]


def expert_weights(W: dict, pre: str, mt: str, e: int):
    if mt == "mixtral":
        b = f"{pre}experts.{e}."
        return W[b + "w1.weight"], W[b + "w3.weight"], W[b + "w2.weight"]
    b = f"{pre}experts.{e}."
    return W[b + "gate_proj.weight"], W[b + "up_proj.weight"], W[b + "down_proj.weight"]


def moe_block(cfg: dict, W: dict, L: int, x: torch.Tensor, log: RoutingLog) -> torch.Tensor:
    mt = cfg["model_type"]
    pre = f"model.layers.{L}.block_sparse_moe." if mt == "mixtral" else f"model.layers.{L}.mlp."
    idx, w = route(cfg, W, pre, x, L, log)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            g, u, d = expert_weights(W, pre, mt, int(idx[t, j]))
            out[t] += w[t, j] * swiglu(x[t : t + 1], g, u, d)[0]
    if mt == "qwen2_moe":
        sh = pre + "shared_expert."
        y = swiglu(x, W[sh + "gate_proj.weight"], W[sh + "up_proj.weight"], W[sh + "down_proj.weight"])
        out = out + torch.sigmoid(x @ W[pre + "shared_expert_gate.weight"].T) * y
    elif mt in ("deepseek_v2", "deepseek_v3"):
        sh = pre + "shared_experts."
        out = out + swiglu(x, W[sh + "gate_proj.weight"], W[sh + "up_proj.weight"], W[sh + "down_proj.weight"])
    return out


def std_attention(cfg: dict, W: dict, L: int, x: torch.Tensor) -> torch.Tensor:
    mt = cfg["model_type"]
    p = f"model.layers.{L}.self_attn."
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    T = x.shape[0]
    q, k, v = lin(x, W, p + "q_proj"), lin(x, W, p + "k_proj"), lin(x, W, p + "v_proj")
    if mt == "olmoe":  # norm over the whole projection, before the head split
        q = rms(q, W[p + "q_norm.weight"], eps)
        k = rms(k, W[p + "k_norm.weight"], eps)
    q = q.view(T, H, D).transpose(0, 1)
    k = k.view(T, KV, D).transpose(0, 1)
    v = v.view(T, KV, D).transpose(0, 1)
    if mt == "qwen3_moe":  # per-head norm, weight [head_dim]
        q = rms(q, W[p + "q_norm.weight"], eps)
        k = rms(k, W[p + "k_norm.weight"], eps)
    inv, att = rope_freqs(cfg, D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos() * att, ang.sin() * att
    q, k = rope_half(q, cos, sin), rope_half(k, cos, sin)
    rep = H // KV
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    return lin(attend(q, k, v, D**-0.5), W, p + "o_proj")


def mla_attention(cfg: dict, W: dict, L: int, x: torch.Tensor) -> torch.Tensor:
    mt = cfg["model_type"]
    p = f"model.layers.{L}.self_attn."
    H = cfg["num_attention_heads"]
    dn, dr, dv, R = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    T = x.shape[0]
    if cfg.get("q_lora_rank") is None:
        q = lin(x, W, p + "q_proj")
    else:  # q_a_layernorm uses the module default eps 1e-6, not rms_norm_eps
        q = lin(rms(lin(x, W, p + "q_a_proj"), W[p + "q_a_layernorm.weight"], 1e-6), W, p + "q_b_proj")
    q = q.view(T, H, dn + dr).transpose(0, 1)
    q_nope, q_pe = q[..., :dn], q[..., dn:]
    ckv = lin(x, W, p + "kv_a_proj_with_mqa")  # [T, R + dr]
    c, k_pe = ckv[:, :R], ckv[:, R:]
    c = rms(c, W[p + "kv_a_layernorm.weight"], 1e-6)
    kv = lin(c, W, p + "kv_b_proj").view(T, H, dn + dv).transpose(0, 1)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    inv, att = rope_freqs(cfg, dr)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos() * att, ang.sin() * att
    interleave = True if mt == "deepseek_v2" else bool(cfg.get("rope_interleave", True))
    rot = rope_interleaved if interleave else rope_half
    q_pe = rot(q_pe, cos, sin)
    k_pe = rot(k_pe.unsqueeze(0), cos, sin).expand(H, T, dr)
    qq = torch.cat([q_nope, q_pe], -1)
    kk = torch.cat([k_nope, k_pe], -1)
    scale = (dn + dr) ** -0.5
    rp = cfg.get("rope_parameters") or {}
    if rp.get("rope_type", "default") != "default" and rp.get("mscale_all_dim"):
        m = yarn_get_mscale(rp["factor"], rp["mscale_all_dim"])
        scale = scale * m * m
    return lin(attend(qq, kk, v, scale), W, p + "o_proj")


# ---- gpt_oss reference (float64) ----------------------------------------------------


def gptoss_attention(cfg: dict, W: dict, L: int, x: torch.Tensor) -> torch.Tensor:
    """GQA with q/k/v/o biases, YaRN rope (rotate-half), a per-head sink logit in the softmax denominator, and a
    sliding window (kv > q - sliding_window) on the layers layer_types names sliding_attention."""
    p = f"model.layers.{L}.self_attn."
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    T = x.shape[0]
    q = lin(x, W, p + "q_proj").view(T, H, D).transpose(0, 1)
    k = lin(x, W, p + "k_proj").view(T, KV, D).transpose(0, 1)
    v = lin(x, W, p + "v_proj").view(T, KV, D).transpose(0, 1)
    inv, att = rope_freqs(cfg, D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos() * att, ang.sin() * att
    q, k = rope_half(q, cos, sin), rope_half(k, cos, sin)
    rep = H // KV
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    s = (q @ k.transpose(-1, -2)) * D**-0.5  # [H, T, T]
    qi = torch.arange(T)[:, None]
    ki = torch.arange(T)[None, :]
    allowed = ki <= qi
    if cfg["layer_types"][L] == "sliding_attention":
        allowed = allowed & (ki > qi - cfg["sliding_window"])
    s = s.masked_fill(~allowed, float("-inf"))
    sink = W[p + "sinks"].view(H, 1, 1).expand(H, T, 1)
    probs = torch.cat([s, sink], -1).softmax(-1)[..., :-1]
    o = (probs @ v).transpose(0, 1).reshape(T, -1)
    return lin(o, W, p + "o_proj")


def gptoss_moe(cfg: dict, W: dict, L: int, x: torch.Tensor, log: RoutingLog) -> torch.Tensor:
    """Router = linear with bias, top-k of the logits, softmax over the k; experts read from the fused stored
    tensors (gate = even, up = odd columns of gate_up_proj [E, H, 2I]) with the clamped SwiGLU."""
    pre = f"model.layers.{L}.mlp."
    E, k = expert_count(cfg), cfg["num_experts_per_tok"]
    logits = x @ W[pre + "router.weight"].T + W[pre + "router.bias"]
    log.margin(topk_margin(logits, k))
    top = logits.topk(k, -1)
    idx, w = top.indices, top.values.softmax(-1)
    gu, gub = W[pre + "experts.gate_up_proj"], W[pre + "experts.gate_up_proj_bias"]
    dn, dnb = W[pre + "experts.down_proj"], W[pre + "experts.down_proj_bias"]
    limit, alpha = 7.0, 1.702
    out = torch.zeros_like(x)
    clamped = 0
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(idx[t, j])
            h = x[t] @ gu[e] + gub[e]
            gate, up = h[0::2], h[1::2]
            clamped += int((gate > limit).sum() + (up.abs() > limit).sum())
            gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
            y = ((up + 1) * gate * torch.sigmoid(alpha * gate)) @ dn[e] + dnb[e]
            out[t] += w[t, j] * y
    counts = torch.bincount(idx.reshape(-1), minlength=E).tolist()
    log.layers[L] = dict(expert_token_counts=counts, clamped_gate_up_values=clamped)
    return out


def ref_forward(d: Path, ids: torch.Tensor) -> tuple[torch.Tensor, RoutingLog]:
    cfg = json.loads((d / "config.json").read_text())
    raw, _ = load_saved_tensors(d)
    W = {k: v.to(torch.float64) for k, v in raw.items()}
    mt = cfg["model_type"]
    eps = cfg["rms_norm_eps"]
    moe = set(moe_layer_indices(cfg))
    log = RoutingLog()
    rows = []
    for b in range(ids.shape[0]):
        x = W["model.embed_tokens.weight"][ids[b]]
        for L in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{L}."
            h = rms(x, W[p + "input_layernorm.weight"], eps)
            if mt == "gpt_oss":
                a = gptoss_attention(cfg, W, L, h)
            else:
                a = mla_attention(cfg, W, L, h) if mt.startswith("deepseek") else std_attention(cfg, W, L, h)
            x = x + a
            h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
            if mt == "gpt_oss":
                x = x + gptoss_moe(cfg, W, L, h, log)
            elif L in moe:
                x = x + moe_block(cfg, W, L, h, log)
            else:
                m = p + "mlp."
                x = x + swiglu(h, W[m + "gate_proj.weight"], W[m + "up_proj.weight"], W[m + "down_proj.weight"])
        x = rms(x, W["model.norm.weight"], eps)
        head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        rows.append(x @ head.T)
    return torch.stack(rows), log


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def ce_loss(logits: torch.Tensor, ids: torch.Tensor) -> float:
    lg = logits[:, :-1].to(torch.float64)
    tgt = ids[:, 1:]
    lp = lg.log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return float(-lp.mean())


def build_and_save(case: Case, seed: int, d: Path):
    cfg = case.config_cls(**case.config)
    torch.manual_seed(seed)
    model = case.model_cls(cfg).eval()
    reinit(model, seed, case.std)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    to_save = model.to(case.save_dtype) if case.save_dtype != torch.float32 else model
    kwargs = {} if case.max_shard_size is None else {"max_shard_size": case.max_shard_size}
    to_save.save_pretrained(str(d), **kwargs)
    return model


@torch.no_grad()
def golden_extras(case: Case, model, ids: torch.Tensor, logits: torch.Tensor) -> dict:
    """router_topk I64 [layers, tokens, k]: torch.topk of transformers' router_logits on every token, in topk order;
    and (as checks) how far the eager experts implementation is from the default one."""
    out = model(input_ids=ids, use_cache=False, output_router_logits=True)
    k = model.config.num_experts_per_tok
    topk = torch.stack([r.reshape(ids.numel(), -1).topk(k, -1).indices for r in out.router_logits])
    assert (out.logits - logits).abs().max() == 0, "output_router_logits changed the logits"
    info: dict = {"router_topk": topk.to(torch.int64).contiguous()}
    d = OUT / case.name
    eager = case.model_cls.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    info["experts_implementation"] = model.config._experts_implementation
    info["max_abs_diff_eager_experts_vs_golden"] = float((eager(input_ids=ids, use_cache=False).logits - logits).abs().max())
    return info


@torch.no_grad()
def make_case(case: Case) -> dict:
    d = OUT / case.name
    for attempt in range(MAX_SEED_TRIES):
        seed = case.seed + attempt
        mem_model = build_and_save(case, seed, d)
        g = torch.Generator().manual_seed(seed + 12345)
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)

        model = load_f32(case.model_cls, d)
        out = model(input_ids=ids, use_cache=False)
        logits = out.logits.float()
        hf_loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        sdpa_diff = None  # gpt_oss has no sdpa attention (_supports_sdpa = False)
        if getattr(case.model_cls, "_supports_sdpa", True):
            sdpa = case.model_cls.from_pretrained(str(d), dtype=torch.float32, attn_implementation="sdpa").eval()
            sdpa_diff = float((sdpa(input_ids=ids, use_cache=False).logits - logits).abs().max())
        extra = golden_extras(case, model, ids, logits) if case.record_router else {}
        if case.save_dtype == torch.float32:
            mem_diff = float((mem_model(input_ids=ids, use_cache=False).logits - logits).abs().max())
            assert mem_diff < 1e-5, f"{case.name}: reloaded model differs from in-memory model by {mem_diff}"

        ref, log = ref_forward(d, ids)
        ref_diff = float((ref - logits.double()).abs().max())
        ok = log.min_margin >= MIN_MARGIN and ref_diff <= REF_TOL
        print(
            f"[{case.name}] seed {seed}: min routing margin {log.min_margin:.3g}, "
            f"|ref64 - hf32| {ref_diff:.3g}, |sdpa - eager| {sdpa_diff if sdpa_diff is None else f'{sdpa_diff:.3g}'}"
        )
        if ok:
            break
        if ref_diff > REF_TOL and log.min_margin >= MIN_MARGIN:
            raise SystemExit(f"{case.name}: reference forward disagrees with transformers ({ref_diff})")
    else:
        raise SystemExit(f"{case.name}: no seed with clean routing margins")

    loss = ce_loss(logits, ids)
    golden_tensors = {"input_ids": ids.contiguous(), "logits": logits.contiguous()}
    golden_tensors.update({k: v for k, v in extra.items() if isinstance(v, torch.Tensor)})
    save_file(
        golden_tensors,
        str(d / "golden.safetensors"),
        # a single key: safetensors writes metadata in hash-map order, several keys would make
        # the file bytes differ from run to run
        metadata={"golden": json.dumps({"case": case.name, "transformers_version": transformers.__version__})},
    )

    cfg_json = json.loads((d / "config.json").read_text())
    tensors, dtypes = load_saved_tensors(d)
    params_total = sum(t.numel() for t in tensors.values())
    moe_layers = moe_layer_indices(cfg_json)
    E = expert_count(cfg_json)
    # cross-check the config-derived layer kinds with the tensor names
    for L in range(cfg_json["num_hidden_layers"]):
        has_router = any(
            k.startswith(f"model.layers.{L}.")
            and (k.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight", "mlp.router.weight")))
            for k in tensors
        )
        assert has_router == (L in moe_layers), f"{case.name}: layer {L} kind mismatch"
        fused = f"model.layers.{L}.mlp.experts.gate_up_proj"
        if has_router and fused in tensors:  # experts stored fused: the first axis
            assert tensors[fused].shape[0] == E, f"{case.name}: layer {L} has {tensors[fused].shape[0]} experts"
        elif has_router:
            n = len({k.split(".experts.")[1].split(".")[0] for k in tensors if k.startswith(f"model.layers.{L}.") and ".experts." in k})
            assert n == E, f"{case.name}: layer {L} has {n} experts, config says {E}"

    weight_files = sorted(p.name for p in d.glob("model*.safetensors"))
    files = sorted(p.name for p in d.iterdir())
    dtype_set = sorted(set(dtypes.values()))
    info = {
        "case": case.name,
        "model_type": cfg_json["model_type"],
        "architecture": cfg_json["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "loss": loss,
        "hf_loss": hf_loss,
        "dtype": str(case.save_dtype).replace("torch.", ""),
        "stored_dtypes": dtype_set,
        "params_total": params_total,
        "num_layers": cfg_json["num_hidden_layers"],
        "moe_layers": moe_layers,
        "dense_layers": [i for i in range(cfg_json["num_hidden_layers"]) if i not in moe_layers],
        "experts_per_layer": {str(L): E for L in moe_layers},
        "top_k": cfg_json["num_experts_per_tok"],
        "vocab_size": cfg_json["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": weight_files,
        "files": files + (["golden.json"] if "golden.json" not in files else []),
        "num_tensors": len(tensors),
        "logits_stats": {
            "min": float(logits.min()),
            "max": float(logits.max()),
            "std": float(logits.std()),
            "mean_row_range": float((logits.max(-1).values - logits.min(-1).values).mean()),
        },
        "checks": {
            "max_abs_diff_ref_float64_vs_golden": ref_diff,
            "max_abs_diff_sdpa_vs_eager": sdpa_diff,
            "min_routing_margin": log.min_margin,
            "routing": {str(k): v for k, v in sorted(log.layers.items())},
            **{k: v for k, v in extra.items() if not isinstance(v, torch.Tensor)},
        },
        "notes": case.notes,
    }
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    describe(d)
    return info


def describe(d: Path) -> None:
    """Print config.json and the saved tensor names (layer / expert indices collapsed)."""
    import re

    cfg = json.loads((d / "config.json").read_text())
    print("  config.json:", json.dumps(cfg, sort_keys=True))
    tensors, dtypes = load_saved_tensors(d)
    pats: dict[str, tuple[list[int], set[int], list[int], str]] = {}
    for k, t in tensors.items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)$", k)
        layer, rest = (int(m.group(1)), m.group(2)) if m else (None, k)
        e = re.search(r"\.experts\.(\d+)\.", rest)
        if e:
            rest = rest.replace(f".experts.{e.group(1)}.", ".experts.{E}.")
        key = ("model.layers.{L}." + rest) if m else rest
        ent = pats.setdefault(key, ([], set(), list(t.shape), dtypes[k]))
        if layer is not None and layer not in ent[0]:
            ent[0].append(layer)
        if e:
            ent[1].add(int(e.group(1)))
    for key in sorted(pats):
        layers, experts, shape, dt = pats[key]
        where = f" L={sorted(layers)}" if layers else ""
        where += f" E=0..{max(experts)}" if experts else ""
        print(f"    {key:58s} {str(shape):12s} {dt}{where}")



# --------------------------------------------------------------------------------------
# FP8 block-scaled variants (issue 18): made from an existing golden case's float32 weights
# --------------------------------------------------------------------------------------
#
# Every linear weight under model.layers.* (routers and the modules listed in `keep` excepted) is stored as
# F8_E4M3 plus a float32 `<module>.weight_scale_inv` [ceil(rows/bm), ceil(cols/bn)], by transformers'
# Fp8Quantize rule (scale_inv = 1 / (448 / block amax) in float32, codes = e4m3(clamp(w * 448 / amax)); with
# scale_fmt ue8m0 the scale_inv is first rounded up to a power of two). Blocks are chosen so that the edges hold
# partial blocks. Reference logits: transformers 5.18 cannot run FP8 matmuls on CPU, and its CPU dequantize path
# (FineGrainedFP8Config(dequantize=True) -> Fp8Dequantize) derives the block as rows // scale_rows, which is wrong
# for partial edge blocks; so the weights are dequantized here by the published rule (DeepSeek's weight_dequant:
# block floor(r/bm), floor(c/bn)) and loaded into the float32 model. What transformers' own CPU dequantize gives
# is recorded in golden.json (checks.transformers_fp8_dequantize_*).


@dataclass
class Fp8Case:
    name: str
    base: str
    model_cls: Any
    block: tuple[int, int]
    scale_fmt: str | None
    keep: list[str]  # modules stored in float32 (and listed in modules_to_not_convert)
    notes: list[str] = field(default_factory=list)


FP8_CASES: list[Fp8Case] = [
    Fp8Case(
        "deepseek_v3-fp8",
        "deepseek_v3",
        DeepseekV3ForCausalLM,
        (32, 32),
        "ue8m0",
        [],
        notes=[
            "The deepseek_v3 case's float32 weights with every linear weight of model.layers.* (routers excepted) "
            "stored as F8_E4M3 + float32 weight_scale_inv in blocks of 32x32, scale_fmt ue8m0 (power-of-two "
            "scales, DeepSeek-V3.1 style). Partial edge blocks: kv_b_proj [112,16] (rows 96..111), o_proj [64,48] "
            "(cols 32..47), kv_a_proj_with_mqa [24,64], experts [8,64] and [64,8].",
        ],
    ),
    Fp8Case(
        "qwen3_moe-fp8",
        "qwen3_moe",
        Qwen3MoeForCausalLM,
        (32, 48),
        None,
        ["lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate", "model.layers.1.self_attn.o_proj"],
        notes=[
            "The qwen3_moe case's float32 weights with every linear weight of model.layers.* stored as F8_E4M3 + "
            "float32 weight_scale_inv in blocks of 32x48 (rows x cols), except the routers and "
            "model.layers.1.self_attn.o_proj, kept float32 and listed in modules_to_not_convert (with lm_head), "
            "as Qwen3-*-FP8 list theirs. Partial edge blocks: k_proj/v_proj [48,64] in both axes, q_proj [96,64] "
            "(cols 48..63), experts [8,64] and [64,8].",
        ],
    ),
]

FP8_MAX = 448.0


def fp8_quantize(w: torch.Tensor, block: tuple[int, int], ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Fp8Quantize._quantize_one on a weight padded with zeros to whole blocks (zeros change no amax)."""
    rows, cols = w.shape
    bm, bn = block
    sr, sc = -(-rows // bm), -(-cols // bn)
    pad = torch.zeros(sr * bm, sc * bn, dtype=torch.float32)
    pad[:rows, :cols] = w.to(torch.float32)
    r = pad.reshape(sr, bm, sc, bn)
    amax = r.abs().amax(dim=(1, 3))
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    scales = FP8_MAX / safe
    scales = torch.where(amax > 0, scales, torch.ones_like(scales))
    inv = (1.0 / scales).to(torch.float32)
    if ue8m0:
        inv = torch.pow(2.0, torch.ceil(torch.log2(inv.clamp(min=torch.finfo(torch.float32).tiny))))
        scales = 1.0 / inv
    q = torch.clamp(r * scales[:, None, :, None], min=-FP8_MAX, max=FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(sr * bm, sc * bn)[:rows, :cols].contiguous(), inv.contiguous()


def fp8_dequantize(q: torch.Tensor, inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The published rule: w[r, c] = q[r, c] * inv[r // bm, c // bn], in float32."""
    bm, bn = block
    s = inv.to(torch.float32).repeat_interleave(bm, 0).repeat_interleave(bn, 1)[: q.shape[0], : q.shape[1]]
    return q.to(torch.float32) * s


def hf_fp8_cpu_patch(fix_edges: bool):
    """Lets transformers 5.18 load an FP8 checkpoint on CPU with FineGrainedFP8Config(dequantize=True): its check
    for the `accelerate` package (absent here, unused by the dequantize path) is skipped, and with `fix_edges` its
    Fp8Dequantize takes the block from weight_block_size (partial edge blocks) instead of rows // scale_rows.
    Returns the function that undoes the patch."""
    import transformers.integrations.finegrained_fp8 as ff
    import transformers.quantizers.quantizer_finegrained_fp8 as qf

    saved = (qf.is_accelerate_available, ff.Fp8Dequantize._dequantize_one)
    qf.is_accelerate_available = lambda: True
    if fix_edges:

        def _dequantize_one(self, quantized, scales, output_dtype=None):
            bm, bn = self.hf_quantizer.quantization_config.weight_block_size
            rows, cols = quantized.shape[-2:]
            s = scales.to(torch.float32).repeat_interleave(bm, -2).repeat_interleave(bn, -1)[..., :rows, :cols]
            return (quantized.to(torch.float32) * s).to(output_dtype or torch.float32)

        ff.Fp8Dequantize._dequantize_one = _dequantize_one

    def undo() -> None:
        qf.is_accelerate_available, ff.Fp8Dequantize._dequantize_one = saved

    return undo


def fp8_targets(tensors: dict[str, torch.Tensor], keep: list[str]) -> list[str]:
    out = []
    for k, t in tensors.items():
        module = k[: -len(".weight")]
        if not k.startswith("model.layers.") or not k.endswith(".weight") or t.dim() != 2:
            continue
        if k.endswith("mlp.gate.weight") or module in keep:
            continue
        out.append(k)
    return out


def router_topk(model, ids: torch.Tensor, moe_layers: list[int]) -> dict[str, torch.Tensor]:
    """The experts transformers' router selects on every token: router.L I64 [tokens, k] (the gate's last output)."""
    gates = {f"router.{L}": model.model.layers[L].mlp.gate for L in moe_layers}
    pick = lambda _m, _inp, out: out[-1].detach().to(torch.int64).reshape(-1, out[-1].shape[-1]).contiguous()  # noqa: E731
    return hooked(model, ids, gates, pick)


@torch.no_grad()
def make_fp8_case(case: Fp8Case) -> dict:
    import tempfile

    from transformers import FineGrainedFP8Config

    base = OUT / case.base
    if not (base / "golden.safetensors").exists():
        raise SystemExit(f"{case.name}: make the base case {case.base} first")
    d = OUT / case.name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = json.loads((base / "config.json").read_text())
    qc = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": list(case.block),
    }
    if case.scale_fmt:
        qc["scale_fmt"] = case.scale_fmt
    if case.keep:
        qc["modules_to_not_convert"] = case.keep
    raw, _ = load_saved_tensors(base)
    targets = set(fp8_targets(raw, case.keep))
    stored: dict[str, torch.Tensor] = {}
    dequant: dict[str, torch.Tensor] = {}
    for k, t in raw.items():
        if k in targets:
            q, inv = fp8_quantize(t, case.block, case.scale_fmt == "ue8m0")
            stored[k] = q
            stored[k[: -len(".weight")] + ".weight_scale_inv"] = inv
            dequant[k] = fp8_dequantize(q, inv, case.block)
        else:
            stored[k] = t.contiguous()
            dequant[k] = t.contiguous()
    save_file(stored, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}, indent=2, sort_keys=True) + "\n")
    shutil.copy(base / "generation_config.json", d / "generation_config.json")

    with safe_open(str(base / "golden.safetensors"), "pt") as f:
        ids = f.get_tensor("input_ids")
    moe_layers = moe_layer_indices(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        save_file(dequant, str(td / "model.safetensors"), metadata={"format": "pt"})
        (td / "config.json").write_text(json.dumps(cfg))
        model = case.model_cls.from_pretrained(str(td), dtype=torch.float32, attn_implementation="eager").eval()
        logits = model(input_ids=ids, use_cache=False).logits.float()
        hf_loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        routers = router_topk(model, ids, moe_layers)
        ref, log = ref_forward(td, ids)
    ref_diff = float((ref - logits.double()).abs().max())
    print(f"[{case.name}] min routing margin {log.min_margin:.3g}, |ref64 - hf32| {ref_diff:.3g}")
    if ref_diff > REF_TOL or log.min_margin < MIN_MARGIN:
        raise SystemExit(f"{case.name}: reference disagrees ({ref_diff}) or routing margin too small ({log.min_margin})")

    # What transformers itself gives from the FP8 folder on CPU (dequantize=True): as shipped, and with its
    # dequantize op given the partial edge blocks (hf_fp8_cpu_patch).
    tf: dict[str, Any] = {}
    for key, fixed in (("transformers_fp8_dequantize", False), ("transformers_fp8_dequantize_edge_fixed", True)):
        undo = hf_fp8_cpu_patch(fixed)
        try:
            fm = case.model_cls.from_pretrained(
                str(d),
                dtype=torch.float32,
                attn_implementation="eager",
                quantization_config=FineGrainedFP8Config(dequantize=True),
            ).eval()
            tf[f"{key}_max_abs_logit_diff"] = float(
                (fm(input_ids=ids, use_cache=False).logits.float() - logits).abs().max()
            )
        except Exception as e:  # recorded, not fatal: see the comment above FP8_CASES
            tf[f"{key}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            undo()
    print(f"[{case.name}] transformers' own CPU dequantize: {tf}")

    loss = ce_loss(logits, ids)
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits.contiguous(), **routers},
        str(d / "golden.safetensors"),
        metadata={"golden": json.dumps({"case": case.name, "transformers_version": transformers.__version__})},
    )
    logical = sum(t.numel() for k, t in stored.items() if not k.endswith("_scale_inv"))
    E = expert_count(cfg)
    info = {
        "case": case.name,
        "model_type": cfg["model_type"],
        "architecture": cfg["architectures"][0],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "base_case": case.base,
        "loss": loss,
        "hf_loss": hf_loss,
        "dtype": "bfloat16",
        "stored_dtypes": sorted({str(t.dtype).replace("torch.", "") for t in stored.values()}),
        "quantization_config": qc,
        "fp8_weights": len(targets),
        "fp8_params": sum(raw[k].numel() for k in targets),
        "params_total": logical,
        "num_layers": cfg["num_hidden_layers"],
        "moe_layers": moe_layers,
        "dense_layers": [i for i in range(cfg["num_hidden_layers"]) if i not in moe_layers],
        "experts_per_layer": {str(L): E for L in moe_layers},
        "top_k": cfg["num_experts_per_tok"],
        "vocab_size": cfg["vocab_size"],
        "input_shape": [BATCH, SEQ],
        "weight_files": ["model.safetensors"],
        "files": sorted(p.name for p in d.iterdir()) + ["golden.json"],
        "num_tensors": len(stored),
        "checks": {
            "max_abs_diff_ref_float64_vs_golden": ref_diff,
            "min_routing_margin": log.min_margin,
            "max_abs_dequantized_minus_base_weight": max(
                float((dequant[k] - raw[k]).abs().max()) for k in targets
            ),
            **tf,
            "routing": {str(k): v for k, v in sorted(log.layers.items())},
        },
        "notes": case.notes,
    }
    (d / "golden.json").write_text(json.dumps(info, indent=2) + "\n")
    describe(d)
    return info


def dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def main() -> None:
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    args = sys.argv[1:]
    if "--only" in args:  # --only NAME[,NAME]: regenerate these cases only (as the bare names do)
        i = args.index("--only")
        args = args[:i] + args[i + 1].split(",") + args[i + 2 :]
    elif any(a.startswith("-") for a in args):
        raise SystemExit("usage: make_golden.py [--only NAME[,NAME]] | [NAME ...]")
    only = set(args)
    known = [c.name for c in CASES] + [c.name for c in FP8_CASES] + list(EXTRA_CASES)
    unknown = only - set(known)
    if unknown:
        raise SystemExit(f"unknown case(s): {sorted(unknown)}; known: {known}")
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():  # recreate from scratch, keep the hand-written README
        if p.name == "README.md" or (only and p.name not in only and p.name != "index.json"):
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    for case in CASES:
        if not only or case.name in only:
            make_case(case)
    for fcase in FP8_CASES:
        if not only or fcase.name in only:
            make_fp8_case(fcase)
    for name, make in EXTRA_CASES.items():
        if not only or name in only:
            make()

    results = [
        json.loads((OUT / n / "golden.json").read_text())
        for n in known
        if (OUT / n / "golden.json").exists()
    ]
    index = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "generator": "scripts/make_golden.py",
        "cases": [
            {k: r[k] for k in ("case", "model_type", "dtype", "loss", "params_total", "moe_layers", "top_k")}
            for r in results
        ],
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=2) + "\n")

    print()
    print(f"{'case':24s} {'dtype':9s} {'files':>5s} {'bytes':>9s} {'params':>8s} {'loss':>9s} {'hf_loss':>9s} {'margin':>8s}")
    for r in results:
        d = OUT / r["case"]
        print(
            f"{r['case']:24s} {r['dtype']:9s} {len(r['weight_files']):5d} {dir_size(d):9d} {r['params_total']:8d} "
            f"{r['loss']:9.5f} {r['hf_loss']:9.5f} {r['checks'].get('min_routing_margin', r['checks'].get('min_router_margin')):8.2g}"
        )
    total = dir_size(OUT)
    print(f"total fixtures/golden: {total} bytes ({total / 1e6:.2f} MB)")
    # 3 MB until the 2026 cases (gpt_oss, FP8, MXFP4) of a few hundred KB each; 4.5 MB with qwen3_next;
    # 5.5 MB with qwen3_5_moe_text and qwen3_5_moe
    # 7 MB with the issue 20 families (minimax_m2, glm4_moe, deepseek_v32, each with an FP8 variant)
    if total > 7_000_000:
        raise SystemExit("fixtures/golden exceeds 7 MB")


if __name__ == "__main__":
    main()
