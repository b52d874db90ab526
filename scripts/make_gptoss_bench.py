#!/usr/bin/env python3
"""A small trained gpt-oss for bench/llama-gguf-oss.mjs (not a committed fixture: the bench makes it in .cache).

  OUT/bf16   GptOssForCausalLM (transformers' own save_pretrained: fused experts gate_up_proj [E, H, 2I] with gate
             and up interleaved, down_proj [E, I, H], their biases), bfloat16, with fixtures/tiny-moe's tokenizer
             (byte-level BPE, 4,096 tokens), trained briefly on fixtures/text/calib.txt so that its predictions
             are far from uniform;
  OUT/mxfp4  the same model with its experts stored as MXFP4 as openai/gpt-oss-* publish them (*_blocks U8
             [E, out, in/32, 16], *_scales U8 [E, out, in/32], quant_method mxfp4), encoded by the OCP MX rule
             (scripts/make_golden.py mxfp4_encode); every other tensor the same bf16 bytes.

The architecture follows gpt-oss-20b's shape rules at a small size: alternating sliding (window 32) and full
attention, attention sinks, q/k/v/o biases, YaRN RoPE as published (factor 32, truncate false), 8 experts top-2.

Usage: .venv/bin/python scripts/make_gptoss_bench.py OUT [--steps 300]   (about 2 min on 2 shared threads)
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
from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from make_golden import MXFP4_NOT_CONVERTED, mxfp4_encode  # noqa: E402

TOKENIZER = REPO / "fixtures" / "tiny-moe"
CONFIG = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=128,  # multiples of 32: every expert input is stored in blocks of 32
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_local_experts=8,
    num_experts_per_tok=2,
    sliding_window=32,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    output_router_logits=False,
    eos_token_id=0,
)
SEQ, BATCH, LR, SEED = 128, 8, 3e-3, 18


def train(steps: int) -> GptOssForCausalLM:
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    ids = torch.tensor(tok.encode((REPO / "fixtures" / "text" / "calib.txt").read_text()).ids, dtype=torch.int64)
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(GptOssConfig(**CONFIG))
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
    return model.eval()


def copy_tokenizer(d: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, d / f)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: make_gptoss_bench.py OUT [--steps N]")
    out = Path(args[0])
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 300
    torch.set_num_threads(2)
    model = train(steps).to(torch.bfloat16)
    bf16 = out / "bf16"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(bf16))
    copy_tokenizer(bf16)
    # The MXFP4 variant: the experts encoded, the rest byte for byte.
    mx = out / "mxfp4"
    mx.mkdir(parents=True)
    tensors = {}
    for name, t in load_file(str(bf16 / "model.safetensors")).items():
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            blocks, scales = mxfp4_encode(t.float().transpose(-1, -2))  # [E, in, out] stored as [E, out, in/32, 16]
            tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = blocks, scales
        else:
            tensors[name] = t
    save_file(tensors, str(mx / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((bf16 / "config.json").read_text())
    cfg["quantization_config"] = {"modules_to_not_convert": MXFP4_NOT_CONVERTED, "quant_method": "mxfp4"}
    (mx / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    shutil.copy(bf16 / "generation_config.json", mx / "generation_config.json")
    copy_tokenizer(mx)
    print(f"wrote {bf16} and {mx}")


if __name__ == "__main__":
    main()
