"""A straightforward torch GPTQ (Frantar et al., 2022), the reference bench/gptq.js times moe against.

Same convention as moe (src/quant/rtn.ts): asymmetric groups along the input dimension with zero on the grid,
scales rounded to bfloat16, dampening 1% of the mean Hessian diagonal, blocks of 128 columns, no act-order.

    .venv/bin/python scripts/gptq_reference.py --w W.f32 --h H.f32 --rows 2048 --cols 1408 \
        --bits 4 --group-size 128 --threads 2 --out result.json [--q Q.f32]

W and H are raw little-endian float32 files ([rows, cols] and [cols, cols]). Prints/writes JSON with the time
of the whole GPTQ call (Cholesky included, file reading excluded) and ‖(W − Q)X‖² = tr(ΔHΔᵀ).
"""
import argparse
import json
import time

import numpy as np
import torch


def grid(w, bits):
    """Scale and zero point per row of a group w [rows, g]."""
    maxq = 2**bits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    scale = ((hi - lo) / maxq).to(torch.bfloat16).to(torch.float32)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale), 0, maxq)
    return scale, zero


def quantize(x, scale, zero, bits):
    q = torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1)
    return (q - zero) * scale


def gptq(W, H, bits, group_size, block=128, damp=0.01):
    W = W.clone()
    H = H.clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    scale = zero = None
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        H1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                end = min(col + group_size, cols)
                current = torch.cat([W1[:, i:], W[:, i2:end]], dim=1)[:, : end - col]
                scale, zero = grid(current, bits)
            w = W1[:, i]
            d = H1[i, i]
            q = quantize(w, scale, zero, bits)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ H1[i, i:].unsqueeze(0)
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--w", required=True)
    ap.add_argument("--h", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--cols", type=int, required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--q", help="also write the dequantized result here (raw float32)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    W = torch.from_numpy(np.fromfile(a.w, dtype="<f4").reshape(a.rows, a.cols).copy())
    H = torch.from_numpy(np.fromfile(a.h, dtype="<f4").reshape(a.cols, a.cols).copy())
    times = []
    Q = None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        Q = gptq(W, H, a.bits, a.group_size)
        times.append(time.perf_counter() - t0)
    D = (W - Q).double()
    err = torch.sum((D @ H.double()) * D).item()
    result = {"seconds": min(times), "all_seconds": times, "error": err, "threads": a.threads, "torch": torch.__version__}
    if a.q:
        Q.numpy().astype("<f4").tofile(a.q)
    text = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
