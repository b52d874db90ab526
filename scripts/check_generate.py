#!/usr/bin/env python3
"""References for `moe generate`: transformers' greedy generate (float32, do_sample=False, its KV cache) of 32 new
tokens on the two trained fixtures, fixtures/tiny-moe and fixtures/tiny-dsv3, for a few prompts from each one's
held-out evaluation text. EOS is disabled (generation_config.eos_token_id = None) so exactly 32 tokens come out;
moe's side passes no EOS ids. Writes fixtures/reference/generate-hf.json: per model, each prompt, its input ids
(tokenizer(prompt), special tokens as the tokenizer adds them), the 32 new ids and their decoded text; under "chat",
the same for a prompt sent as a user message through tiny-dsv3's chat template (`moe generate --chat`).

    .venv/bin/python scripts/check_generate.py
    .venv/bin/python scripts/check_generate.py --bench MODEL PROMPT N   # tokens/s of greedy generate, JSON on stdout
"""
import json
import os
import re
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "reference", "generate-hf.json")
NEW_TOKENS = 32
MODELS = [
    ("tiny-moe", os.path.join(ROOT, "fixtures", "text", "eval.txt")),
    ("tiny-dsv3", os.path.join(ROOT, "fixtures", "sotu", "eval.txt")),
]
# Sentences (of at least WORDS words) of the evaluation text whose first WORDS words are the prompts.
SENTENCES = [3, 50, 200]
WORDS = 10


def prompts(text_file):
    text = open(text_file, encoding="utf-8").read()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= WORDS]
    return [" ".join(sentences[i].split()[:WORDS]) for i in SENTENCES]


def load(name):
    path = os.path.join(ROOT, "fixtures", name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return tok, model


def greedy(tok, model, prompt, n):
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


def bench(name, prompt, n):
    torch.set_num_threads(1)
    tok, model = load(name)
    greedy(tok, model, prompt, 4)  # warm-up
    t = time.perf_counter()
    _, new = greedy(tok, model, prompt, n)
    seconds = time.perf_counter() - t
    print(json.dumps({"model": name, "new_tokens": len(new), "seconds": seconds, "tokens_per_second": len(new) / seconds}))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    torch.manual_seed(0)
    result = {
        "generator": "scripts/check_generate.py",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "new_tokens": NEW_TOKENS,
        "eos": "disabled",
        "models": {},
    }
    for name, text_file in MODELS:
        tok, model = load(name)
        cases = []
        for p in prompts(text_file):
            ids, new = greedy(tok, model, p, NEW_TOKENS)
            assert len(new) == NEW_TOKENS, (name, p, len(new))
            cases.append({"prompt": p, "input_ids": ids, "new_ids": new, "text": tok.decode(new)})
            print(f"{name}: {p!r} -> {tok.decode(new)!r}", file=sys.stderr)
        result["models"][name] = cases
    # `moe generate --chat`: the prompt as one user message through the model's chat template (tiny-dsv3 has one),
    # encoded as apply_chat_template encodes it (the template writes the special tokens itself).
    result["chat"] = {}
    for name, text_file in MODELS[1:]:
        tok, model = load(name)
        cases = []
        for p in prompts(text_file)[:1]:
            text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
            new = out[0, ids.shape[1]:].tolist()
            assert len(new) == NEW_TOKENS, (name, p, len(new))
            cases.append({"prompt": p, "chat_text": text, "input_ids": ids[0].tolist(), "new_ids": new,
                          "text": tok.decode(new)})
            print(f"{name} chat: {p!r} -> {tok.decode(new)!r}", file=sys.stderr)
        result["chat"][name] = cases
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
