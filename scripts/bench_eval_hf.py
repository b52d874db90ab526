#!/usr/bin/env python3
"""The transformers side of bench/eval.js: perplexity of a checkpoint on pre-tokenized windows, by the same rule
as `moe eval`, and how long it took.

    .venv/bin/python scripts/bench_eval_hf.py MODEL ids.json --threads T [--dtype float32|bfloat16|auto]

MODEL is a Hugging Face folder (config.json + safetensors); ids.json is a JSON array of arrays of token ids, each
run on its own as one window (windows shorter than 2 tokens are skipped). The model is loaded with
AutoModelForCausalLM.from_pretrained (local files only) in eval mode, torch.set_num_threads(T), and every forward
pass runs under torch.inference_mode(). Rule (as `moe eval`, src/eval/perplexity.ts): positions 0..T-2 of each window predict
the next id; the NLL of each is logsumexp(logits) - logits[target] computed in float64 from the float32 logits
(bf16 logits are widened to float32 first), summed in float64; loss = sum / positions, perplexity = exp(loss).

Prints one JSON object on stdout: loss, perplexity, tokens, positions, windows, the actual parameter dtype, the
attention and experts implementations transformers picked, seconds spent importing, loading and computing,
peak_rss_bytes (getrusage(RUSAGE_SELF).ru_maxrss), and routing statistics (per MoE layer: the share of token
slots taken by the busiest and the idlest expert, how many experts got any token, and the share of tokens whose k-th and (k+1)-th router
probabilities are within 1e-4, where a float32 rounding difference could change the choice).

Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

NEAR_TIE = 1e-4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model folder")
    p.add_argument("data", help="JSON array of arrays of token ids")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"], help="dtype to load the weights in (auto: the checkpoint's)")
    p.add_argument("--batch-windows", type=int, default=1, help="windows of equal length per forward call (default 1: window by window)")
    p.add_argument("--attn-implementation", default=None, help="override transformers' choice (eager, sdpa)")
    p.add_argument("--experts-implementation", default=None, help="override transformers' choice (eager, grouped_mm, batched_mm)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads < 1:
        sys.exit("--threads must be >= 1")
    with open(args.data) as f:
        windows = [w for w in json.load(f) if len(w) >= 2]
    if not windows:
        sys.exit(f"{args.data}: no window of at least 2 tokens")

    import torch
    from transformers import AutoModelForCausalLM

    try:  # no tqdm bars from the loader
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass

    torch.set_num_threads(args.threads)
    t_imported = time.perf_counter()

    kwargs = {"local_files_only": True}
    kwargs["dtype"] = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    if args.experts_implementation:
        kwargs["experts_implementation"] = args.experts_implementation
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    model.eval()
    t_loaded = time.perf_counter()

    config = model.config
    param_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    vocab = config.vocab_size
    for i, w in enumerate(windows):
        if min(w) < 0 or max(w) >= vocab:
            sys.exit(f"{args.data}: window {i} has ids outside [0, {vocab})")

    # Routing statistics from the router modules (cheap: a few [tokens, E] ops per layer per call).
    counts: dict[int, torch.Tensor] = {}
    ties: dict[int, int] = {}
    routed_tokens: dict[int, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("mlp.gate") and hasattr(module, "top_k") and hasattr(module, "num_experts"):
            layer = int(name.split(".layers.")[1].split(".")[0])

            def hook(mod, _inputs, output, layer=layer):
                logits, _scores, indices = output
                probs = torch.softmax(logits.float(), dim=-1)
                top = torch.topk(probs, mod.top_k + 1, dim=-1).values
                ties[layer] = ties.get(layer, 0) + int((top[:, -2] - top[:, -1] < NEAR_TIE).sum())
                routed_tokens[layer] = routed_tokens.get(layer, 0) + indices.shape[0]
                c = torch.bincount(indices.reshape(-1), minlength=mod.num_experts)
                counts[layer] = c if layer not in counts else counts[layer] + c

            hooks.append(module.register_forward_hook(hook))

    nll_sum = 0.0
    positions = 0
    tokens = 0
    with torch.inference_mode():
        i = 0
        while i < len(windows):
            T = len(windows[i])
            j = i + 1
            while j < len(windows) and j - i < args.batch_windows and len(windows[j]) == T:
                j += 1
            ids = torch.tensor(windows[i:j], dtype=torch.long)
            logits = model(input_ids=ids).logits  # [B, T, vocab]
            pred = logits[:, :-1, :].float().double()
            target = ids[:, 1:]
            lse = torch.logsumexp(pred, dim=-1)
            picked = pred.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            nll_sum += float((lse - picked).sum())
            positions += (j - i) * (T - 1)
            tokens += (j - i) * T
            del logits, pred
            i = j
    t_done = time.perf_counter()
    for h in hooks:
        h.remove()

    routing = []
    for layer in sorted(counts):
        c = counts[layer].double()
        slots = float(c.sum())
        routing.append(
            {
                "layer": layer,
                "max_expert_share": float(c.max()) / slots,
                "min_expert_share": float(c.min()) / slots,
                "experts_used": int((c > 0).sum()),
                "near_tie_share": ties[layer] / routed_tokens[layer],
            }
        )

    loss = nll_sum / positions
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    report = {
        "tool": "transformers",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "requested_dtype": args.dtype,
        "dtype": param_dtype,
        "threads": torch.get_num_threads(),
        "batch_windows": args.batch_windows,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "experts_implementation": getattr(config, "_experts_implementation", None),
        "loss": loss,
        "perplexity": math.exp(loss),
        "tokens": tokens,
        "positions": positions,
        "windows": len(windows),
        "seconds_import": t_imported - T_START,
        "seconds_load": t_loaded - t_imported,
        "seconds_compute": t_done - t_loaded,
        "seconds": t_done - T_START,
        "tokens_per_second_compute": tokens / (t_done - t_loaded),
        "peak_rss_bytes": rss,
        "routing": routing,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
