#!/usr/bin/env python3
"""References for moe's chat templates (src/eval/chat.ts, `moe generate --chat`): transformers'
`apply_chat_template` (tokenize=False, and the token ids of tokenize=True) on a few conversations, with and without
add_generation_prompt, for three places a template can live (as transformers 5 looks them up):

- "fixture": fixtures/tiny-dsv3 itself, a ChatML-style template as a string in tokenizer_config.json. The script puts
  it there (TEMPLATE below) when absent, so it survives a re-run of scripts/train_fixture.py, which rewrites the file.
- "list": tokenizer_config.json's chat_template as a list of named templates ("default" is used, "tool_use" not).
- "jinja": a chat_template.jinja file beside the tokenizer (it wins over the config's template), with special tokens
  given as AddedToken objects and a model-specific one (`extra_special_tokens` as a dict).

The "list" and "jinja" layouts are temporary folders: the fixture's tokenizer.json plus the files recorded in the
reference, which the test recreates. Writes fixtures/reference/chat-template.json.

    .venv/bin/python scripts/check_chat_template.py
"""
import json
import os
import shutil
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "fixtures", "tiny-dsv3")
OUT = os.path.join(ROOT, "fixtures", "reference", "chat-template.json")

# ChatML (as Qwen's), indented over several lines: trim_blocks/lstrip_blocks and the `-` markers decide its whitespace.
TEMPLATE = """{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}
    {% endif %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) -}}
    {% endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' -}}
    {% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' -}}
{% endif %}"""

# Zephyr-like, with the tokens as variables: bos_token, eos_token and a model-specific one (turn_token; its text is a
# token of the vocabulary: transformers adds an unknown one to the vocabulary, which moe's tokenizer does not do).
JINJA = """{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>
{{ m.content }}{{ eos_token }}
{% endfor %}{% if add_generation_prompt %}<|assistant|>
{% else %}{{ turn_token }}{% endif %}"""

TOOL_USE = "{{ 'tool use template: never chosen without tools' }}"

CONVERSATIONS = [
    [{"role": "user", "content": "What is the state of the union?"}],
    [
        {"role": "system", "content": "You are the President."},
        {"role": "user", "content": "  Say one sentence to Congress.  "},
    ],
    [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Thank you. God bless America."},
        {"role": "user", "content": "And the economy?"},
    ],
]


def tokenizer_config():
    with open(os.path.join(MODEL, "tokenizer_config.json")) as f:
        return json.load(f)


def install_template():
    cfg = tokenizer_config()
    if cfg.get("chat_template") != TEMPLATE:
        cfg["chat_template"] = TEMPLATE
        with open(os.path.join(MODEL, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
            f.write("\n")


def layouts():
    base = {k: v for k, v in tokenizer_config().items() if k != "chat_template"}
    listed = {**base, "chat_template": [{"name": "tool_use", "template": TOOL_USE}, {"name": "default", "template": JINJA}]}
    added = {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": False,
             "rstrip": False, "single_word": False, "special": True}
    jinja_cfg = {**base, "bos_token": added, "extra_special_tokens": {"turn_token": "<|endoftext|>"},
                 "chat_template": "{{ 'the config template: chat_template.jinja wins' }}"}
    return {
        "fixture": None,
        "list": {"tokenizer_config.json": listed},
        "jinja": {"tokenizer_config.json": jinja_cfg, "chat_template.jinja": JINJA},
    }


def render(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for conv in CONVERSATIONS:
        for gen in (False, True):
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen, return_dict=False)
            assert ids == tok(text, add_special_tokens=False)["input_ids"]
            out.append({"messages": conv, "add_generation_prompt": gen, "text": text, "ids": ids})
    return out


def main():
    import transformers

    install_template()
    result = {"transformers_version": transformers.__version__, "model": "fixtures/tiny-dsv3", "layouts": {}}
    for name, files in layouts().items():
        if files is None:
            cases = render(MODEL)
        else:
            with tempfile.TemporaryDirectory() as work:
                shutil.copy(os.path.join(MODEL, "tokenizer.json"), work)
                for f, content in files.items():
                    with open(os.path.join(work, f), "w") as fh:
                        fh.write(content if isinstance(content, str) else json.dumps(content, indent=2))
                cases = render(work)
        result["layouts"][name] = {"files": files, "cases": cases}
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(OUT, {k: len(v["cases"]) for k, v in result["layouts"].items()})


if __name__ == "__main__":
    main()
