"""Checks that checkpoints written by moe (prune, merge, quantize --format dequantized) load in Hugging Face transformers and measures their
perplexity there, by the same rule as `moe eval` (README): text tokenized whole without special tokens, the first
MAX_TOKENS tokens cut into windows of SEQ_LEN, mean NLL over every predicted position in float64 from float32 logits.

It first makes the outputs with moe itself (the commands below, deterministic), then evaluates each with transformers,
and writes fixtures/reference/compressed-ppl.json. test/reference/compressed.test.ts re-runs the same moe commands and
compares moe eval's perplexity with these numbers.

The second part does the same for every checkpoint in fixtures/golden (saved by transformers 5.18 itself: mixtral,
qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, gpt_oss, qwen3_next, qwen3_5_moe_text, qwen3_5_moe (loaded as
Qwen3_5MoeForConditionalGeneration, its vision tower included), minimax_m2, glm4_moe (each also block-scaled FP8),
llama4_text, llama4 (loaded as Llama4ForConditionalGeneration with its vision tower),
plus the bf16 sharded Mixtral and the tied YaRN Qwen3): a pruned (REAP), a merged (M-SMoE) and a 4-bit GPTQ
dequantized output of each, loaded strictly (no missing, unexpected
or mismatched tensor), with eager attention. These random models have no tokenizer, so calibration and evaluation
use pre-tokenized windows (fixtures/reference/golden-data/{calib,eval}.json: 16 windows of 32 seeded random ids,
written here when absent). Results: fixtures/reference/architectures-ppl.json, checked by
test/reference/architectures.test.ts.

    npm run build && .venv/bin/python scripts/check_hf_outputs.py            # both parts
    npm run build && .venv/bin/python scripts/check_hf_outputs.py golden     # only the golden checkpoints (~1 min)
    npm run build && .venv/bin/python scripts/check_hf_outputs.py tiny       # only the trained fixture
    npm run build && .venv/bin/python scripts/check_hf_outputs.py golden --only deepseek_v3-fp8,qwen3_moe-fp8
                                    # only these golden checkpoints (the others' numbers in the JSON are kept)

FP8 checkpoints (quantization_config.quant_method "fp8": the *-fp8 goldens and their pruned and merged outputs,
which stay FP8) are loaded with transformers' FineGrainedFP8Config(dequantize=True), its only CPU path, patched in
two places (hf_fp8_cpu_patch): its check for the `accelerate` package, which that path does not use, is skipped,
and its Fp8Dequantize takes the block from weight_block_size, because as shipped it derives the block as
rows // scale_rows, which is wrong for partial edge blocks (measured on qwen3_moe-fp8: logits off by 1.06). They are
loaded at their config's dtype (the dequantized weights rounded to it, as transformers does unless told otherwise and
as moe reads them; bf16 for glm4_moe-fp8: loaded as float32 instead, its perplexity is 3e-4 off moe's), then run in
float32.
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
    # Issue 25: DERN's recombined experts, the anchored merge with its refit and recalibrated routers (a recalibrated
    # prune writes the same layout, only router values differ), a written top-k
    ("prune-dern-50", ["prune", "--method", "dern", "--ratio", "0.5"]),
    ("merge-anchored-refit-50-recalibrated", ["merge", "--method", "anchored", "--ratio", "0.5", "--refit", "on", "--recalibrate-router", "ls"]),
    ("prune-reap-75-top1", ["prune", "--method", "reap", "--ratio", "0.75", "--top-k", "1"]),
    # Quantized outputs in the dequantized format (plain bf16 checkpoints); the test compares moe eval of the
    # packed format, made with the same arguments, against these.
    ("quantize-rtn-4", ["quantize", "--bits", "4", "--method", "rtn", "--format", "dequantized"]),
    ("quantize-gptq-3", ["quantize", "--bits", "3", "--method", "gptq", "--format", "dequantized"]),
    ("quantize-gptq-lp-3", ["quantize", "--bits", "3", "--method", "gptq", "--allocate", "lp", "--format", "dequantized"]),
    ("quantize-rtn-lp-2.5", ["quantize", "--bits", "2.5", "--method", "rtn", "--allocate", "lp", "--format", "dequantized"]),
    # MoE-aware quantization (issue 24): routers refitted in place (--align-router); GPTQ from MoE-aware stats (a
    # third element: the calibration's extra flags, the test calibrates with them too)
    ("quantize-gptq-3-align-router", ["quantize", "--bits", "3", "--method", "gptq", "--align-router", "--format", "dequantized"]),
    ("quantize-gptq-3-all-experts-agq", ["quantize", "--bits", "3", "--method", "gptq", "--format", "dequantized"], ["--all-experts", "--hessian-weighting", "gate"]),
    ("quantize-gptq-3-awq", ["quantize", "--bits", "3", "--method", "gptq", "--awq", "--format", "dequantized"]),
]


def moe(*args):
    subprocess.run(["node", os.path.join(ROOT, "bin", "moe.js"), *args], check=True, stdout=subprocess.DEVNULL)


def perplexity(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(open(EVAL, encoding="utf-8").read(), add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    windows = [ids[i : i + SEQ_LEN] for i in range(0, len(ids) - SEQ_LEN + 1, SEQ_LEN)]
    return windows_nll(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), windows)


def windows_nll(model, windows):
    """moe's rule: each window on its own, the mean NLL of every predicted position in float64, and its exp."""
    nll, n = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            x = torch.tensor([w])
            logp = torch.log_softmax(model(x).logits[0, :-1].float().double(), dim=-1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
            n += len(w) - 1
    return {"loss": nll / n, "perplexity": math.exp(nll / n), "positions": n, "windows": len(windows)}


def tiny():
    result = {"transformers_version": transformers.__version__, "seq_len": SEQ_LEN, "max_tokens": MAX_TOKENS, "calibrate": CALIB_ARGS, "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        stats_by_extra = {}

        def stats_for(extra):
            key = tuple(extra)
            if key not in stats_by_extra:
                stats_by_extra[key] = os.path.join(work, "stats-" + str(len(stats_by_extra)))
                moe("calibrate", MODEL, "--data", CALIB, *CALIB_ARGS, *extra, "-o", stats_by_extra[key])
            return stats_by_extra[key]

        result["cases"]["original"] = {"args": [], **perplexity(MODEL)}
        for name, args, *extra in CASES:
            extra = extra[0] if extra else []
            out = os.path.join(work, name)
            moe(args[0], MODEL, "--stats", stats_for(extra), *args[1:], "-o", out)
            result["cases"][name] = {"args": args, **({"calibrate_extra": extra} if extra else {}), **perplexity(out)}
            print(name, result["cases"][name], file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


GOLDEN = os.path.join(ROOT, "fixtures", "golden")
GOLDEN_DATA = os.path.join(ROOT, "fixtures", "reference", "golden-data")
GOLDEN_OUT = os.path.join(ROOT, "fixtures", "reference", "architectures-ppl.json")
GOLDEN_SEQ_LEN = 32  # the pre-tokenized windows' length; moe eval takes the windows as given
GOLDEN_CALIB_ARGS = ["--seq-len", str(GOLDEN_SEQ_LEN), "--hessians"]


def golden_data():
    """16 windows of 32 uniform random ids in [0, 256) each: seed 1 for calibration, seed 2 for evaluation."""
    import random

    os.makedirs(GOLDEN_DATA, exist_ok=True)
    for name, seed in (("calib", 1), ("eval", 2)):
        file = os.path.join(GOLDEN_DATA, name + ".json")
        if os.path.exists(file):
            continue
        rng = random.Random(seed)
        windows = [[rng.randrange(256) for _ in range(GOLDEN_SEQ_LEN)] for _ in range(16)]
        with open(file, "w") as f:
            f.write("[\n" + ",\n".join(json.dumps(w, separators=(",", ":")) for w in windows) + "\n]\n")


def golden_cases(config):
    """Per checkpoint: experts kept by prune and merge. Keep ≥ top-k, and (DeepSeek) a multiple of n_group that
    leaves topk_group groups holding at least top-k experts."""
    config = config.get("text_config", config)  # a nested language model (qwen3_5_moe): its text config
    e = (config.get("num_local_experts") or config.get("num_experts") or config.get("n_routed_experts")
         or config.get("moe_num_experts"))
    prune_keep = e - 1 if e <= 4 else e - 2
    merge_keep = e - 1 if e <= 4 else e // 2
    return [
        ("prune-reap", ["prune", "--method", "reap", "--keep", str(prune_keep)]),
        ("merge-msmoe", ["merge", "--method", "msmoe", "--keep", str(merge_keep)]),
        ("quantize-gptq-4", ["quantize", "--bits", "4", "--method", "gptq", "--format", "dequantized"]),
    ]


def hf_fp8_cpu_patch():
    """See the module docstring: lets transformers 5.18 dequantize FP8 block-scaled checkpoints on CPU correctly."""
    import transformers.integrations.finegrained_fp8 as ff
    import transformers.quantizers.quantizer_finegrained_fp8 as qf

    qf.is_accelerate_available = lambda: True

    def _dequantize_one(self, quantized, scales, output_dtype=None):
        bm, bn = self.hf_quantizer.quantization_config.weight_block_size
        rows, cols = quantized.shape[-2:]
        s = scales.to(torch.float32).repeat_interleave(bm, -2).repeat_interleave(bn, -1)[..., :rows, :cols]
        return (quantized.to(torch.float32) * s).to(output_dtype or torch.float32)

    ff.Fp8Dequantize._dequantize_one = _dequantize_one


def strict_load(model_dir):
    extra = {}
    q = json.load(open(os.path.join(model_dir, "config.json"))).get("quantization_config") or {}
    if q.get("quant_method") == "mxfp4":
        # transformers' CPU path for gpt-oss's MXFP4 experts: decoded to bf16 on load (exact: every MXFP4 value is a
        # bf16 value), then the model in float32 like the others.
        from transformers import Mxfp4Config

        extra["quantization_config"] = Mxfp4Config(dequantize=True)
    dtype = torch.float32
    if q.get("quant_method") == "fp8":
        # FP8 weights dequantized into the checkpoint's own dtype (bf16 for glm4_moe-fp8), as transformers does when
        # the dtype is not forced, and as moe reads them (README, FP8 checkpoints); then the model in float32
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        dtype = getattr(torch, cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    cls = AutoModelForCausalLM
    outer_type = json.load(open(os.path.join(model_dir, "config.json")))["model_type"]
    if outer_type in ("qwen3_5_moe", "llama4"):
        # the text model beside its vision tower: the whole model, so the tower's tensors are checked too
        cls = {"qwen3_5_moe": transformers.Qwen3_5MoeForConditionalGeneration,
               "llama4": transformers.Llama4ForConditionalGeneration}[outer_type]
    model, info = cls.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="eager", output_loading_info=True, **extra
    )
    model = model.float()
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{model_dir}: transformers did not load every tensor: {bad}")
    return model.eval()


def window_perplexity(model_dir, windows):
    return windows_nll(strict_load(model_dir), windows)


def assembled(model, config, stats, work, name, windows, cases):
    """A nested language model (qwen3_5_moe): the quantize case again as two `quantize --layers` parts joined by
    `moe assemble`. It must load strictly (names and config nested back as the single run writes them) and give the
    single run's perplexity exactly (the files are the same bytes; test/model/qwen3-5-nested-outputs.test.ts)."""
    args = dict(golden_cases(config))["quantize-gptq-4"]
    layers = config["text_config"]["num_hidden_layers"]
    half = layers // 2
    parts = []
    for a, b in ((0, half - 1), (half, layers - 1)):
        out = os.path.join(work, f"{name}-part-{a}-{b}")
        moe(args[0], model, "--stats", stats, *args[1:], "--layers", f"{a}-{b}", "-o", out)
        parts.append(out)
    out = os.path.join(work, name + "-assembled")
    moe("assemble", *parts, "-o", out)
    r = {"args": args + ["--layers", f"0-{half - 1}", f"{half}-{layers - 1}"], **window_perplexity(out, windows)}
    single = cases["quantize-gptq-4"]["perplexity"]
    if r["perplexity"] != single:
        raise SystemExit(f"{name}: assembled parts give perplexity {r['perplexity']}, the single run {single}")
    print(name, "assembled", r["perplexity"], file=sys.stderr)
    return r


def golden(only=None):
    golden_data()
    calib = os.path.join(GOLDEN_DATA, "calib.json")
    windows = json.load(open(os.path.join(GOLDEN_DATA, "eval.json")))
    names = [c["case"] for c in json.load(open(os.path.join(GOLDEN, "index.json")))["cases"]]
    result = {"transformers_version": transformers.__version__, "torch_version": torch.__version__, "calibrate": GOLDEN_CALIB_ARGS, "seq_len": GOLDEN_SEQ_LEN, "models": {}}
    if only:
        unknown = set(only) - set(names)
        if unknown:
            raise SystemExit(f"unknown golden checkpoint(s): {sorted(unknown)}")
        kept = json.load(open(GOLDEN_OUT))["models"]
        result["models"] = {n: m for n, m in kept.items() if n not in only}
        names = only
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            model = os.path.join(GOLDEN, name)
            config = json.load(open(os.path.join(model, "config.json")))
            stats = os.path.join(work, name + "-stats")
            moe("calibrate", model, "--data", calib, *GOLDEN_CALIB_ARGS, "-o", stats)
            cases = {"original": {"args": [], **window_perplexity(model, windows)}}
            for case, args in golden_cases(config):
                out = os.path.join(work, name + "-" + case)
                moe(args[0], model, "--stats", stats, *args[1:], "-o", out)
                cases[case] = {"args": args, **window_perplexity(out, windows)}
                print(name, case, cases[case]["perplexity"], file=sys.stderr)
            # the model_type moe works on (a nested language model's: its text_config's)
            model_type = config.get("text_config", config)["model_type"]
            result["models"][name] = {"model_type": model_type, "cases": cases}
            if "text_config" in config:
                result["models"][name]["assembled"] = assembled(model, config, stats, work, name, windows, cases)
    result["models"] = {n: result["models"][n] for n in [c["case"] for c in json.load(open(os.path.join(GOLDEN, "index.json")))["cases"]] if n in result["models"]}
    with open(GOLDEN_OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def main():
    torch.set_num_threads(2)
    hf_fp8_cpu_patch()  # changes nothing for checkpoints without an fp8 quantization_config
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        i = args.index("--only")
        only = args[i + 1].split(",")
        args = args[:i] + args[i + 2 :]
    parts = args or ["tiny", "golden"]
    for part in parts:
        golden(only) if part == "golden" else {"tiny": tiny}[part]()


if __name__ == "__main__":
    main()
