#!/usr/bin/env python3
"""Writes two small checkpoints quantized by the reference libraries' own code, for `moe` to READ (issue 22), and
fixtures/reference/quantized-inputs.json with what those libraries decode them to; test/io/intquant-inputs.test.ts
opens them with moe and compares every weight bit for bit.

fixtures/quantized/ct-lib    compressed-tensors (tag CT_TAG, see scripts/check_compressed_tensors.py for the
                             install): fixtures/golden/qwen3_moe cast to bf16, its linear layers quantized with the
                             library's calculate_qparams + quantize and packed with its pack_to_int32, in three config
                             groups (format "mixed-precision") that exercise the library's scheme resolution:
                               group_0  targets "re:.*self_attn\\..*"   int8 channel asymmetric (packed zero points)
                               group_1  targets "Linear"               int4 group 8 symmetric, actorder "group"  
                                                                       (weight_g_idx, a random permutation's groups)
                               group_2  targets one expert by name     int3 group 16 asymmetric (an exact name wins
                                                                       over "Linear")
                             ignore: lm_head and the routers ("re:.*mlp\\.gate$").
                             Reference: the library's PackedQuantizationCompressor.decompress of every module.
fixtures/quantized/ct-w8a8   compressed-tensors W8A8 int (`int-quantized`): I8 weights with per-channel scales and
                             dynamic int8 activations, compressed and decompressed by the library's own
                             NaiveQuantizationCompressor (moe reads the weights exactly; the activations it computes
                             in float32, which inspect says).
fixtures/quantized/ct-gpt_oss  gpt_oss as llm-compressor writes it: the fused experts linearized into per-expert
                             Linear modules (its modeling/moe/gpt_oss.py), int4 group 16 packed by the library.
fixtures/quantized/gptq-lib  GPTQ v1 (checkpoint_format "gptq"): the same golden in f16, quantized min-max
                             asymmetric at 4 bits, group 32, desc_act (g_idx from a random column order), with
                             `dynamic` {"-:...experts\\.0\\.down_proj$": {} (kept f16), "+:...self_attn\\.o_proj$":
                             {"bits": 8}}. The packing is AutoGPTQ's (qweight: 32/b codes per int32 along the input,
                             LSB first; qzeros: zero − 1 packed along the output), written here in numpy and LABELLED
                             as such: GPTQModel's own packer needs its compiled extensions. The reference values are
                             GPTQModel's decoder `convert_gptq_file` to float16, the config's dtype (imported by
                             path, see scripts/check_gptq.py).

    .venv/bin/python scripts/check_quantized_inputs.py --gptqmodel /work/.mirror/ModelCloud+GPTQModel/repo
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from check_gptq import GPTQMODEL_COMMIT, load_gptqmodel  # noqa: E402

CT_TAG = "0.18.0"
SRC = os.path.join(ROOT, "fixtures", "golden", "qwen3_moe")
OUT = os.path.join(ROOT, "fixtures", "quantized")
REFERENCE = os.path.join(ROOT, "fixtures", "reference", "quantized-inputs.json")
ONE_EXPERT = "model.layers.1.mlp.experts.3.up_proj"


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()


def copy_aux(dst: str, dtype: str, q: dict) -> None:
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(SRC, "config.json")) as f:
        config = json.load(f)
    config["dtype"] = dtype
    config["quantization_config"] = q
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def linear_modules(sd: dict) -> list[str]:
    return [k[: -len(".weight")] for k, v in sd.items() if ".layers." in k and k.endswith(".weight") and v.ndim == 2]


def make_ct() -> dict:
    import compressed_tensors
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    if compressed_tensors.__version__.split("+")[0] != CT_TAG:
        sys.exit(f"compressed-tensors {compressed_tensors.__version__}; this check pins {CT_TAG}")
    schemes = {
        "group_0": (["re:.*self_attn\\..*"], dict(num_bits=8, strategy="channel", symmetric=False)),
        "group_1": (["Linear"], dict(num_bits=4, strategy="group", group_size=8, symmetric=True, actorder="group")),
        "group_2": ([ONE_EXPERT], dict(num_bits=3, strategy="group", group_size=16, symmetric=False)),
    }
    ignore = ["lm_head", "re:.*mlp\\.gate$"]
    q = {
        "quant_method": "compressed-tensors",
        "format": "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {
            name: {
                "targets": targets,
                "weights": {"type": "int", "dynamic": False, "observer": "minmax", **w},
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
            for name, (targets, w) in schemes.items()
        },
        "ignore": ignore,
        "kv_cache_scheme": None,
        "version": CT_TAG,
    }
    qc = QuantizationConfig.model_validate(q)
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(os.path.join(SRC, "model.safetensors")).items()}
    gen = torch.Generator().manual_seed(22)
    out = {k: v for k, v in sd.items()}
    scheme_of = {}
    for m in linear_modules(sd):
        if m.endswith("mlp.gate"):
            continue
        name = "group_2" if m == ONE_EXPERT else "group_0" if ".self_attn." in m else "group_1"
        scheme = qc.config_groups[name]
        args: QuantizationArgs = scheme.weights
        w = sd[m + ".weight"]
        rows, cols = w.shape
        g = args.group_size if args.strategy == "group" else cols
        gs = min(g, cols)
        ng = (cols + gs - 1) // gs
        g_idx = None
        if args.actorder == "group":
            perm = torch.randperm(cols, generator=gen)
            g_idx = (torch.argsort(perm) // gs).to(torch.int32)  # column perm[j] is the j-th quantized
        col_group = g_idx.long() if g_idx is not None else torch.arange(cols) // gs
        mins = torch.stack([w.float()[:, col_group == k].amin(1) for k in range(ng)], 1)
        maxs = torch.stack([w.float()[:, col_group == k].amax(1) for k in range(ng)], 1)
        scale, zp = calculate_qparams(mins, maxs, args)
        scale = scale.to(torch.bfloat16)
        x_q = quantize(w, scale, zp, args, dtype=torch.int8, g_idx=g_idx)
        del out[m + ".weight"]
        out[m + ".weight_packed"] = pack_to_int32(x_q, args.num_bits)
        out[m + ".weight_scale"] = scale
        if not args.symmetric:
            out[m + ".weight_zero_point"] = pack_to_int32(zp.to(torch.int8), args.num_bits, packed_dim=0)
        if g_idx is not None:
            out[m + ".weight_g_idx"] = g_idx
        out[m + ".weight_shape"] = torch.tensor([rows, cols], dtype=torch.int64)
        scheme_of[m] = name
    dst = os.path.join(OUT, "ct-lib")
    shutil.rmtree(dst, ignore_errors=True)
    copy_aux(dst, "bfloat16", q)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    stored = load_file(os.path.join(dst, "model.safetensors"))
    modules = {}
    for m, name in sorted(scheme_of.items()):
        scheme = qc.config_groups[name]
        comp = BaseCompressor.get_value_from_registry(scheme.format)
        local = {k[len(m) + 1 :]: v for k, v in stored.items() if k.startswith(m + ".weight_")}
        w = comp.decompress(local, scheme)["weight"]
        assert w.dtype == torch.bfloat16, w.dtype
        modules[m + ".weight"] = {"group": name, "shape": list(w.shape), "sha256": sha(w)}
    print(f"ct-lib: {len(modules)} modules, groups {sorted(set(scheme_of.values()))}")
    return {"compressed_tensors": CT_TAG, "modules": modules}


def make_w8a8() -> dict:
    """compressed-tensors W8A8 int (`int-quantized`: I8 weights, per-channel symmetric bf16 scales, dynamic
    per-token int8 activations), every linear layer but the routers, compressed by the library's own
    NaiveQuantizationCompressor.compress and decoded by its decompress."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.utils import calculate_qparams

    q = {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                      "dynamic": True},
                "output_activations": None,
                "format": "int-quantized",
            }
        },
        "ignore": ["lm_head", "re:.*mlp\\.gate$"],
        "kv_cache_scheme": None,
        "version": CT_TAG,
    }
    qc = QuantizationConfig.model_validate(q)
    scheme = qc.config_groups["group_0"]
    comp = BaseCompressor.get_value_from_registry("int-quantized")
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(os.path.join(SRC, "model.safetensors")).items()}
    out = dict(sd)
    mods = [m for m in linear_modules(sd) if not m.endswith("mlp.gate")]
    for m in mods:
        w = sd[m + ".weight"]
        scale, _ = calculate_qparams(w.float().amin(1, keepdim=True), w.float().amax(1, keepdim=True), scheme.weights)
        c = comp.compress({"weight": w, "weight_scale": scale.to(torch.bfloat16)}, scheme)
        out[m + ".weight"], out[m + ".weight_scale"] = c["weight"], c["weight_scale"]
        assert c["weight"].dtype == torch.int8 and "weight_zero_point" not in c
    dst = os.path.join(OUT, "ct-w8a8")
    shutil.rmtree(dst, ignore_errors=True)
    copy_aux(dst, "bfloat16", q)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    stored = load_file(os.path.join(dst, "model.safetensors"))
    modules = {}
    for m in sorted(mods):
        w = comp.decompress({"weight": stored[m + ".weight"], "weight_scale": stored[m + ".weight_scale"]}, scheme)["weight"]
        modules[m + ".weight"] = {"shape": list(w.shape), "sha256": sha(w)}
    print(f"ct-w8a8: {len(modules)} modules")
    return {"compressed_tensors": CT_TAG, "modules": modules}


def make_gpt_oss() -> dict:
    """gpt_oss as llm-compressor writes it: its fused experts linearized (modeling/moe/gpt_oss.py GptOssExpertMLP:
    gate = gate_up_proj[e][:, 0::2]ᵀ, up = gate_up_proj[e][:, 1::2]ᵀ, down = down_proj[e]ᵀ, biases likewise) into
    per-expert Linear modules model.layers.L.mlp.experts.E.{gate,up,down}_proj, every Linear but the router
    int4 group 16 symmetric pack-quantized by the library (quantize + pack_to_int32), decoded by its decompress."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    q = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 16,
                            "dynamic": False, "observer": "minmax"},
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "ignore": ["lm_head", "re:.*mlp\\.router$"],
        "kv_cache_scheme": None,
        "version": CT_TAG,
    }
    qc = QuantizationConfig.model_validate(q)
    scheme = qc.config_groups["group_0"]
    src = os.path.join(ROOT, "fixtures", "golden", "gpt_oss")
    sd = load_file(os.path.join(src, "model.safetensors"))
    lin = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            p = k[: -len("gate_up_proj")]
            gu, gub = v, sd[p + "gate_up_proj_bias"]
            dn, dnb = sd[p + "down_proj"], sd[p + "down_proj_bias"]
            for e in range(v.shape[0]):
                lin[f"{p}{e}.gate_proj.weight"], lin[f"{p}{e}.gate_proj.bias"] = gu[e][:, 0::2].T, gub[e][0::2]
                lin[f"{p}{e}.up_proj.weight"], lin[f"{p}{e}.up_proj.bias"] = gu[e][:, 1::2].T, gub[e][1::2]
                lin[f"{p}{e}.down_proj.weight"], lin[f"{p}{e}.down_proj.bias"] = dn[e].T, dnb[e]
        elif ".mlp.experts." not in k:
            lin[k] = v
    out, mods = {}, []
    for k, w in lin.items():
        m = k[: -len(".weight")]
        if not (".layers." in k and k.endswith(".weight") and w.ndim == 2) or m.endswith("mlp.router"):
            out[k] = w.contiguous()
            continue
        rows, cols = w.shape
        g = w.float().reshape(rows, cols // 16, 16)
        scale, zp = calculate_qparams(g.amin(2), g.amax(2), scheme.weights)
        scale = scale.to(torch.bfloat16)
        x_q = quantize(w, scale, zp, scheme.weights, dtype=torch.int8)
        out[m + ".weight_packed"] = pack_to_int32(x_q, 4)
        out[m + ".weight_scale"] = scale
        out[m + ".weight_shape"] = torch.tensor([rows, cols], dtype=torch.int64)
        mods.append(m)
    dst = os.path.join(OUT, "ct-gpt_oss")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = q
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    stored = load_file(os.path.join(dst, "model.safetensors"))
    comp = BaseCompressor.get_value_from_registry("pack-quantized")
    modules = {}
    for m in sorted(mods):
        local = {k[len(m) + 1 :]: v for k, v in stored.items() if k.startswith(m + ".weight_")}
        w = comp.decompress(local, scheme)["weight"]
        modules[m + ".weight"] = {"shape": list(w.shape), "sha256": sha(w)}
    print(f"ct-gpt_oss: {len(modules)} modules (experts linearized as llm-compressor does)")
    return {"compressed_tensors": CT_TAG, "modules": modules}


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's pack along dim 0: int32 row k holds codes[k·32/b .. ] LSB first (bits 2, 4, 8)."""
    per = 32 // bits
    rows, cols = codes.shape
    out = np.zeros((rows // per, cols), dtype=np.uint32)
    for j in range(per):
        out |= codes[j::per].astype(np.uint32) << np.uint32(bits * j)
    return out.view(np.int32)


def make_gptq(gptqmodel: str) -> dict:
    group, base_bits = 32, 4
    excluded = "model.layers.0.mlp.experts.0.down_proj"
    dynamic = {f"-:^{excluded.replace('.', '[.]')}$": {}, "+:.*self_attn\\.o_proj$": {"bits": 8}}
    q = {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": base_bits,
        "group_size": group,
        "desc_act": True,
        "sym": False,
        "lm_head": False,
        "pack_dtype": "int32",
        "dynamic": dynamic,
    }
    sd = {k: v.to(torch.float16) for k, v in load_file(os.path.join(SRC, "model.safetensors")).items()}
    gen = torch.Generator().manual_seed(23)
    out = dict(sd)
    bits_of = {}
    for m in linear_modules(sd):
        if m.endswith("mlp.gate") or m == excluded:
            continue
        bits = 8 if m.endswith("self_attn.o_proj") else base_bits
        w = sd[m + ".weight"].float()  # [out, in]
        rows, cols = w.shape
        ng = (cols + group - 1) // group
        perm = torch.randperm(cols, generator=gen)
        g_idx = (torch.argsort(perm) // group).to(torch.int32)
        maxq = 2**bits - 1
        scales = torch.zeros(ng, rows)
        zeros = torch.zeros(ng, rows, dtype=torch.int64)
        for k in range(ng):
            cw = w[:, g_idx == k]
            lo, hi = cw.amin(1).clamp(max=0), cw.amax(1).clamp(min=0)
            s = ((hi - lo) / maxq).clamp(min=1e-8).to(torch.float16).float()
            scales[k], zeros[k] = s, torch.round(-lo / s).clamp(0, maxq).long()
        gi = g_idx.long()
        codes = torch.clamp(torch.round(w / scales[gi].T) + zeros[gi].T, 0, maxq).long()  # [out, in]
        del out[m + ".weight"]
        out[m + ".qweight"] = torch.from_numpy(pack_rows(codes.T.numpy(), bits))
        out[m + ".qzeros"] = torch.from_numpy(pack_rows(((zeros - 1) & maxq).T.numpy(), bits).T.copy())
        out[m + ".scales"] = scales.to(torch.float16)
        out[m + ".g_idx"] = g_idx
        bits_of[m] = bits
    dst = os.path.join(OUT, "gptq-lib")
    shutil.rmtree(dst, ignore_errors=True)
    copy_aux(dst, "float16", q)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    modules = {}
    with tempfile.TemporaryDirectory() as tmp:
        md = load_gptqmodel(gptqmodel, tmp)
        for bits in sorted(set(bits_of.values())):
            mods = [m for m, b in bits_of.items() if b == bits]
            part = os.path.join(tmp, f"{bits}.safetensors")
            save_file({f"{m}.{k}": out[f"{m}.{k}"] for m in mods for k in ("qweight", "qzeros", "scales", "g_idx")}, part)
            dec = md.convert_gptq_file(part, torch.float16, {**q, "bits": bits}, "cpu")
            for m in mods:
                modules[m + ".weight"] = {"bits": bits, "shape": list(dec[m + ".weight"].shape), "sha256": sha(dec[m + ".weight"])}
    print(f"gptq-lib: {len(modules)} modules, bits {sorted(set(bits_of.values()))}, {excluded} kept f16")
    return {"gptqmodel_commit": GPTQMODEL_COMMIT, "packing": "AutoGPTQ v1 layout, packed by this script", "modules": dict(sorted(modules.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gptqmodel", required=True, help="git directory of a ModelCloud/GPTQModel checkout")
    a = ap.parse_args()
    ref = {"generator": "scripts/check_quantized_inputs.py", "ct-lib": make_ct(), "ct-w8a8": make_w8a8(),
           "ct-gpt_oss": make_gpt_oss(),
           "gptq-lib": make_gptq(a.gptqmodel)}
    with open(REFERENCE, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
