#!/usr/bin/env python3
"""Checks `moe quantize --format compressed-tensors` against the compressed-tensors library and transformers, and
writes fixtures/reference/compressed-tensors.json (what test/reference/compressed-tensors.test.ts compares with).

    .venv/bin/python scripts/check_compressed_tensors.py [--only CASE[,CASE]] [--keep DIR]

The library: compressed-tensors at tag CT_TAG, built from its source (the `fetch` tool brings
vllm-project/compressed-tensors; `git checkout CT_TAG` into a folder, then
`SETUPTOOLS_SCM_PRETEND_VERSION=CT_TAG .venv/bin/pip install --no-build-isolation --no-deps DIR`, plus pydantic,
loguru, psutil and setuptools-scm from the local index). 3-, 5-, 6- and 7-bit packing changed between releases:
the check refuses any other version.

For every case: moe writes the model twice with the same options, as compressed-tensors and as a plain checkpoint
of dequantized weights (--format dequantized, same grid, router kept), then
  (a) the library's own PackedQuantizationCompressor.decompress of every quantized module, with the scheme of the
      config group the library's matcher assigns to it, equals moe's dequantized weight exactly (float32 compare);
      every other tensor is stored unchanged;
  (b) where transformers can load the output (symmetric, one scheme for all experts: transformers 5.18 dequantizes
      fused experts with one scheme and no zero points), AutoModelForCausalLM on CPU gives the perplexity of
      `moe eval` of the dequantized checkpoint (the same weights, by (a)) on the same token windows, within 1e-3
      relative.
The reference records the sha256 of moe's compressed-tensors safetensors file, of the decompressed weights
(float32, module order) and both perplexities.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

CT_TAG = "0.18.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOE = [os.path.join(ROOT, "bin", "moe.js")]
REFERENCE = os.path.join(ROOT, "fixtures", "reference", "compressed-tensors.json")
CALIBRATE = ["--seq-len", "128", "--max-tokens", "8192", "--naee-tokens", "512", "--hessians"]

# The LP cases allocate per expert (--granularity expert, the default before layer-projection became this
# format's): mixed widths within a layer projection.
# name, model (relative to the repo), moe quantize options (STATS: a calibration of that model), whether
# transformers can load it, whether the jest test re-writes it (the tiny-moe cases take seconds each, the goldens
# a fraction of one)
CASES = [
    ("tiny-4", "fixtures/tiny-moe", ["--bits", "4"], True, True),
    ("tiny-4-attn8-g64", "fixtures/tiny-moe", ["--bits", "4", "--attn-bits", "8", "--group-size", "64"], True, False),
    ("tiny-3-asym", "fixtures/tiny-moe", ["--bits", "3", "--grid", "asymmetric"], False, False),
    (
        "tiny-lp-3.5",
        "fixtures/tiny-moe",
        ["--allocate", "lp", "--bits", "3.5", "--bit-choices", "3,4,5", "--granularity", "expert", "--stats", "STATS"],
        False,
        False,
    ),
    ("qwen3_moe-4", "fixtures/golden/qwen3_moe", ["--bits", "4", "--group-size", "32"], True, True),
    (
        "qwen3_moe-4-attn8",
        "fixtures/golden/qwen3_moe",
        ["--bits", "4", "--attn-bits", "8", "--group-size", "32"],
        True,
        True,
    ),
    (
        "qwen3_moe-gptq-lp-3.8",
        "fixtures/golden/qwen3_moe",
        ["--method", "gptq", "--allocate", "lp", "--bits", "3.8", "--bit-choices", "3,4,5", "--group-size", "32"]
        + ["--granularity", "expert", "--stats", "STATS"],
        False,
        True,
    ),
    ("qwen3_moe-3-asym", "fixtures/golden/qwen3_moe", ["--bits", "3", "--group-size", "32", "--grid", "asymmetric"], False, True),
    ("mixtral-4", "fixtures/golden/mixtral", ["--bits", "4", "--group-size", "32"], True, True),
    ("mixtral-6-asym", "fixtures/golden/mixtral", ["--bits", "6", "--group-size", "32", "--grid", "asymmetric"], False, True),
    # MoE-aware quantization (issue 24): GPTQ with routers refitted to the original's routing (--align-router)
    ("tiny-gptq-4-align-router", "fixtures/tiny-moe", ["--method", "gptq", "--bits", "4", "--align-router", "--stats", "STATS"], True, False),
    # AWQ: folded norms and the rescaled (unquantized) router stored in the model's dtype
    ("tiny-gptq-4-awq", "fixtures/tiny-moe", ["--method", "gptq", "--bits", "4", "--awq", "--stats", "STATS"], True, False),
]
# One golden of every other supported architecture (issue 22), 4 bits symmetric; the deepseek family's o_proj and
# the dense down_proj of dots1 and ernie4_5_moe have 48 inputs, so groups of 16. Not loaded by transformers:
# qwen3_5_moe (AutoModelForCausalLM builds the text model, whose modules are named model.layers.…, while the
# checkpoint and its config name them model.language_model.…, as the multimodal class that vLLM loads does) and
# ernie4_5_moe (tied embeddings: transformers 5.18's CompressedTensorsConfig(dequantize=True) load fails in
# mark_tied_weights_as_initialized, "Linear has no attribute weight") and phimoe (its _init_weights reads
# PhimoeTopKRouter.weight, which the compressed-tensors load has replaced); the library's decompression is still
# checked.
ARCH_GOLDENS = ["deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1", "ernie4_5_moe", "glm4_moe", "hunyuan_v1_moe", "minimax_m2", "olmoe", "phimoe", "qwen2_moe",
                "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"]
LOADABLE_ARCH = set(ARCH_GOLDENS) - {"qwen3_5_moe", "ernie4_5_moe", "phimoe"}
CASES += [
    (f"{g}-4", f"fixtures/golden/{g}", ["--bits", "4", "--group-size", "16" if g.startswith(("deepseek", "dots1", "ernie")) else "32"],
     g in LOADABLE_ARCH, True)
    for g in ARCH_GOLDENS
]
# gpt_oss stores its experts fused: moe writes them linearized, one Linear module per expert and projection, as
# llm-compressor does (transformers cannot load that layout into its fused GptOssExperts: decompression only).
CASES.append(("gpt_oss-4", "fixtures/golden/gpt_oss", ["--bits", "4", "--group-size", "16"], False, True))
# llama4_text: fused experts too (halves, not interleaved), linearized the same way; its dense MLP has 24 inputs.
CASES.append(("llama4_text-4", "fixtures/golden/llama4_text", ["--bits", "4", "--group-size", "8"], False, True))
CASES.append(("llama4-4", "fixtures/golden/llama4", ["--bits", "4", "--group-size", "8"], False, True))
# granitemoe: fused in nn.Linear orientation (input_linear [E, 2I, H], output_linear [E, H, I]), linearized likewise
CASES.append(("granitemoe-4", "fixtures/golden/granitemoe", ["--bits", "4", "--group-size", "8"], False, True))
SEQ_LEN = 64
WINDOWS = 8


def run(args: list[str]) -> str:
    r = subprocess.run(["node", *MOE, *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"moe {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def sha256_file(p: str) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def windows_for(model: str, vocab: int, seq: int = SEQ_LEN) -> list[list[int]]:
    """Token windows: the fixture's eval text through its tokenizer, else seeded random ids (goldens have none)."""
    if os.path.exists(os.path.join(ROOT, model, "tokenizer.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, model))
        with open(os.path.join(ROOT, "fixtures", "text", "eval.txt"), encoding="utf-8") as f:
            ids = tok(f.read(), add_special_tokens=False)["input_ids"]
    else:
        g = torch.Generator().manual_seed(22)
        ids = torch.randint(0, vocab, (seq * WINDOWS,), generator=g).tolist()
    return [ids[i * seq : (i + 1) * seq] for i in range(WINDOWS)]


def hf_perplexity(model_dir: str, windows: list[list[int]]) -> float:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # Decompressed in the checkpoint's dtype (the scales' dtype, as the library decodes), then upcast to float32 as
    # the perplexity rule loads weights: loading straight into float32 would decode (code - zero) * scale in
    # float32, finer than the model's dtype that moe's dequantized weights (and any bf16 engine) are rounded to.
    with open(os.path.join(model_dir, "config.json")) as f:
        dtype = getattr(torch, json.load(f).get("dtype", "float32"))
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, device_map="cpu", quantization_config=CompressedTensorsConfig(dequantize=True)
    ).float()
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(torch.tensor([w])).logits[0, :-1].float().double()
            target = torch.tensor(w[1:])
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, target[:, None])[:, 0]
            total += nll.sum().item()
            n += len(w) - 1
    return math.exp(total / n)


def linearized(sd: dict) -> dict:
    """Fused gpt_oss experts (mlp.experts.gate_up_proj [E, H, 2I] gate/up interleaved, down_proj [E, I, H], and
    their biases) as llm-compressor linearizes them (modeling/moe/gpt_oss.py GptOssExpertMLP.copy_from_experts_module):
    mlp.experts.E.gate_proj.weight = gate_up_proj[E][:, 0::2]ᵀ, up_proj = [:, 1::2]ᵀ, down_proj = down_proj[E]ᵀ."""
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            p = k[: -len("gate_up_proj")]
            gub, dn, dnb = sd[p + "gate_up_proj_bias"], sd[p + "down_proj"], sd[p + "down_proj_bias"]
            for e in range(v.shape[0]):
                out[f"{p}{e}.gate_proj.weight"], out[f"{p}{e}.gate_proj.bias"] = v[e][:, 0::2].T, gub[e][0::2]
                out[f"{p}{e}.up_proj.weight"], out[f"{p}{e}.up_proj.bias"] = v[e][:, 1::2].T, gub[e][1::2]
                out[f"{p}{e}.down_proj.weight"], out[f"{p}{e}.down_proj.bias"] = dn[e].T, dnb[e]
        elif k.endswith("block_sparse_moe.input_linear.weight"):
            # GraniteMoE: [E, 2I, H] (gate rows then up rows) and output_linear [E, H, I], nn.Linear orientation
            p = k[: -len("input_linear.weight")]
            dn, half = sd[p + "output_linear.weight"], v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{p}experts.{e}.gate_proj.weight"], out[f"{p}experts.{e}.up_proj.weight"] = v[e][:half], v[e][half:]
                out[f"{p}experts.{e}.down_proj.weight"] = dn[e]
        elif k.endswith("block_sparse_moe.output_linear.weight"):
            pass
        elif k.endswith("feed_forward.experts.gate_up_proj"):
            # Llama 4: [E, H, 2I], gate the first half of the last axis, no biases
            p = k[: -len("gate_up_proj")]
            dn, half = sd[p + "down_proj"], v.shape[-1] // 2
            for e in range(v.shape[0]):
                out[f"{p}{e}.gate_proj.weight"], out[f"{p}{e}.up_proj.weight"] = v[e][:, :half].T, v[e][:, half:].T
                out[f"{p}{e}.down_proj.weight"] = dn[e].T
        elif not any(k.endswith(f"{m}.experts.{n}") for m in ("mlp", "feed_forward")
                     for n in ("gate_up_proj_bias", "down_proj", "down_proj_bias")):
            out[k] = v
    return out


def decompress_all(ct_dir: str, dq_dir: str) -> tuple[str, int, float]:
    """(a): the library's decompression of every module against moe's dequantized weights."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_name

    with open(os.path.join(ct_dir, "config.json")) as f:
        qc = QuantizationConfig.model_validate(json.load(f)["quantization_config"])
    stored = load_file(os.path.join(ct_dir, "model.safetensors"))
    # --format dequantized writes gpt_oss's experts fused (transformers' layout): compared linearized
    plain = linearized(load_file(os.path.join(dq_dir, "model.safetensors")))
    modules = sorted(k[: -len(".weight_packed")] for k in stored if k.endswith(".weight_packed"))
    h = hashlib.sha256()
    worst = 0.0
    for m in modules:
        hits = [
            s
            for s in qc.config_groups.values()
            # "Linear" is a class target: every packed module is a linear layer in the checkpoint's layout
            if any(t == "Linear" or match_name(m, t) for t in s.targets) and not any(match_name(m, i) for i in qc.ignore)
        ]
        if len(hits) != 1:
            sys.exit(f"{m}: {len(hits)} config groups match it")
        scheme = hits[0]
        compressor = BaseCompressor.get_value_from_registry(scheme.format or qc.format)
        sd = {k[len(m) + 1 :]: v for k, v in stored.items() if k.startswith(m + ".weight_")}
        w = compressor.decompress(sd, scheme)["weight"].float()
        ref = plain[m + ".weight"].float()
        if w.shape != ref.shape:
            sys.exit(f"{m}: decompressed {tuple(w.shape)}, moe {tuple(ref.shape)}")
        worst = max(worst, (w - ref).abs().max().item())
        h.update(w.contiguous().numpy().tobytes())
    rest = sorted(k for k in stored if ".weight_" not in k)
    for k in rest:
        if not torch.equal(stored[k], plain[k]):
            sys.exit(f"{k}: stored changed")
    if set(plain) != set(rest) | {m + ".weight" for m in modules}:
        sys.exit("the two outputs hold different modules")
    return h.hexdigest(), len(modules), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None)
    ap.add_argument("--keep", default=None, help="write the outputs under this folder (default: a temporary one)")
    a = ap.parse_args()
    import compressed_tensors
    import transformers

    if compressed_tensors.__version__.split("+")[0] != CT_TAG:
        sys.exit(f"compressed-tensors {compressed_tensors.__version__} installed; this check pins {CT_TAG}")
    only = set(a.only.split(",")) if a.only else None
    work = a.keep or tempfile.mkdtemp(prefix="moe-ct-")
    os.makedirs(work, exist_ok=True)
    ref = json.load(open(REFERENCE)) if os.path.exists(REFERENCE) else {}
    cases = ref.get("cases", {})
    for name, model, opts, loadable, jest in CASES:
        if only and name not in only:
            continue
        calibration = stats = None
        if "STATS" in opts:
            stats = os.path.join(work, name + "-stats")
            if model == "fixtures/tiny-moe":
                data, args = os.path.join(ROOT, "fixtures", "text", "calib.txt"), CALIBRATE
                calibration = {"text": "fixtures/text/calib.txt", "args": CALIBRATE}
            else:
                g = torch.Generator().manual_seed(7)
                wins = torch.randint(0, 256, (16, SEQ_LEN), generator=g).tolist()
                data, args = os.path.join(work, name + "-calib.json"), ["--seq-len", str(SEQ_LEN), "--hessians"]
                with open(data, "w") as f:
                    json.dump(wins, f)
                calibration = {"windows": wins, "args": args}
            run(["calibrate", model, "--data", data, *args, "-o", stats, "--force"])
            opts = [stats if o == "STATS" else o for o in opts]
        ct, dq = os.path.join(work, name + "-ct"), os.path.join(work, name + "-dq")
        grid = ["--grid", "asymmetric"] if "asymmetric" in opts else ["--grid", "symmetric"]
        q = ["quantize", model, "--force", "--json"]
        report = json.loads(run([*q, *opts, "--format", "compressed-tensors", "-o", ct]))
        run([*q, *[o for o in opts if o not in ("--grid", "asymmetric")], *grid, "--keep-router-fp"]
            + ["--format", "dequantized", "-o", dq])
        digest, n, worst = decompress_all(ct, dq)
        if worst != 0:
            sys.exit(f"{name}: the library's decompression differs from moe's dequantized weights by {worst}")
        entry = {
            "model": model,
            "options": [o if o != stats else "STATS" for o in opts],
            "calibration": calibration,
            "jest": jest,
            "bits_histogram": report["bits_histogram"],
            "safetensors_sha256": sha256_file(os.path.join(ct, "model.safetensors")),
            "quantization_config": json.load(open(os.path.join(ct, "config.json")))["quantization_config"],
            "decompressed_sha256": digest,
            "modules": n,
            "max_abs_diff": worst,
        }
        if loadable:
            with open(os.path.join(ROOT, model, "config.json")) as f:
                c = json.load(f)
                vocab = c.get("vocab_size") or c["text_config"]["vocab_size"]
            # deepseek_v32 attends densely only up to index_topk (32 in the golden): shorter windows there
            seq = 32 if "deepseek_v32" in model else SEQ_LEN
            wins = windows_for(model, vocab, seq)
            data = os.path.join(work, name + "-windows.json")
            with open(data, "w") as f:
                json.dump(wins, f)
            hf = hf_perplexity(ct, wins)
            ev = json.loads(run(["eval", dq, "--data", data, "--seq-len", str(seq), "--json"]))
            moe = ev["perplexity"] if "perplexity" in ev else ev["model"]["perplexity"]
            rel = abs(hf - moe) / moe
            if rel > 1e-3:
                sys.exit(f"{name}: transformers perplexity {hf} vs moe eval {moe} ({rel:.2e} relative)")
            entry.update({"windows": wins, "ppl_transformers": hf, "ppl_moe_eval": moe, "ppl_rel_diff": rel})
        cases[name] = entry
        print(f"{name}: {n} modules decompress exactly" + (f"; ppl {entry['ppl_transformers']:.6f} (transformers) vs {entry['ppl_moe_eval']:.6f} (moe eval)" if loadable else ""))
    out = {
        "generator": "scripts/check_compressed_tensors.py",
        "compressed_tensors": CT_TAG,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "calibrate": CALIBRATE,
        "cases": cases,
    }
    with open(REFERENCE, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
