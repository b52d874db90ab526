#!/usr/bin/env python3
"""References for `moe eval --task`: lm-evaluation-harness itself (its Hugging Face backend, float32) scores the
bundled multiple-choice task fixtures/tasks/moby-cloze.jsonl on fixtures/tiny-moe, on a REAP 50% pruned output and on
a 4-bit RTN dequantized output (both made by moe), with log_samples on. Writes
fixtures/reference/tasks-lm-eval.json: per model, acc, acc_norm (and their stderr), every item's log-likelihoods,
and lm-eval's items per second.

    .venv/bin/python scripts/check_tasks.py        # needs lm-eval in the venv (see below) and dist/ built
    .venv/bin/python scripts/check_tasks.py --bench BATCH   # lm-eval only, original fixture, JSON on stdout

lm-eval is installed from pip's local store with --no-deps plus dill, datasets, jinja2, more-itertools, zstandard,
sacrebleu, scikit-learn; its table printer needs pytablewriter, absent, so simple_evaluate is called from Python.
The task is defined by a YAML file in a temporary folder: output_type multiple_choice, doc_to_text context,
doc_to_choice choices, doc_to_target answer, target_delimiter " ", zero-shot.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "fixtures", "tiny-moe")
CALIB = os.path.join(ROOT, "fixtures", "text", "calib.txt")
TASK = os.path.join(ROOT, "fixtures", "tasks", "moby-cloze.jsonl")
OUT = os.path.join(ROOT, "fixtures", "reference", "tasks-lm-eval.json")
# The calibration of fixtures/reference/compressed-ppl.json (the tests share its stats: test/fixture-stats.js).
CALIB_ARGS = ["--seq-len", "128", "--max-tokens", "8192", "--naee-tokens", "512", "--hessians"]
# lm-eval batch size: its padded batches give the same log-likelihoods (within float32 noise) much faster.
BATCH = 32
# name: (model, calibration text, task, reference written)
PAIRS = {
    "tiny-moe": (MODEL, CALIB, TASK, OUT),
    "tiny-dsv3": (
        os.path.join(ROOT, "fixtures", "tiny-dsv3"),
        os.path.join(ROOT, "fixtures", "sotu", "calib.txt"),
        os.path.join(ROOT, "fixtures", "tasks", "sotu-cloze.jsonl"),
        os.path.join(ROOT, "fixtures", "reference", "tasks-lm-eval-sotu.json"),
    ),
}
CASES = [
    ("prune-reap-50", ["prune", "--method", "reap", "--ratio", "0.5"]),
    ("quantize-rtn-4", ["quantize", "--bits", "4", "--method", "rtn", "--format", "dequantized"]),
]


def moe(*args):
    subprocess.run(["node", os.path.join(ROOT, "bin", "moe.js"), *args], check=True, stdout=subprocess.DEVNULL)


def task_yaml(folder, name, data):
    with open(os.path.join(folder, name + ".yaml"), "w") as f:
        f.write(
            f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(data)}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
        )


def lm_eval_run(model_dir, name, tasks_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.time()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=[name],
        task_manager=TaskManager(include_path=tasks_dir),
        num_fewshot=0,
        batch_size=BATCH,
        device="cpu",
        log_samples=True,
    )
    seconds = time.time() - started
    r = out["results"][name]
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    lls = [[float(x[0]) for x in s["filtered_resps"]] for s in samples]
    return {
        "n": len(samples),
        "acc": r["acc,none"],
        "acc_stderr": r["acc_stderr,none"],
        "acc_norm": r["acc_norm,none"],
        "acc_norm_stderr": r["acc_norm_stderr,none"],
        "seconds": seconds,
        "items_per_second": len(samples) / seconds,
        "acc_per_item": [s["acc"] for s in samples],
        "acc_norm_per_item": [s["acc_norm"] for s in samples],
        "loglikelihoods": lls,
    }


def bench(batch):
    """bench/tasks.js: lm-eval alone on the original fixture, one JSON line on stdout (no references written)."""
    global BATCH
    BATCH = batch
    name = os.path.splitext(os.path.basename(TASK))[0]
    with tempfile.TemporaryDirectory() as work:
        task_yaml(work, name, TASK)
        r = lm_eval_run(MODEL, name, work)
    print(json.dumps({k: v for k, v in r.items() if k != "acc_per_item" and k != "acc_norm_per_item"}))


def main():
    if "--bench" in sys.argv:
        return bench(int(sys.argv[sys.argv.index("--bench") + 1]))
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for pair in sys.argv[1:] or list(PAIRS):
        check_pair(*PAIRS[pair])


def check_pair(model, calib, task, out_file):
    import lm_eval
    import transformers

    name = os.path.splitext(os.path.basename(task))[0]
    result = {
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "",
        "transformers_version": transformers.__version__,
        "model": os.path.relpath(model, ROOT),
        "task": os.path.relpath(task, ROOT),
        "calibrate": CALIB_ARGS,
        "batch_size": BATCH,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as work:
        tasks_dir = os.path.join(work, "tasks")
        os.makedirs(tasks_dir)
        task_yaml(tasks_dir, name, task)
        stats = os.path.join(work, "stats")
        moe("calibrate", model, "--data", calib, *CALIB_ARGS, "-o", stats)
        models = [("original", [], model)]
        for case, args in CASES:
            out = os.path.join(work, case)
            extra = ["--stats", stats] if args[0] == "prune" else []
            moe(args[0], model, *extra, *args[1:], "-o", out)
            models.append((case, args, out))
        for case, args, folder in models:
            r = lm_eval_run(folder, name, tasks_dir)
            result["models"][case] = {"args": args, **r}
            print(case, {k: v for k, v in r.items() if not isinstance(v, list)}, file=sys.stderr)
    with open(out_file, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
