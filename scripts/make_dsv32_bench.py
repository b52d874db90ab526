#!/usr/bin/env python3
"""A small trained DeepSeek-V3.2 for bench/llama-gguf-deepseek_v32.mjs (not a committed fixture: the bench makes it
in .cache).

  OUT/bf16  DeepseekV32ForCausalLM (transformers' own save_pretrained), bfloat16, with fixtures/tiny-moe's tokenizer
            (byte-level BPE, 4,096 tokens), trained briefly on fixtures/text/calib.txt so that its predictions are far
            from uniform: MLA, 1 dense layer then 3 MoE layers of 8 routed experts in 2 groups (sigmoid routing with
            a random e_score_correction_bias, top-2, routed scaling 2.5, 1 shared expert), and the DSA lightning
            indexer (4 heads of 64; index_topk 128, the bench's window, so attention is dense and the indexer,
            which transformers runs without gradients, keeps its initial weights);
  OUT/fp8   the same model stored as deepseek-ai/DeepSeek-V3.2 is: every 2-D weight of model.layers.* but the routers
            and indexer.weights_proj as F8_E4M3 + float32 weight_scale_inv (blocks 32x32, ue8m0; the rule of
            scripts/make_golden.py dsv32_fp8), every other tensor the same bf16 bytes.

Usage: .venv/bin/python scripts/make_dsv32_bench.py OUT [--steps 300]   (a few minutes on 2 shared threads)
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
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from make_golden import DSV32_FP8_BLOCK, dsv32_fp8  # noqa: E402

TOKENIZER = REPO / "fixtures" / "tiny-moe"
CONFIG = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    num_hidden_layers=4,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=64,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    index_n_heads=4,
    index_head_dim=64,
    index_topk=128,
    max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=0,
)
SEQ, BATCH, LR, SEED = 128, 8, 3e-3, 20


def train(steps: int) -> DeepseekV32ForCausalLM:
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    ids = torch.tensor(tok.encode((REPO / "fixtures" / "text" / "calib.txt").read_text()).ids, dtype=torch.int64)
    torch.manual_seed(SEED)
    model = DeepseekV32ForCausalLM(DeepseekV32Config(**CONFIG))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn(buf.shape, generator=g))
            if name.endswith("indexer.k_norm.bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.01)
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
        raise SystemExit("usage: make_dsv32_bench.py OUT [--steps N]")
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
    stored, _, _ = dsv32_fp8(load_file(str(bf16 / "model.safetensors")))
    save_file(stored, str(fp8 / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((bf16 / "config.json").read_text())
    cfg["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "scale_fmt": "ue8m0",
        "weight_block_size": list(DSV32_FP8_BLOCK),
    }
    (fp8 / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    shutil.copy(bf16 / "generation_config.json", fp8 / "generation_config.json")
    copy_tokenizer(fp8)
    print(f"wrote {bf16} and {fp8}")


if __name__ == "__main__":
    main()
