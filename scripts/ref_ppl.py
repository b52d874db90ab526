#!/usr/bin/env python3
"""Reference perplexity of a Hugging Face checkpoint on a text file, by the perplexity rule of moe eval (README)
(the rule `moe eval` implements), computed with transformers.

    .venv/bin/python scripts/ref_ppl.py MODEL_DIR TEXT --seq-len N [--max-tokens M] [--json OUT] [--batch B]

Rule: tokenize the whole text with the model's tokenizer (MODEL_DIR/tokenizer.json through
transformers' AutoTokenizer), adding no special tokens; keep the first M tokens (all when
--max-tokens is absent); cut into consecutive non-overlapping windows of N tokens and drop a last
partial window; run each window on its own (B windows of equal length per forward call, no padding,
no attention mask: each row is an independent sequence, so batching does not change the result);
positions 0..N-2 of each window predict the next token; NLL = logsumexp(logits) - logits[target]
in float64 from the float32 logits (the model is loaded with dtype=float32, so bf16 weights are
upcast); loss = mean NLL over all N-1 positions of all windows (float64 sum); perplexity = exp(loss).

Prints one JSON object on stdout (and writes it to --json OUT when given): text file, its sha256,
seq_len, max_tokens, text_tokens (all tokens of the text), tokens_used (windows * seq_len),
windows, positions, loss, perplexity, first_token_ids (first 20 ids of the text), and versions.
--append-to FILE merges the run into FILE (see --help); fixtures/tiny-moe/reference-ppl.json is made so.
Offline: nothing is downloaded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def dumps(obj) -> str:
    """json.dumps(indent=2) with lists of numbers kept on one line."""
    s = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*([-0-9.e, \n]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", s)


RULE = (
    "moe eval's perplexity rule: tokenize the whole text with the model's tokenizer adding no special tokens; "
    "keep the first max_tokens tokens (null: all); consecutive non-overlapping windows of seq_len, last partial "
    "window dropped; each window run on its own; NLL = logsumexp(logits) - logits[target] in float64 from "
    "float32 logits (weights loaded as float32); loss = mean over the seq_len-1 predicted positions of every "
    "window; perplexity = exp(loss). Computed by scripts/ref_ppl.py with transformers."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("text")
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8, help="windows per forward call (no effect on the result)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the JSON object to this file")
    ap.add_argument("--append-to", default=None,
                    help="merge into this JSON file: {runs: [...], token_counts: {text: n}, first_token_ids: {text: ids}}; "
                         "a run with the same text, seq_len and max_tokens is replaced")
    args = ap.parse_args()
    if args.seq_len < 2:
        sys.exit("--seq-len must be >= 2")

    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    with open(args.text, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")

    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    tok.model_max_length = 1 << 62  # silence the "longer than model_max_length" warning; we window ourselves
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_text = len(ids)
    kept = ids if args.max_tokens is None else ids[: args.max_tokens]
    n_win = len(kept) // args.seq_len
    if n_win == 0:
        sys.exit(f"fewer than {args.seq_len} tokens: no window")
    x = torch.tensor(kept[: n_win * args.seq_len], dtype=torch.long).reshape(n_win, args.seq_len)

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, local_files_only=True)
    model.eval()

    total = 0.0
    positions = 0
    with torch.inference_mode():
        for i in range(0, n_win, args.batch):
            xb = x[i : i + args.batch]
            logits = model(input_ids=xb, use_cache=False).logits  # float32 [b, T, V]
            assert logits.dtype == torch.float32
            lg = logits[:, :-1].double()
            tgt = xb[:, 1:]
            nll = torch.logsumexp(lg, dim=-1) - lg.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            total += float(nll.sum())
            positions += tgt.numel()
    loss = total / positions
    out = {
        "model": os.path.basename(os.path.normpath(args.model_dir)),
        "text": os.path.relpath(os.path.abspath(args.text), os.getcwd()),
        "text_sha256": hashlib.sha256(raw).hexdigest(),
        "seq_len": args.seq_len,
        "max_tokens": args.max_tokens,
        "text_tokens": n_text,
        "tokens_used": n_win * args.seq_len,
        "windows": n_win,
        "positions": positions,
        "loss": loss,
        "perplexity": math.exp(loss),
        "first_token_ids": ids[:20],
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    s = dumps(out)
    print(s)
    if args.json:
        with open(args.json, "w") as f:
            f.write(s + "\n")
    if args.append_to:
        doc = {}
        if os.path.exists(args.append_to):
            with open(args.append_to) as f:
                doc = json.load(f)
        doc.setdefault("rule", RULE)
        doc["model"] = out["model"]
        doc.setdefault("token_counts", {})[out["text"]] = n_text
        doc.setdefault("first_token_ids", {})[out["text"]] = out["first_token_ids"]
        run = {k: v for k, v in out.items() if k not in ("model", "first_token_ids")}
        key = (run["text"], run["seq_len"], run["max_tokens"])
        runs = [r for r in doc.get("runs", []) if (r["text"], r["seq_len"], r["max_tokens"]) != key]
        doc["runs"] = runs + [run]
        with open(args.append_to, "w") as f:
            f.write(dumps(doc) + "\n")


if __name__ == "__main__":
    main()
