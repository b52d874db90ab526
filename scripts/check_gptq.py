#!/usr/bin/env python3
"""Check `moe quantize --format gptq` against GPTQModel's own GPTQ decoder, and write fixtures/reference/gptq.json.

For every case (fixtures/tiny-moe and the qwen3_moe and mixtral goldens at 4, 3 and 8 bits, and one LP allocation
with mixed bits on the fixture) this runs moe twice with the same options, once with --format gptq and once with
--format packed (moe's own layout, whose decode is moe's dequantized weights), then:

- decodes the GPTQ output with GPTQModel's safetensors-level decoder `convert_gptq_file` (gptqmodel/utils/
  model_dequant.py, with its v1 zero-point correction `_correct_gptq_v1_qzeros` and 3-bit unpacking
  `_unpack_rows_3bit` / `_unpack_cols_3bit`), imported by file path from a checkout of ModelCloud/GPTQModel with
  only its torch-only sibling utils/planar_packing.py; the rest of the package (logger, dtype registries) is
  stubbed, nothing is installed. Every decoded weight must equal moe's dequantized weight exactly (float32).
- checks the config the way vLLM reads it: vllm/model_executor/layers/quantization/gptq.py `GPTQConfig.from_config`
  reads `bits`, `group_size`, `desc_act` (required), `lm_head` (default False) and `dynamic` (default {}), and
  gptq_marlin.py `GPTQMarlinConfig` also `sym` (its TYPE_MAP has symmetric types only, so moe's asymmetric output
  stays on vLLM's gptq kernels); GPTQModel decides v1 zero points from `checkpoint_format` ("gptq", model_dequant.py
  `_uses_gptq_v1_qzeros`). The per-module overrides are
  resolved by vllm/model_executor/layers/quantization/utils/gptq_utils.py `get_dynamic_override`: the first key
  whose pattern (after "-:" or "+:") `re.match`es the module name wins, "-:" meaning not quantized and "+:" giving
  overrides such as bits. That rule is re-implemented here (a few lines) and must give, for every module, the bits
  moe stored (from qweight's shape) and "not quantized" for every decoder linear weight stored in full precision.

The reference keeps, per case, the options, the quantization_config and a SHA-256 of the decoded weights (float32,
modules sorted by name); test/quant/gptq-format.test.ts re-writes the outputs with moe and compares.

Usage: .venv/bin/python scripts/check_gptq.py --gptqmodel /work/.mirror/ModelCloud+GPTQModel/repo [--only NAME]
(the `fetch` tool brings github:ModelCloud/GPTQModel; --gptqmodel is its git directory; GPTQMODEL_COMMIT is the
commit verified against).
"""
import argparse
import hashlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPTQMODEL_COMMIT = 'f4c327a17'
REFERENCE = os.path.join(ROOT, 'fixtures', 'reference', 'gptq.json')
# per expert, the default before --granularity layer-projection became gptq's (the reference was made so)
LP = ['--allocate', 'lp', '--bits', '3', '--bit-choices', '2,4', '--method', 'rtn', '--granularity', 'expert']
CASES = [
    (f'{name}-{bits}bit', model, ['--bits', str(bits)])
    for name, model in [
        ('tiny-moe', 'fixtures/tiny-moe'),
        ('qwen3_moe', 'fixtures/golden/qwen3_moe'),
        ('mixtral', 'fixtures/golden/mixtral'),
    ]
    for bits in (4, 3, 8)
] + [('tiny-moe-lp', 'fixtures/tiny-moe', LP)] + [
    # one golden of every other architecture at 4 bits (gpt_oss stores its experts fused: refused, naming GGUF)
    (f'{g}-4bit', f'fixtures/golden/{g}', ['--bits', '4'])
    for g in ('deepseek_v2', 'deepseek_v3', 'deepseek_v32', 'glm4_moe', 'minimax_m2', 'olmoe', 'qwen2_moe',
              'qwen3_5_moe', 'qwen3_5_moe_text', 'qwen3_next')
]


def load_gptqmodel(git_dir, tmp):
    """gptqmodel.utils.model_dequant from the checkout, with planar_packing real and the rest of the package stubbed."""
    src = os.path.join(tmp, 'gptqmodel_src')
    os.makedirs(src, exist_ok=True)
    for rel in ('gptqmodel/utils/model_dequant.py', 'gptqmodel/utils/planar_packing.py'):
        text = subprocess.run(['git', '--git-dir', git_dir, 'show', f'{GPTQMODEL_COMMIT}:{rel}'],
                              check=True, capture_output=True, text=True).stdout
        with open(os.path.join(src, os.path.basename(rel)), 'w') as f:
            f.write(text)
    for pkg in ('gptqmodel', 'gptqmodel.utils', 'gptqmodel.quantization'):
        m = types.ModuleType(pkg)
        m.__path__ = []
        sys.modules[pkg] = m
    dtype = types.ModuleType('gptqmodel.quantization.dtype')
    dtype.available_float4_packed_dtypes = lambda: ()
    dtype.available_float8_dtype_names = lambda: ()
    dtype.available_float8_dtypes = lambda: ()
    dtype.dequantize_f4_e2m1 = dtype.dequantize_fp8 = None
    sys.modules['gptqmodel.quantization.dtype'] = dtype
    logger = types.ModuleType('gptqmodel.utils.logger')
    logger.setup_logger = lambda: logging.getLogger('gptqmodel')
    sys.modules['gptqmodel.utils.logger'] = logger
    mods = {}
    for name in ('planar_packing', 'model_dequant'):
        spec = importlib.util.spec_from_file_location(f'gptqmodel.utils.{name}', os.path.join(src, f'{name}.py'))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods['model_dequant']


def moe(*args):
    subprocess.run(['node', os.path.join(ROOT, 'bin', 'moe.js'), *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shards(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith('.safetensors'))


def moe_packed_weights(d):
    """moe-packed/1 decoded (src/io/packed.ts): w = (code - zero) * scale in float32, codes LSB-first per row."""
    out = {}
    for path in shards(d):
        with safe_open(path, framework='pt') as f:
            meta = f.metadata() or {}
            for key, value in meta.items():
                if not key.startswith('moe.quant.'):
                    continue
                weight = key[len('moe.quant.'):]
                info = json.loads(value)
                base = weight[:-len('.weight')]
                bits, gs = info['bits'], info['group_size']
                rows, cols = info['shape']
                packed = f.get_tensor(base + '.qweight').numpy()
                bitarr = np.unpackbits(packed, axis=1, bitorder='little')[:, :cols * bits]
                codes = (bitarr.reshape(rows, cols, bits).astype(np.int64) << np.arange(bits)).sum(axis=2)
                scales = f.get_tensor(base + '.scales').to(torch.float32).numpy()
                zeros = f.get_tensor(base + '.qzeros').numpy().astype(np.int64)
                g = np.arange(cols) // gs
                out[weight] = ((codes - zeros[:, g]).astype(np.float32) * scales[:, g]).astype(np.float32)
    return out


def vllm_resolve(q, name):
    """vLLM's get_dynamic_override(config, name, "bits", bits): False when excluded, else the bits."""
    for pattern, overrides in q.get('dynamic', {}).items():
        if pattern.startswith('-:'):
            if re.match(pattern[2:], name):
                return False
        elif re.match(pattern.removeprefix('+:'), name):
            return overrides.get('bits', q['bits'])
    return q['bits']


def check_config(q, d, stored_bits):
    for key, kind in (('bits', int), ('group_size', int), ('desc_act', bool), ('sym', bool), ('lm_head', bool)):
        assert isinstance(q.get(key), kind), f'quantization_config.{key} = {q.get(key)!r}'
    assert q['quant_method'] == 'gptq' and q['checkpoint_format'] == 'gptq' and q['bits'] in (2, 3, 4, 8)
    assert isinstance(q.get('dynamic', {}), dict)
    for module, bits in stored_bits.items():
        got = vllm_resolve(q, module)
        assert got == bits, f'{module}: vLLM resolves bits {got}, stored {bits}'
    plain = 0
    for path in shards(d):
        with safe_open(path, framework='pt') as f:
            for key in f.keys():
                if '.layers.' in key and key.endswith('.weight') and len(f.get_slice(key).get_shape()) == 2:
                    assert vllm_resolve(q, key[:-len('.weight')]) is False, f'{key} is stored plain but not "-:"'
                    plain += 1
    return plain


def run_case(md, name, model, args, tmp):
    gq, pk = os.path.join(tmp, name + '-gptq'), os.path.join(tmp, name + '-packed')
    moe('quantize', model, *args, '--format', 'gptq', '-o', gq, '--force')
    moe('quantize', model, *args, '--format', 'packed', '-o', pk, '--force')
    q = json.load(open(os.path.join(gq, 'config.json')))['quantization_config']
    expected = moe_packed_weights(pk)
    decoded, stored_bits = {}, {}
    for path in shards(gq):
        with safe_open(path, framework='pt') as f:
            for key in f.keys():
                if key.endswith('.qweight'):
                    shape = f.get_slice(key).get_shape()
                    cols = f.get_slice(key[:-len('.qweight')] + '.g_idx').get_shape()[0]
                    stored_bits[key[:-len('.qweight')]] = shape[0] * 32 // cols
            # GPTQModel's file decoder takes one bits value per file (it does not apply `dynamic`): each width's
            # modules go to a file of their own, decoded with that width.
            for bits in sorted(set(stored_bits.values())):
                mods = [m for m, b in stored_bits.items() if b == bits and f'{m}.qweight' in f.keys()]
                part = os.path.join(tmp, f'{name}-{bits}.safetensors')
                save_file({f'{m}.{k}': f.get_tensor(f'{m}.{k}') for m in mods
                           for k in ('qweight', 'qzeros', 'scales', 'g_idx')}, part)
                tensors = md.convert_gptq_file(part, torch.float32, {**q, 'bits': bits}, 'cpu')
                for m in mods:
                    decoded[m + '.weight'] = tensors[m + '.weight'].numpy()
    assert decoded, f'{name}: nothing quantized'
    h = hashlib.sha256()
    for weight in sorted(decoded):
        a, b = decoded[weight], expected[weight]
        assert a.shape == b.shape and a.dtype == np.float32, (weight, a.shape, b.shape)
        diff = int(np.sum(a.view(np.uint32) != b.view(np.uint32)))
        assert diff == 0, f'{name} {weight}: {diff} values differ from moe dequantized'
        h.update(np.ascontiguousarray(a).tobytes())
    plain = check_config(q, gq, stored_bits)
    hist = {}
    for module, b in stored_bits.items():
        hist[str(b)] = hist.get(str(b), 0) + 1
    print(f'{name}: {len(decoded)} modules equal (bits {hist}), {plain} decoder weights plain, config ok')
    return {'model': model, 'args': args, 'modules': len(decoded), 'bits': hist, 'plain_weights': plain,
            'decoded_sha256': h.hexdigest(), 'quantization_config': q}


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--gptqmodel', required=True, help='git directory of a ModelCloud/GPTQModel checkout')
    p.add_argument('--only', help='comma-separated case names')
    a = p.parse_args()
    only = set(a.only.split(',')) if a.only else None
    ref = json.load(open(REFERENCE)) if os.path.exists(REFERENCE) else {}
    with tempfile.TemporaryDirectory() as tmp:
        md = load_gptqmodel(a.gptqmodel, tmp)
        calib = json.load(open(os.path.join(ROOT, 'fixtures', 'reference', 'compressed-ppl.json')))['calibrate']
        stats = os.path.join(tmp, 'stats')
        cases = {}
        for name, model, args in CASES:
            if only and name not in only:
                continue
            if '--allocate' in args and not os.path.exists(stats):
                moe('calibrate', 'fixtures/tiny-moe', '--data', 'fixtures/text/calib.txt', *calib, '-o', stats)
            full = args + (['--stats', stats] if '--allocate' in args else [])
            cases[name] = run_case(md, name, model, full, tmp)
            cases[name]['args'] = args + (['--stats', 'STATS'] if '--allocate' in args else [])
    ref = {'gptqmodel_commit': GPTQMODEL_COMMIT, 'calibrate': calib,
           'cases': {**ref.get('cases', {}), **cases}}
    with open(REFERENCE, 'w') as f:
        json.dump(ref, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
