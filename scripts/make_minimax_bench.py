#!/usr/bin/env python3
"""A small trained MiniMax-M2 for bench/llama-gguf-minimax.mjs (not a committed fixture: the bench makes it in .cache).

  OUT/bf16   MiniMaxM2ForCausalLM (transformers' own save_pretrained: block_sparse_moe.gate, experts.E.w1/w2/w3,
             block_sparse_moe.e_score_correction_bias), bfloat16, with fixtures/tiny-moe's tokenizer (byte-level BPE,
             4,096 tokens), trained briefly on fixtures/text/calib.txt so that its predictions are far from uniform;
             after training the selection bias (a buffer transformers does not train) is set to N(0, 0.05²) so that
             it changes some tokens' experts, as a trained MiniMax-M2's does;
  OUT/fp8    the same model with every linear weight of the layers but the routers stored block-scaled FP8 as
             MiniMaxAI/MiniMax-M2 publishes it (F8_E4M3 + weight_scale_inv, blocks of 64 x 64, fmt float8_e4m3fn,
             modules_to_not_convert gate / e_score_correction_bias / lm_head; scripts/make_golden.py fp8_quantize).

MiniMax-M2's shape rules at a small size: heads x head_dim (4 x 48 = 192) != hidden (128), q/k RMSNorm over all
heads, partial rotary (rotary_dim 16 of 48, the released checkpoints' legacy key), sigmoid routing with the
selection bias, 8 experts top-2, no shared expert.

Usage: .venv/bin/python scripts/make_minimax_bench.py OUT [--steps 200]   (a few minutes on 2 shared threads)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from make_golden import fp8_quantize  # noqa: E402

TOKENIZER = REPO / "fixtures" / "tiny-moe"
CONFIG = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=48,
    rotary_dim=16,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    output_router_logits=False,
    bos_token_id=0,
    eos_token_id=0,
    qk_norm_type="per_layer",
    use_qk_norm=True,
    scoring_func="sigmoid",
    use_routing_bias=True,
    shared_intermediate_size=0,
)
FP8_BLOCK = (64, 64)
FP8_QC = {
    "activation_scheme": "dynamic",
    "fmt": "float8_e4m3fn",
    "quant_method": "fp8",
    "weight_block_size": list(FP8_BLOCK),
    "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
}
SEQ, BATCH, LR, SEED = 128, 8, 3e-3, 20


def train(steps: int) -> MiniMaxM2ForCausalLM:
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    ids = torch.tensor(tok.encode((REPO / "fixtures" / "text" / "calib.txt").read_text()).ids, dtype=torch.int64)
    torch.manual_seed(SEED)
    model = MiniMaxM2ForCausalLM(MiniMaxM2Config(**CONFIG))
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
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.e_score_correction_bias.copy_(0.05 * torch.randn(CONFIG["num_local_experts"], generator=g))
    return model.eval()


def copy_tokenizer(d: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, d / f)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: make_minimax_bench.py OUT [--steps N]")
    out = Path(args[0])
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 200
    torch.set_num_threads(2)
    model = train(steps).to(torch.bfloat16)
    bf16 = out / "bf16"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(bf16))
    copy_tokenizer(bf16)
    # The FP8 variant: every linear weight of the layers but the routers block-scaled FP8, the rest the same bf16.
    fp8 = out / "fp8"
    fp8.mkdir(parents=True)
    tensors = {}
    for name, t in load_file(str(bf16 / "model.safetensors")).items():
        if name.startswith("model.layers.") and name.endswith(".weight") and t.dim() == 2 and ".gate." not in name:
            q, inv = fp8_quantize(t.float(), FP8_BLOCK, False)
            tensors[name], tensors[name[: -len(".weight")] + ".weight_scale_inv"] = q, inv
        else:
            tensors[name] = t
    save_file(tensors, str(fp8 / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((bf16 / "config.json").read_text())
    cfg["quantization_config"] = FP8_QC
    (fp8 / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    shutil.copy(bf16 / "generation_config.json", fp8 / "generation_config.json")
    copy_tokenizer(fp8)
    print(f"wrote {bf16} and {fp8}")


if __name__ == "__main__":
    main()
