#!/usr/bin/env python3
"""Test rows for moe's GGUF codecs and gguf-py's encoding of them (an implementation independent of moe).

Writes fixtures/reference/gguf-codecs/:
  inputs.f32       ROWS × COLS float32 little-endian, the rows below (row-major)
  importance.f32   COLS float32, a per-column importance (what an imatrix holds) for the K-quant imatrix cases
  F16.bin BF16.bin Q8_0.bin Q4_0.bin MXFP4.bin   gguf.quants.quantize(rows, type) bytes, ROWS × row bytes
  gguf-py.json     rows, cols, row labels, gguf-py / numpy versions, sha256 of every file above; for MXFP4 also
                   the sha256 of gguf-py's dequantization of MXFP4.bin and of gpt-oss's MXFP4 experts (the golden
                   fixtures/golden/gpt_oss-mxfp4) repacked into ggml's layout (mxfp4_repack below)

test/gguf/codec-reference.test.ts runs moe's quantizeRows on inputs.f32 and compares bytes. The K-quant references
(kquants.json) come from llama.cpp's own C code: scripts/ggml_ref/ggml_reference.py, run after this script.

    /work/main/.venv/bin/python scripts/gguf_codec_reference.py      (or .venv/bin/python from the repo root)

Deterministic: a seeded numpy Generator (PCG64) plus hand-written rows; re-running rewrites identical files.
"""
import hashlib
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'fixtures', 'reference', 'gguf-codecs')
COLS = 512  # two K-quant super-blocks, sixteen Q8_0/Q4_0 blocks per row
F16_MAX = 65504.0
GGUF_PY_TYPES = ['F16', 'BF16', 'Q8_0', 'Q4_0', 'MXFP4']
MXFP4_GOLDEN = os.path.join(ROOT, 'fixtures', 'golden', 'gpt_oss-mxfp4')


def rows() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(20261202)
    n = lambda: rng.standard_normal(COLS)  # noqa: E731
    out: list[tuple[str, np.ndarray]] = []
    add = lambda label, v: out.append((label, np.asarray(v, dtype=np.float64).astype(np.float32)))  # noqa: E731

    add('zeros', np.zeros(COLS))
    add('constant 0.37', np.full(COLS, 0.37))
    add('constant -1.5', np.full(COLS, -1.5))
    add('normal sigma 1', n())
    add('normal sigma 0.02 (weight scale)', 0.02 * n())
    add('normal sigma 1e-3', 1e-3 * n())
    add('tiny: sigma 1e-6 (f16 subnormals)', 1e-6 * n())
    # below f16's smallest subnormal (5.96e-8), with float32 subnormals (for BF16) beside a normal block maximum: a
    # block of subnormals only would make Q8_0's 1/d infinite, where ggml's C is undefined behaviour
    tinier = n() * np.logspace(-9, -30, COLS)
    tinier[5::32] = np.sign(tinier[5::32]) * 1e-40
    add('tinier: 1e-9 .. 1e-30 and float32 subnormals', tinier)
    add('huge: sigma 1e4 clipped to +-max f16', np.clip(1e4 * n(), -F16_MAX, F16_MAX))
    # +-max f16, the largest float32 that still rounds to it, and the tie that rounds to infinity in F16
    edge = np.tile([F16_MAX, -F16_MAX, 65519.0, -65519.99, 65520.0, -65520.0, 1.0, -0.5], COLS // 8)
    add('+-max f16 and the overflow tie', edge * np.where(rng.random(COLS) < 0.5, 1.0, 0.001))
    add('negative only', -np.abs(n()))
    add('positive only, offset (min > 0)', np.abs(n()) + 0.5)
    # Q8_0 ties: every block has amax 127 (d = 1, id = 1), the others are k + 0.5: roundf rounds away from zero
    q8 = (rng.integers(-127, 127, COLS) + 0.5).astype(np.float64)
    q8[::32] = 127.0
    add('Q8_0 ties (k + 1/2 with d = 1)', q8)
    # F16 and BF16 ties: exactly half-way between two representable values, both parities, several exponents
    k = rng.integers(0, 1 << 9, COLS)
    e = rng.integers(-12, 12, COLS).astype(np.float64)
    f16_ties = (1.0 + (2 * k + 1) * 2.0 ** -11) * 2.0 ** e
    bf16_ties = (1.0 + (2 * (k % 64) + 1) * 2.0 ** -8) * 2.0 ** e
    add('F16 / BF16 rounding ties', np.where(np.arange(COLS) % 2 == 0, f16_ties, -bf16_ties))
    # Q4_0 boundaries: block max -8 (d = 1), values on and just beside half-integers
    q4 = rng.integers(-16, 16, COLS) / 2.0 + rng.choice([0.0, 1e-3, -1e-3], COLS)
    q4[::32] = -8.0
    add('Q4_0 half-integers with d = 1', q4)
    add('heavy tails: student t, 2 dof', rng.standard_t(2, COLS))
    add('sparse: 95% zeros', np.where(rng.random(COLS) < 0.05, n(), 0.0))
    add('outliers: sigma 0.02, x100 every 61st', 0.02 * n() * np.where(np.arange(COLS) % 61 == 7, 100.0, 1.0))
    add('block scales 1e-4 .. 1e2', n() * np.repeat(10.0 ** rng.uniform(-4, 2, COLS // 32), 32))
    add('uniform -1 .. 1', rng.uniform(-1, 1, COLS))
    add('laplace', rng.laplace(0, 1, COLS))
    add('bimodal +-1', np.sign(n()) + 0.1 * n())
    zb = n()
    zb[0:32] = 0.0
    zb[256:272] = 3.0
    add('normal with a zero block and a constant sub-block', zb)
    add('normal sigma 1, second draw', n())
    return out


def importance() -> np.ndarray:
    rng = np.random.default_rng(17)
    c = np.arange(COLS)
    return ((np.where(c % 7 == 0, 50.0, 1.0) * (0.5 + rng.random(COLS))) ** 1).astype(np.float32)


def mxfp4_repack(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """gpt-oss's MXFP4 (blocks [..., 16]: element 2j in byte j's low nibble; scales [...]) as ggml block_mxfp4
    [..., 17] (e, then element j in byte j's low nibble and element j+16 in its high nibble). Our own numpy code
    (llama.cpp does this in convert_hf_to_gguf's GptOssModel.transform_nibble_layout / repack_mxfp4)."""
    codes = np.stack([blocks & 15, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    return np.concatenate([scales[..., None], qs], axis=-1).astype(np.uint8)


def mxfp4_references(n_rows: int) -> dict:
    """sha256 of gguf-py's dequantization of MXFP4.bin, and of the golden's experts repacked (every row of each
    *_blocks tensor, [E, out, in/32, 17]), checked here against gguf-py's decoder and our plain E2M1 decoding."""
    from gguf.quants import dequantize
    from safetensors import safe_open

    q = np.fromfile(os.path.join(OUT, 'MXFP4.bin'), dtype=np.uint8)
    dq = dequantize(q.reshape(n_rows, -1), T.MXFP4).astype('<f4')
    out = {'MXFP4_decoded': hashlib.sha256(dq.tobytes()).hexdigest(), 'repacked': {}}
    with safe_open(os.path.join(MXFP4_GOLDEN, 'model.safetensors'), 'np') as f:  # the U8 parts (numpy has no bf16)
        t = {k: f.get_tensor(k) for k in f.keys() if k.endswith(('_blocks', '_scales'))}
    e2m1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
    for name in sorted(k for k in t if k.endswith('_blocks')):
        b, s = t[name], t[name.replace('_blocks', '_scales')]
        ggml = mxfp4_repack(b, s)
        codes = np.stack([b & 15, b >> 4], -1).reshape(*b.shape[:-1], 32)
        mine = e2m1[codes] * 2.0 ** (s.astype(np.float64) - 127)[..., None]
        theirs = dequantize(ggml.reshape(-1, ggml.shape[-2] * 17), T.MXFP4).reshape(mine.shape)
        assert np.array_equal(theirs.astype(np.float64), mine), name
        out['repacked'][name[: -len('_blocks')]] = hashlib.sha256(ggml.tobytes()).hexdigest()
    return out


def sha(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rs = rows()
    x = np.stack([v for _, v in rs]).astype('<f4')
    files = {'inputs': 'inputs.f32', 'importance': 'importance.f32'}
    x.tofile(os.path.join(OUT, files['inputs']))
    importance().astype('<f4').tofile(os.path.join(OUT, files['importance']))
    for t in GGUF_PY_TYPES:
        with np.errstate(over='ignore'):  # 65520 → inf in F16 is the point of that row
            q = quantize(x, T[t])
        files[t] = f'{t}.bin'
        np.ascontiguousarray(q).view(np.uint8).tofile(os.path.join(OUT, files[t]))
    info = {
        'made_by': 'scripts/gguf_codec_reference.py',
        'gguf_py': gguf.__version__ if hasattr(gguf, '__version__') else version('gguf'),
        'numpy': np.__version__,
        'rows': len(rs),
        'cols': COLS,
        'labels': [label for label, _ in rs],
        'files': files,
        'sha256': {k: sha(os.path.join(OUT, f)) for k, f in files.items()},
        'mxfp4': mxfp4_references(len(rs)),
    }
    with open(os.path.join(OUT, 'gguf-py.json'), 'w') as f:
        json.dump(info, f, indent=2)
        f.write('\n')
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in files.values())
    print(f'{len(rs)} rows × {COLS}: {total} bytes in {OUT}', file=sys.stderr)


def version(name: str) -> str:
    from importlib.metadata import version as v
    return v(name)


if __name__ == '__main__':
    main()
