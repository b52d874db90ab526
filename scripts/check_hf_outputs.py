"""Checks that checkpoints written by moe (prune, merge, quantize --format dequantized) load in Hugging Face transformers and measures their
perplexity there, by the same rule as `moe eval` (README): text tokenized whole without special tokens, the first
MAX_TOKENS tokens cut into windows of SEQ_LEN, mean NLL over every predicted position in float64 from float32 logits.

It first makes the outputs with moe itself (the commands below, deterministic), then evaluates each with transformers,
and writes fixtures/reference/compressed-ppl.json. test/reference/compressed.test.ts re-runs the same moe commands and
compares moe eval's perplexity with these numbers.

    npm run build && .venv/bin/python scripts/check_hf_outputs.py
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "fixtures", "tiny-moe")
CALIB = os.path.join(ROOT, "fixtures", "text", "calib.txt")
EVAL = os.path.join(ROOT, "fixtures", "text", "eval.txt")
OUT = os.path.join(ROOT, "fixtures", "reference", "compressed-ppl.json")
SEQ_LEN = 128
MAX_TOKENS = 4096
CALIB_ARGS = ["--seq-len", "128", "--max-tokens", "8192", "--naee-tokens", "512", "--hessians"]
# (name, moe arguments after the model and stats)
CASES = [
    ("prune-reap-50", ["prune", "--method", "reap", "--ratio", "0.5"]),
    ("prune-naee-50", ["prune", "--method", "naee", "--ratio", "0.5"]),
    ("prune-frequency-75", ["prune", "--method", "frequency", "--ratio", "0.75"]),
    ("merge-msmoe-50", ["merge", "--method", "msmoe", "--ratio", "0.5"]),
    ("merge-hcsmoe-50", ["merge", "--method", "hcsmoe", "--ratio", "0.5"]),
    # Quantized outputs in the dequantized format (plain bf16 checkpoints); the test compares moe eval of the
    # packed format, made with the same arguments, against these.
    ("quantize-rtn-4", ["quantize", "--bits", "4", "--method", "rtn", "--format", "dequantized"]),
    ("quantize-gptq-3", ["quantize", "--bits", "3", "--method", "gptq", "--format", "dequantized"]),
    ("quantize-gptq-lp-3", ["quantize", "--bits", "3", "--method", "gptq", "--allocate", "lp", "--format", "dequantized"]),
    ("quantize-rtn-lp-2.5", ["quantize", "--bits", "2.5", "--method", "rtn", "--allocate", "lp", "--format", "dequantized"]),
]


def moe(*args):
    subprocess.run(["node", os.path.join(ROOT, "bin", "moe.js"), *args], check=True, stdout=subprocess.DEVNULL)


def perplexity(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(open(EVAL, encoding="utf-8").read(), add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    windows = [ids[i : i + SEQ_LEN] for i in range(0, len(ids) - SEQ_LEN + 1, SEQ_LEN)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            x = torch.tensor([w])
            logp = torch.log_softmax(model(x).logits[0, :-1].float().double(), dim=-1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
            n += len(w) - 1
    return {"loss": nll / n, "perplexity": math.exp(nll / n), "positions": n, "windows": len(windows)}


def main():
    torch.set_num_threads(2)
    result = {"transformers_version": transformers.__version__, "seq_len": SEQ_LEN, "max_tokens": MAX_TOKENS, "calibrate": CALIB_ARGS, "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        stats = os.path.join(work, "stats")
        moe("calibrate", MODEL, "--data", CALIB, *CALIB_ARGS, "-o", stats)
        result["cases"]["original"] = {"args": [], **perplexity(MODEL)}
        for name, args in CASES:
            out = os.path.join(work, name)
            moe(args[0], MODEL, "--stats", stats, *args[1:], "-o", out)
            result["cases"][name] = {"args": args, **perplexity(out)}
            print(name, result["cases"][name], file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
