#!/usr/bin/env python3
"""A small trained GLM-4.5 (glm4_moe) for bench/llama-gguf-glm.mjs (not a committed fixture: the bench makes it in
.cache).

  OUT/bf16  Glm4MoeForCausalLM (transformers' own save_pretrained), bfloat16, with fixtures/tiny-moe's tokenizer
            (byte-level BPE, 4,096 tokens), trained briefly on fixtures/text/calib.txt so that its predictions are
            far from uniform; e_score_correction_bias (a buffer training leaves at 0) then set to seeded noise of
            std 0.05 so that the selection bias matters;
  OUT/fp8   the same model with every 2-D weight of model.layers.* (routers excepted) block-scaled FP8 (F8_E4M3 +
            float32 weight_scale_inv per 64x64 block, quant_method fp8; scripts/make_golden.py fp8_quantize), the
            rest the same bf16 bytes.

The architecture follows GLM-4.5's shape rules at a small size: head_dim 48 != hidden/heads, partial rotary 0.5,
q/k/v biases, per-head q/k norm, layer 0 dense, 8 experts in 2 routing groups (topk_group 1), top-2 renormalised
x 2.5, one shared expert.

Usage: .venv/bin/python scripts/make_glm_bench.py OUT [--steps 300]   (about 3 min on 2 shared threads)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from make_golden import fp8_quantize  # noqa: E402

TOKENIZER = REPO / "fixtures" / "tiny-moe"
CONFIG = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=48,
    partial_rotary_factor=0.5,
    use_qk_norm=True,
    attention_bias=True,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    eos_token_id=0,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
)
SEQ, BATCH, LR, SEED = 128, 8, 3e-3, 20
FP8_BLOCK = (64, 64)


def train(steps: int) -> Glm4MoeForCausalLM:
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    ids = torch.tensor(tok.encode((REPO / "fixtures" / "text" / "calib.txt").read_text()).ids, dtype=torch.int64)
    torch.manual_seed(SEED)
    model = Glm4MoeForCausalLM(Glm4MoeConfig(**CONFIG))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn(buf.shape, generator=g))
    return model


def copy_tokenizer(d: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, d / f)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: make_glm_bench.py OUT [--steps N]")
    out = Path(args[0])
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 300
    torch.set_num_threads(2)
    model = train(steps).to(torch.bfloat16)
    bf16 = out / "bf16"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(bf16))
    copy_tokenizer(bf16)
    fp8 = out / "fp8"
    fp8.mkdir(parents=True)
    tensors = {}
    for name, t in load_file(str(bf16 / "model.safetensors")).items():
        if name.startswith("model.layers.") and name.endswith(".weight") and t.dim() == 2 and "mlp.gate." not in name:
            q, inv = fp8_quantize(t.float(), FP8_BLOCK, False)
            tensors[name], tensors[name[: -len(".weight")] + ".weight_scale_inv"] = q, inv
        else:
            tensors[name] = t
    save_file(tensors, str(fp8 / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((bf16 / "config.json").read_text())
    cfg["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": list(FP8_BLOCK),
    }
    (fp8 / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    shutil.copy(bf16 / "generation_config.json", fp8 / "generation_config.json")
    copy_tokenizer(fp8)
    print(f"wrote {bf16} and {fp8}")


if __name__ == "__main__":
    main()
