#!/usr/bin/env python3
"""Bundled multiple-choice tasks for `moe eval --task`, built from the held-out text of each trained fixture (text it
never saw). Standard library only, deterministic (seeded).

    python3 scripts/make_tasks.py [--out fixtures/tasks] [--items 200]

Writes, one JSON object {"context", "choices", "answer"} per line:
- moby-cloze.jsonl, from fixtures/text/eval.txt (the held-out chapters of Moby-Dick; fixtures/tiny-moe): the text
  before a held-out word; which of four words comes next (the true word, three other words of the held-out text of
  the same length in characters as distractors).
- sotu-cloze.jsonl, from fixtures/sotu/eval.txt (the held-out State of the Union addresses, 2019-2021;
  fixtures/tiny-dsv3): the same construction.

A "which of four sentences follows this passage" task (distractors: other held-out sentences of similar length) was
tried first and dropped: fixtures/tiny-moe scored 17.5% acc / 22.5% acc_norm on it, no better than chance (25%).
"""
import argparse
import json
import os
import random
import re

SENTENCE = re.compile(r'(?<=[.!?])\s+(?=["\u201c]?[A-Z])|(?<=[.!?]["\u201d])\s+(?=["\u201c]?[A-Z])')


def sentences(text):
    """Sentences per paragraph (one paragraph per line), chapter headings dropped."""
    paras = []
    for line in text.split('\n'):
        line = line.strip()
        if not line or line.startswith('CHAPTER') or line == 'Epilogue':
            continue
        paras.append([s.strip() for s in SENTENCE.split(line) if s.strip()])
    return paras


def cloze(paras, n, rng):
    words = re.compile(r"[A-Za-z]+")
    vocab = {}
    for p in paras:
        for s in p:
            for w in words.findall(s):
                if len(w) >= 4:
                    vocab.setdefault(len(w), set()).add(w.lower())
    vocab = {k: sorted(v) for k, v in vocab.items()}
    cands = []
    for p in paras:
        for s in p:
            for m in words.finditer(s):
                w = m.group(0)
                # A lower-case word of 4+ letters, after at least 40 characters of the sentence.
                if len(w) >= 4 and w.islower() and m.start() >= 40 and len(vocab.get(len(w), [])) >= 20:
                    cands.append((s[:m.start()].rstrip(), w))
    rng.shuffle(cands)
    items = []
    for ctx, w in cands[:n]:
        distract = rng.sample([v for v in vocab[len(w)] if v != w], 3)
        choices = distract + [w]
        rng.shuffle(choices)
        items.append({'context': ctx, 'choices': choices, 'answer': choices.index(w)})
    return items


# (name, held-out text, construction, seed)
TASKS = (
    ('moby-cloze', 'fixtures/text/eval.txt', cloze, 22),
    ('sotu-cloze', 'fixtures/sotu/eval.txt', cloze, 21),
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='fixtures/tasks')
    ap.add_argument('--items', type=int, default=200)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, text, make, seed in TASKS:
        with open(text, encoding='utf-8') as f:
            paras = sentences(f.read())
        items = make(paras, args.items, random.Random(seed))
        path = os.path.join(args.out, name + '.jsonl')
        with open(path, 'w', encoding='utf-8') as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + '\n')
        print(f'{path}: {len(items)} items')


if __name__ == '__main__':
    main()
