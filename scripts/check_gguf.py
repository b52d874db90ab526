"""Checks moe's GGUF files against gguf-py (llama.cpp's Python package): it reads every file moe writes for the
trained fixture (every type, with and without the calibration imatrix, and the LP-chosen mix), dequantizes every
tensor with gguf.quants.dequantize, and checks that the values equal moe's own dequantization of the same bytes
(bit for bit, float32). It commits the sha256 of gguf-py's values per tensor in fixtures/reference/gguf-dequant.json;
test/gguf/gguf.test.ts writes the same files again (moe is deterministic) and compares its own dequantization
against those hashes, so the equality is checked in `npm test` without Python.

    npm run build && .venv/bin/python scripts/check_gguf.py
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "fixtures", "tiny-moe")
CALIB = os.path.join(ROOT, "fixtures", "text", "calib.txt")
OUT = os.path.join(ROOT, "fixtures", "reference", "gguf-dequant.json")
# The TypeScript reference backend: its arithmetic is the same on every CPU, so the imatrix (and the rounding it
# steers) does not change with the host's onnxruntime kernels (AVX2 and AVX-512 sum in different orders).
CALIB_ARGS = ["--seq-len", "256", "--max-tokens", "2048", "--backend", "ref"]
TYPES = ["f16", "bf16", "q8_0", "q4_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
CASES = [(t, ["--type", t]) for t in TYPES] + [
    ("q4_k-imatrix", ["--type", "q4_k", "--stats"]),
    ("q3_k-imatrix", ["--type", "q3_k", "--stats"]),
    ("lp-4.5", ["--allocate", "lp", "--bpw", "4.5", "--stats"]),
]

# moe's dequantization of given byte ranges, through the built dist/.
OURS_JS = r"""
const fs = require('fs'); const crypto = require('crypto');
const { dequantizeRows } = require(process.argv[1] + '/dist/gguf/quants.js');
const spec = JSON.parse(fs.readFileSync(0, 'utf8'));
const buf = fs.readFileSync(spec.file);
const out = {};
for (const t of spec.tensors) {
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset + t.offset, t.nbytes).slice();
  const d = dequantizeRows(bytes, t.rows, t.cols, t.type);
  out[t.name] = crypto.createHash('sha256').update(Buffer.from(d.buffer)).digest('hex');
}
console.log(JSON.stringify(out));
"""


def moe(*args):
    subprocess.run(["node", os.path.join(ROOT, "bin", "moe.js"), *args], check=True, stdout=subprocess.DEVNULL)


def main():
    result = {"gguf_py": "gguf (pip)", "calibrate": CALIB_ARGS, "cases": {}}
    failures = []
    with tempfile.TemporaryDirectory() as work:
        stats = os.path.join(work, "stats")
        moe("calibrate", MODEL, "--data", CALIB, *CALIB_ARGS, "-o", stats)
        for name, args in CASES:
            full = []
            for a in args:
                full.append(a)
                if a == "--stats":
                    full.append(stats)
            out = os.path.join(work, name)
            moe("quantize", MODEL, "--format", "gguf", *full, "-o", out)
            file = next(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".gguf"))
            reader = GGUFReader(file)
            tensors, specs = {}, []
            for t in reader.tensors:
                values = dequantize(t.data, t.tensor_type).astype(np.float32)
                shape = [int(d) for d in reversed(t.shape)]
                tensors[t.name] = {"type": t.tensor_type.name, "shape": shape, "sha256": hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()}
                cols = int(t.shape[0])
                specs.append({"name": t.name, "offset": int(t.data_offset), "nbytes": int(t.n_bytes), "rows": int(t.n_elements) // cols, "cols": cols, "type": t.tensor_type.name})
            ours = json.loads(subprocess.run(["node", "-e", OURS_JS, ROOT], input=json.dumps({"file": file, "tensors": specs}), capture_output=True, text=True, check=True).stdout)
            mismatched = [k for k in tensors if tensors[k]["sha256"] != ours[k]]
            if mismatched:
                failures.append((name, mismatched))
            arch = reader.fields["general.architecture"].contents()
            result["cases"][name] = {"args": args, "architecture": arch, "tensor_count": len(tensors), "tensors": tensors}
            print(f"{name}: {arch}, {len(tensors)} tensors, gguf-py = moe: {not mismatched}", file=sys.stderr)
    if failures:
        print("MISMATCH between gguf-py and moe:", failures, file=sys.stderr)
        sys.exit(1)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
