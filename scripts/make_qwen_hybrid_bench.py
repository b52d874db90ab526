#!/usr/bin/env python3
"""Small trained Qwen hybrid models for bench/llama-gguf-qwen-hybrid.mjs (not committed fixtures: the bench makes
them in .cache).

  OUT/qwen3_next    Qwen3NextForCausalLM (transformers' own save_pretrained: in_proj_qkvz, in_proj_ba fused per key
                    head), bfloat16;
  OUT/qwen3_5_moe   Qwen3_5MoeForConditionalGeneration: the text model under text_config (tensors
                    model.language_model.*) beside a 1-block vision tower (model.visual.*, never trained or run on
                    text), bfloat16; separate in_proj_qkv / in_proj_z / in_proj_b / in_proj_a, interleaved mrope.

Both have fixtures/tiny-moe's tokenizer (byte-level BPE, 4,096 tokens) and are trained briefly on
fixtures/text/calib.txt so that their predictions are far from uniform. Shapes follow the published models at a
small size: 4 layers (linear, linear, linear, full: full_attention_interval 4), 2 key heads and 4 value heads in the
linear attention (value heads grouped by key head, so the Qwen3.5 export's head reordering matters), head dims 32,
gated full attention with partial rotary 0.25, 8 experts top-2 plus a gated shared expert. Every row length is a
multiple of 32 (Q8_0 blocks).

Usage: .venv/bin/python scripts/make_qwen_hybrid_bench.py OUT [--steps 300]   (a few minutes on 2 shared threads)
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "fixtures" / "tiny-moe"
TEXT = dict(
    vocab_size=4096,
    hidden_size=128,
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    full_attention_interval=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    partial_rotary_factor=0.25,  # rotary dim 8 of 32
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    linear_conv_kernel_dim=4,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=64,
    shared_expert_intermediate_size=128,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    output_router_logits=False,
    eos_token_id=0,
)
NEXT = dict(TEXT, intermediate_size=256, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
QWEN35_TEXT = dict(TEXT, rope_parameters={
    "rope_type": "default",
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],  # 4 rotary pairs
    "mrope_interleaved": True,
})
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128, patch_size=4,
              num_position_embeddings=16, temporal_patch_size=2, spatial_merge_size=2)
SEQ, BATCH, LR, SEED = 128, 8, 3e-3, 19


def train(model: torch.nn.Module, steps: int, label: str) -> torch.nn.Module:
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    ids = torch.tensor(tok.encode((REPO / "fixtures" / "text" / "calib.txt").read_text()).ids, dtype=torch.int64)
    model.train()
    params = [p for n, p in model.named_parameters() if "visual" not in n]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    g = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for step in range(steps):
        lr = LR * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(ids) - SEQ - 1, (BATCH,), generator=g)
        batch = torch.stack([ids[s : s + SEQ] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"[{label}] step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    return model.eval()


def save(model: torch.nn.Module, d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    model.to(torch.bfloat16).save_pretrained(str(d))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, d / f)
    print(f"wrote {d}", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: make_qwen_hybrid_bench.py OUT [--steps N] [--only qwen3_next|qwen3_5_moe]")
    out = Path(args[0])
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 300
    only = args[args.index("--only") + 1] if "--only" in args else None
    torch.set_num_threads(2)
    if only in (None, "qwen3_next"):
        torch.manual_seed(SEED)
        model = Qwen3NextForCausalLM(Qwen3NextConfig(**NEXT))
        save(train(model, steps, "qwen3_next"), out / "qwen3_next")
    if only in (None, "qwen3_5_moe"):
        torch.manual_seed(SEED)
        cfg = Qwen3_5MoeConfig(text_config=dict(QWEN35_TEXT), vision_config=VISION, image_token_id=4092,
                               video_token_id=4093, vision_start_token_id=4094, vision_end_token_id=4095)
        model = Qwen3_5MoeForConditionalGeneration(cfg)
        save(train(model, steps, "qwen3_5_moe"), out / "qwen3_5_moe")


if __name__ == "__main__":
    main()
