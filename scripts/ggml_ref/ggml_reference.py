#!/usr/bin/env python3
"""K-quant references from llama.cpp's own C code (ggml-quants.c), for test/gguf/codec-reference.test.ts.

Compiles driver.c with ggml-quants.c from a fetched ggml source tree (gcc -O2, at dev time only), runs ggml's
encoders on the rows of fixtures/reference/gguf-codecs/inputs.f32 (made by scripts/gguf_codec_reference.py) and writes
  fixtures/reference/gguf-codecs/kquants/<T>.bin, <T>-imatrix.bin   the bytes ggml wrote, ROWS × row bytes
  fixtures/reference/gguf-codecs/kquants.json   per type and mode: per-row mean squared error of ggml's round trip
      (plain: mean (x − x̂)²; imatrix: mean imp[c]·(x − x̂)², what ggml's imatrix path minimises), the sha256
      of ggml's decoded values (float32 LE) and of its bytes, and the source commits
It also checks that ggml's own F16 / BF16 / Q8_0 / Q4_0 encoders write the bytes gguf-py wrote (printed, recorded).

    GGML_DIR=…  # a directory with ggml's src/ and include/: llama.cpp/ggml, or a ggml checkout
    .venv/bin/python scripts/ggml_ref/ggml_reference.py "$GGML_DIR" --llama-cpp-commit <sha> [--source "<text>"]

Nothing here runs at npm test time; the test needs neither Python nor gcc.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(ROOT, 'fixtures', 'reference', 'gguf-codecs')
K_TYPES = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K']
GGUF_PY_TYPES = ['F16', 'BF16', 'Q8_0', 'Q4_0']


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('ggml_dir')
    ap.add_argument('--llama-cpp-commit', required=True)
    ap.add_argument('--source', default='', help='where the sources came from (recorded as is)')
    a = ap.parse_args()
    info = json.load(open(os.path.join(REF, 'gguf-py.json')))
    rows, cols = info['rows'], info['cols']
    x = np.fromfile(os.path.join(REF, 'inputs.f32'), dtype='<f4').reshape(rows, cols)
    imp = np.fromfile(os.path.join(REF, 'importance.f32'), dtype='<f4')
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, 'driver')
        src = os.path.join(a.ggml_dir, 'src')
        cmd = ['gcc', '-O2', '-std=c11', '-I', src, '-I', os.path.join(a.ggml_dir, 'include'), '-o', exe,
               os.path.join(HERE, 'driver.c'), os.path.join(src, 'ggml-quants.c'), '-lm']
        subprocess.run(cmd, check=True)
        subprocess.run([exe, str(rows), str(cols), os.path.join(REF, 'inputs.f32'), os.path.join(REF, 'importance.f32'),
                        tmp], check=True)
        read = lambda name: open(os.path.join(tmp, name), 'rb').read()  # noqa: E731
        agree = {}
        for t in GGUF_PY_TYPES:
            mine, theirs = read(f'{t}.bin'), open(os.path.join(REF, info['files'][t]), 'rb').read()
            rb = len(mine) // rows
            agree[t] = sum(mine[r * rb:(r + 1) * rb] == theirs[r * rb:(r + 1) * rb] for r in range(rows))
            print(f'{t}: ggml and gguf-py byte-equal on {agree[t]}/{rows} rows', file=sys.stderr)
        os.makedirs(os.path.join(REF, 'kquants'), exist_ok=True)
        types = {}
        for t in K_TYPES:
            types[t] = {}
            for mode, suffix in (('plain', ''), ('imatrix', '-imatrix')):
                b = read(f'{t}{suffix}.bin')
                dec = np.frombuffer(read(f'{t}{suffix}.dec.f32'), dtype='<f4').reshape(rows, cols)
                err = (x.astype(np.float64) - dec.astype(np.float64)) ** 2
                if mode == 'imatrix':
                    err = err * imp.astype(np.float64)
                rel = f'kquants/{t}{suffix}.bin'
                open(os.path.join(REF, rel), 'wb').write(b)
                types[t][mode] = {
                    'bytes': rel,
                    'bytes_sha256': sha(b),
                    'decoded_sha256': sha(dec.astype('<f4').tobytes()),
                    'mse': float(err.mean()),
                    'mse_per_row': [float(v) for v in err.mean(axis=1)],
                }
                print(f'{t} {mode}: mse {err.mean():.6g}', file=sys.stderr)
    out = {
        'made_by': 'scripts/ggml_ref/ggml_reference.py',
        'llama_cpp_commit': a.llama_cpp_commit,
        'source': a.source,
        'compiler': subprocess.run(['gcc', '--version'], capture_output=True, text=True).stdout.splitlines()[0],
        'rows': rows,
        'cols': cols,
        'inputs_sha256': info['sha256']['inputs'],
        'importance_sha256': info['sha256']['importance'],
        'error': 'plain: row mean of (x - dequantized)^2; imatrix: row mean of importance[col] * (x - dequantized)^2',
        'ggml_rows_equal_to_gguf_py': agree,
        'types': types,
    }
    with open(os.path.join(REF, 'kquants.json'), 'w') as f:
        json.dump(out, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
