#!/usr/bin/env python3
"""The transformers side of bench/calibrate.js: a calibration pass the way research scripts collect MoE statistics,
with forward hooks on a transformers model, and how long it took.

    .venv/bin/python scripts/bench_calibrate_hf.py MODEL ids.json --threads T [--dtype float32|bfloat16]

MODEL is a Qwen3-MoE (or Qwen2-MoE / OLMoE: any model whose MoE blocks have `mlp.gate` returning
(logits, scores, indices) and `mlp.experts` with 3-D gate_up_proj / down_proj) Hugging Face folder; ids.json is a
JSON array of arrays of token ids, each run on its own as one window. It collects a subset of what `moe calibrate`
records (src/calib/collector.ts), in float64:
  - per linear weight of attention and the router: input rows and Σx² per input column (the imatrix);
  - per routed expert: tokens routed, summed router probability (soft frequency), summed routing weight,
    REAP's Σ g·‖f(x)‖ over its tokens, and the imatrix of its gate/up input and of its down_proj input.
The decoder runs without the lm_head (calibration needs no logits), as `moe calibrate` does. The experts' forward
is replaced by an instrumented copy of transformers' eager loop (same arithmetic, plus the statistics).

Prints one JSON object: tokens, windows, seconds importing, loading and computing, peak_rss_bytes, and a checksum
of the statistics (the total routed count must equal tokens × top_k). Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    with open(args.data) as f:
        windows = json.load(f)

    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    t_imported = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, dtype=getattr(torch, args.dtype), experts_implementation="eager")
    model.eval()
    t_loaded = time.perf_counter()

    f64 = torch.float64
    linear_rows: dict[str, int] = {}
    linear_sumsq: dict[str, torch.Tensor] = {}

    def imatrix(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        s = (x.to(f64) ** 2).sum(0)
        linear_sumsq[name] = s if name not in linear_sumsq else linear_sumsq[name] + s
        linear_rows[name] = linear_rows.get(name, 0) + x.shape[0]

    hooks = []
    experts_stats = {}
    for name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_pre_hook(lambda m, inp, name=name: imatrix(name, inp[0])))
        if name.endswith("mlp.gate") and hasattr(module, "top_k"):
            E = module.num_experts
            st = {"count": torch.zeros(E, dtype=f64), "soft": torch.zeros(E, dtype=f64), "weight": torch.zeros(E, dtype=f64), "reap": torch.zeros(E, dtype=f64)}
            experts_stats[name[: -len(".gate")]] = st
            hooks.append(module.register_forward_pre_hook(lambda m, inp, name=name: imatrix(name, inp[0])))

            def on_router(mod, _inp, out, st=st):
                logits, scores, indices = out
                st["soft"] += torch.softmax(logits.to(f64), dim=-1).sum(0)
                st["count"] += torch.bincount(indices.reshape(-1), minlength=mod.num_experts).to(f64)
                st["weight"].index_add_(0, indices.reshape(-1), scores.reshape(-1).to(f64))

            hooks.append(module.register_forward_hook(on_router))

    def instrumented(mlp_name: str):
        st = experts_stats[mlp_name]

        def forward(self, hidden_states, top_k_index, top_k_weights):
            final = torch.zeros_like(hidden_states)
            mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
            for e in hit:
                e = int(e[0])
                if e == self.num_experts:
                    continue
                pos, tok = torch.where(mask[e])
                x = hidden_states[tok]
                imatrix(f"{mlp_name}.experts.{e}.gate_up_proj", x)
                gate, up = nn.functional.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
                h = self.act_fn(gate) * up
                imatrix(f"{mlp_name}.experts.{e}.down_proj", h)
                y = nn.functional.linear(h, self.down_proj[e])
                g = top_k_weights[tok, pos, None]
                st["reap"][e] += float((g.to(f64).squeeze(-1) * y.to(f64).norm(dim=-1)).sum())
                final.index_add_(0, tok, (y * g).to(final.dtype))
            return final

        return forward

    for name, module in model.model.layers.named_modules(prefix="model.layers"):
        if name.endswith("mlp.experts") and hasattr(module, "gate_up_proj"):
            module.forward = instrumented(name[: -len(".experts")]).__get__(module)

    tokens = 0
    with torch.inference_mode():
        for w in windows:
            model.model(input_ids=torch.tensor([w], dtype=torch.long))
            tokens += len(w)
    t_done = time.perf_counter()

    top_k = model.config.num_experts_per_tok
    routed = sum(float(st["count"].sum()) for st in experts_stats.values())
    if routed != tokens * top_k * len(experts_stats):
        sys.exit(f"routed {routed} != tokens × top_k × layers")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "tool": "transformers",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "windows": len(windows),
        "linears_observed": len(linear_sumsq),
        "seconds_import": t_imported - T_START,
        "seconds_load": t_loaded - t_imported,
        "seconds_compute": t_done - t_loaded,
        "seconds": t_done - T_START,
        "peak_rss_bytes": rss,
        "reap_checksum": sum(float(st["reap"].sum()) for st in experts_stats.values()),
    }))


if __name__ == "__main__":
    main()
