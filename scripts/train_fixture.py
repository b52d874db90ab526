#!/usr/bin/env python3
"""Train the trained fixtures, so that expert pruning, merging and quantization move a real perplexity:
  --arch qwen3_moe (default): fixtures/tiny-moe, a small Qwen3-MoE on Moby-Dick (fixtures/text);
  --arch deepseek_v3: fixtures/tiny-dsv3, a small DeepSeek-V3 (MLA, shared expert, sigmoid routing with
     e_score_correction_bias and group-limited top-k, one dense first layer) on State of the Union
     addresses (fixtures/sotu, made by scripts/prepare_text2.py).

Steps (all offline, CPU, deterministic for a given machine / thread count):
  1. tokenizer: byte-level BPE (GPT-2 regex pre-tokenizer, ByteLevel decoder, no normalizer,
     one special token "<|endoftext|>" = id 0) trained with `tokenizers` on fixtures/text/calib.txt.
  2. model: Qwen3MoeForCausalLM / DeepseekV3ForCausalLM (transformers), float32 training on calib.txt
     tokens (no special tokens), random windows, AdamW + linear warmup + cosine decay, cross-entropy
     plus a per-layer load-balancing loss and a small router z-loss (Switch-Transformer loss on softmax
     scores for qwen3_moe; for deepseek_v3 the DeepSeek-V3 balance loss on normalised sigmoid scores plus
     its aux-loss-free balancing: after every step e_score_correction_bias += gamma * sign(mean load - load)).
  3. save: bfloat16 safetensors via save_pretrained (per-expert tensors), tokenizer files,
     reload check, and per-layer expert usage on eval.txt (printed as JSON).

Usage (from the repository root, after scripts/prepare_text.py):
  .venv/bin/python scripts/train_fixture.py                 # everything (12.5 min here on 2 shared threads)
  .venv/bin/python scripts/train_fixture.py --tokenizer-only
  .venv/bin/python scripts/train_fixture.py --usage-only    # expert usage of the saved model
  .venv/bin/python scripts/train_fixture.py --arch deepseek_v3 [--usage-only]   # fixtures/tiny-dsv3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

# OpenMP threads that sleep instead of spinning at barriers: on a CPU shared with other jobs, spinning
# threads slowed a training step 2-10x (measured here); results do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(REPO, "fixtures", "text")  # set from --text in main()
OUT = os.path.join(REPO, "fixtures", "tiny-moe")
# per-architecture defaults: output folder, text folder, training steps and layers
ARCH_DEFAULTS = {
    "qwen3_moe": {
        "out": OUT,
        "text": TEXT,
        "steps": 600,
        "layers": 3,
        "threads": 2,
        "batch": 16,
        "warmup": 50,
        "lr": 1e-3,
        "max_minutes": 30.0,
    },
    "deepseek_v3": {
        "out": os.path.join(REPO, "fixtures", "tiny-dsv3"),
        "text": os.path.join(REPO, "fixtures", "sotu"),
        "steps": 140,
        "layers": 3,
        "threads": 1,
        "batch": 8,
        "warmup": 15,
        "lr": 1.5e-3,
        "max_minutes": 45.0,
    },
}
EOT = "<|endoftext|>"


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(out_dir: str, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([os.path.join(TEXT, "calib.txt")], trainer)
    assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() == vocab_size
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOT,
        "bos_token": None,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def check_tokenizer(out_dir: str) -> dict:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out_dir)
    raw = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    info = {"class": type(hf).__name__}
    for name in ("calib.txt", "eval.txt"):
        text = open(os.path.join(TEXT, name), encoding="utf-8").read()
        ids = hf(text, add_special_tokens=False)["input_ids"]
        ids_default = hf(text)["input_ids"]  # must not add anything either
        assert ids == raw.encode(text).ids == ids_default, name
        assert 0 not in ids
        assert hf.decode(ids) == text, f"{name}: decode(encode(text)) != text"
        info[name] = len(ids)
    print(f"tokenizer ok: {info}", file=sys.stderr)
    return info


def encode_file(out_dir: str, name: str) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    text = open(os.path.join(TEXT, name), encoding="utf-8").read()
    return np.asarray(tok.encode(text).ids, dtype=np.int64)


# ---------------------------------------------------------------- model
def make_config(a):
    if a.arch == "deepseek_v3":
        return make_config_dsv3(a)
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=a.vocab_size,
        hidden_size=256,
        intermediate_size=256,  # dense-MLP size, unused (no mlp_only_layers)
        moe_intermediate_size=256,
        num_hidden_layers=a.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=a.experts,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attention_bias=False,
        use_sliding_window=False,
        initializer_range=0.02,
        output_router_logits=False,
        router_aux_loss_coef=a.aux_coef,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=None,
    )


def make_config_dsv3(a):
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=a.vocab_size,
        hidden_size=256,
        intermediate_size=768,  # the dense MLP of layer 0
        moe_intermediate_size=256,  # routed and shared experts
        num_hidden_layers=a.layers,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=128,
        kv_lora_rank=128,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        rope_interleave=True,
        n_routed_experts=a.experts,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attention_bias=False,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=None,
    )


class RouterTap:
    """Forward hooks on DeepseekV3TopkRouter modules: keep (logits, selected indices) of the last forward
    (transformers' DeepSeek-V3 has no output_router_logits)."""

    def __init__(self, model):
        self.out = []
        self.gates = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, "gate")]
        for g in self.gates:
            g.register_forward_hook(lambda mod, inp, o: self.out.append((o[0], o[2])))

    def take(self):
        out, self.out = self.out, []
        return out


def dsv3_balance_loss(taps, num_experts: int, top_k: int) -> torch.Tensor:
    """DeepSeek-V3's balance loss per layer (over the batch), averaged over layers: sum_j f_j * P_j with
    f_j = E / (K T) * (selections of j), P_j = mean over tokens of s_j / sum_i s_i, s = sigmoid(logits)
    (= 1.0 when perfectly balanced)."""
    losses = []
    for logits, sel in taps:
        s = torch.sigmoid(logits.float())
        p = (s / s.sum(-1, keepdim=True)).mean(0)
        f = torch.bincount(sel.reshape(-1), minlength=num_experts).float() * num_experts / sel.numel()
        losses.append(torch.sum(f * p))
    return torch.stack(losses).mean()


@torch.no_grad()
def dsv3_update_bias(model, taps, num_experts: int, gamma: float) -> None:
    """DeepSeek-V3 auxiliary-loss-free balancing: raise the selection bias of under-loaded experts and
    lower it for over-loaded ones by gamma per step."""
    gates = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, "gate")]
    for g, (_, sel) in zip(gates, taps):
        load = torch.bincount(sel.reshape(-1), minlength=num_experts).float()
        g.e_score_correction_bias += gamma * torch.sign(load.mean() - load)


def load_balance_loss(router_logits, num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-Transformer loss E * sum_j f_j * P_j, computed per layer and averaged over layers
    (transformers' load_balancing_loss_func pools the counts over layers, which lets one layer
    collapse while another compensates)."""
    losses = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        _, sel = torch.topk(probs, top_k, dim=-1)
        f = torch.bincount(sel.reshape(-1), minlength=num_experts).float() / sel.shape[0]
        losses.append(num_experts * torch.sum(f * probs.mean(0)))
    return torch.stack(losses).mean()


def z_loss(router_logits) -> torch.Tensor:
    return torch.stack([torch.logsumexp(l.float(), dim=-1).pow(2).mean() for l in router_logits]).mean()


@torch.no_grad()
def eval_loss(model, ids: np.ndarray, seq_len: int, max_windows: int) -> float:
    model.eval()
    n = min(len(ids) // seq_len, max_windows)
    x = torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len))
    tot, cnt = 0.0, 0
    for i in range(0, n, 8):
        xb = x[i : i + 8]
        logits = model(input_ids=xb).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1), reduction="sum"
        )
        tot += float(nll)
        cnt += xb[:, 1:].numel()
    model.train()
    return tot / cnt


def lr_at(step: int, a) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def train(a, calib: np.ndarray, evals: np.ndarray):
    from transformers import DeepseekV3ForCausalLM, Qwen3MoeForCausalLM

    torch.manual_seed(a.seed)
    random.seed(a.seed)
    cfg = make_config(a)
    dsv3 = a.arch == "deepseek_v3"
    model = (DeepseekV3ForCausalLM if dsv3 else Qwen3MoeForCausalLM)(cfg).float()
    tap = RouterTap(model) if dsv3 else None
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"params: {nparams}", file=sys.stderr)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(a.seed)
    data = torch.from_numpy(calib)
    hi = len(calib) - a.seq_len
    log = []
    t0 = time.time()
    ema = None
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        starts = torch.randint(0, hi + 1, (a.batch,), generator=gen)
        x = torch.stack([data[s : s + a.seq_len] for s in starts.tolist()])
        if dsv3:
            tap.take()
            out = model(input_ids=x)
            taps = tap.take()
            router_logits = [t[0] for t in taps]
            lb = dsv3_balance_loss(taps, a.experts, 2)
        else:
            out = model(input_ids=x, output_router_logits=True)
            router_logits = out.router_logits
            lb = load_balance_loss(router_logits, a.experts, 2)
        logits = out.logits
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
        )
        zl = z_loss(router_logits)
        loss = ce + a.aux_coef * lb + a.z_coef * zl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        if dsv3:
            dsv3_update_bias(model, taps, a.experts, a.bias_gamma)
        cev = float(ce.detach())
        ema = cev if ema is None else 0.95 * ema + 0.05 * cev
        if step % a.log_every == 0 or step == a.steps - 1:
            el = time.time() - t0
            rec = {"step": step, "lr": round(lr_at(step, a), 6), "ce": round(float(ce), 4),
                   "ce_ema": round(ema, 4), "lb": round(float(lb), 4), "z": round(float(zl), 3),
                   "gnorm": round(float(gn), 3), "elapsed_s": round(el, 1)}
            if step % a.eval_every == 0 or step == a.steps - 1:
                rec["eval_ce_16w"] = round(eval_loss(model, evals, 256, 16), 4)
                if dsv3:
                    tap.take()
                    rec["bias"] = [[round(v, 4) for v in g.e_score_correction_bias.tolist()] for g in tap.gates]
            log.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
        if time.time() - t0 > a.max_minutes * 60:
            print(f"stopping early: wall-time guard {a.max_minutes} min at step {step}", file=sys.stderr)
            break
    wall = time.time() - t0
    return model, nparams, log, wall, step + 1, ema


@torch.no_grad()
def expert_usage(model_dir: str, ids: np.ndarray, seq_len: int = 256) -> dict:
    """Share of top-k selections per expert per layer (each token contributes top_k picks),
    windows of seq_len as in the perplexity rule (last partial window dropped)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    cfg = model.config
    dsv3 = cfg.model_type == "deepseek_v3"
    E = cfg.n_routed_experts if dsv3 else cfg.num_experts
    k = cfg.num_experts_per_tok
    tap = RouterTap(model) if dsv3 else None
    layers = len(tap.gates) if dsv3 else cfg.num_hidden_layers  # MoE layers only
    n = len(ids) // seq_len
    x = torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len))
    counts = torch.zeros(layers, E, dtype=torch.float64)
    soft = torch.zeros(layers, E, dtype=torch.float64)
    for i in range(0, n, 8):
        if dsv3:
            model(input_ids=x[i : i + 8])
            for l, (rl, sel) in enumerate(tap.take()):
                p = torch.sigmoid(rl.float())
                p = p / p.sum(-1, keepdim=True)  # soft frequency of the normalised sigmoid scores
                counts[l] += torch.bincount(sel.reshape(-1), minlength=E).double()
                soft[l] += p.double().sum(0)
            continue
        out = model(input_ids=x[i : i + 8], output_router_logits=True)
        for l, rl in enumerate(out.router_logits):
            p = torch.softmax(rl.float(), -1)
            sel = torch.topk(p, k, -1).indices
            counts[l] += torch.bincount(sel.reshape(-1), minlength=E).double()
            soft[l] += p.double().sum(0)
    tokens = n * seq_len
    return {
        "tokens": tokens,
        "seq_len": seq_len,
        "top_k_share": [[round(v, 4) for v in (c / (tokens * k)).tolist()] for c in counts],
        "soft_frequency": [[round(v, 4) for v in (s / tokens).tolist()] for s in soft],
    }


@torch.no_grad()
def drop_one_ppl(model_dir: str, ids: np.ndarray, seq_len: int = 128, max_tokens: int = 4096) -> dict:
    """Perplexity (moe eval's rule, first max_tokens tokens, windows of seq_len) with one expert of one
    layer removed: its router logit is set to -inf before softmax/top-k, so tokens re-route to the
    others (as pruning that expert and slicing its router row would)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    cfg = model.config
    n = min(len(ids), max_tokens) // seq_len
    x = torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len))

    def ppl() -> float:
        tot = 0.0
        for i in range(0, n, 8):
            xb = x[i : i + 8]
            lg = model(input_ids=xb).logits[:, :-1].double()
            tot += float((torch.logsumexp(lg, -1) - lg.gather(-1, xb[:, 1:, None])[..., 0]).sum())
        return math.exp(tot / (n * (seq_len - 1)))

    base = ppl()
    table = []
    if cfg.model_type == "deepseek_v3":
        # selection bias -inf for expert e: never selected (its group is scored by its other experts)
        for layer in model.model.layers:
            if not hasattr(layer.mlp, "gate"):
                continue
            bias = layer.mlp.gate.e_score_correction_bias
            row = []
            for e in range(cfg.n_routed_experts):
                keep = float(bias[e])
                bias[e] = float("-inf")
                row.append(round(ppl(), 3))
                bias[e] = keep
            table.append(row)
        return {"seq_len": seq_len, "max_tokens": max_tokens, "base_ppl": round(base, 3), "drop_one_ppl": table}
    for l, layer in enumerate(model.model.layers):
        router = layer.mlp.gate
        row = []
        orig = router.forward
        for e in range(cfg.num_experts):
            # the router's own forward (transformers' Qwen3MoeTopKRouter) with logit e set to -inf
            def fwd(hidden_states, e=e, orig=orig):
                hs = hidden_states.reshape(-1, router.hidden_dim)
                logits = torch.nn.functional.linear(hs, router.weight)
                logits[:, e] = float("-inf")
                probs = torch.softmax(logits, dtype=torch.float, dim=-1)
                top_v, top_i = torch.topk(probs, router.top_k, dim=-1)
                if router.norm_topk_prob:
                    top_v = top_v / top_v.sum(dim=-1, keepdim=True)
                return logits, top_v.to(logits.dtype), top_i

            router.forward = fwd
            row.append(round(ppl(), 3))
            router.forward = orig
        table.append(row)
    return {"seq_len": seq_len, "max_tokens": max_tokens, "base_ppl": round(base, 3), "drop_one_ppl": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCH_DEFAULTS), default="qwen3_moe")
    ap.add_argument("--out", help="default: fixtures/tiny-moe (qwen3_moe), fixtures/tiny-dsv3 (deepseek_v3)")
    ap.add_argument("--text", help="folder with calib.txt and eval.txt; default: fixtures/text, fixtures/sotu")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--layers", type=int, help="default 3 (deepseek_v3: 1 dense + 2 MoE)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, help="default 16 (qwen3_moe), 8 (deepseek_v3)")
    ap.add_argument("--steps", type=int, help="default 600 (qwen3_moe), 140 (deepseek_v3)")
    ap.add_argument("--warmup", type=int, help="default 50 (qwen3_moe), 15 (deepseek_v3)")
    ap.add_argument("--lr", type=float, help="default 1e-3 (qwen3_moe), 1.5e-3 (deepseek_v3)")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--z-coef", type=float, default=0.001)
    ap.add_argument("--bias-gamma", type=float, default=1e-3, help="deepseek_v3: bias update speed")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, help="default 2 (qwen3_moe), 1 (deepseek_v3)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--max-minutes", type=float, help="wall-time guard, stops training early; default 30, 45 (dsv3)")
    ap.add_argument("--tokenizer-only", action="store_true")
    ap.add_argument("--usage-only", action="store_true")
    a = ap.parse_args()
    for key, value in ARCH_DEFAULTS[a.arch].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    global TEXT
    TEXT = a.text
    torch.set_num_threads(a.threads)

    if a.usage_only:
        ev = encode_file(a.out, "eval.txt")
        print(json.dumps({"usage": expert_usage(a.out, ev), "drop_one": drop_one_ppl(a.out, ev)}, indent=1))
        return

    tmp = a.out + ".tmp-train"
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer(tmp, a.vocab_size)
    tok_info = check_tokenizer(tmp)
    if a.tokenizer_only:
        os.makedirs(a.out, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tmp, f), os.path.join(a.out, f))
        shutil.rmtree(tmp)
        return

    calib = encode_file(tmp, "calib.txt")
    evals = encode_file(tmp, "eval.txt")
    model, nparams, log, wall, steps_done, ema = train(a, calib, evals)

    final_eval = eval_loss(model, evals, 256, 10 ** 9)
    model.config.output_router_logits = False
    model = model.to(torch.bfloat16)
    if a.arch == "deepseek_v3":
        # e_score_correction_bias stays float32, as in deepseek-ai/DeepSeek-V3 (transformers loads it
        # as float32: _keep_in_fp32_modules_strict); a bf16 bias would move near-tie selections
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                g = layer.mlp.gate
                g.e_score_correction_bias = g.e_score_correction_bias.float()
    model.save_pretrained(tmp, safe_serialization=True)
    # keep the generation config minimal and explicit
    model.generation_config.eos_token_id = 0
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = None
    model.generation_config.save_pretrained(tmp)

    # replace the destination's model files (keep README.md / reference-ppl.json written by hand/ref_ppl.py)
    os.makedirs(a.out, exist_ok=True)
    for f in os.listdir(tmp):
        shutil.copy(os.path.join(tmp, f), os.path.join(a.out, f))
    shutil.rmtree(tmp)

    usage = expert_usage(a.out, evals)
    summary = {
        "params": nparams,
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "text", "tokenizer_only", "usage_only")},
        "steps_done": steps_done,
        "tokens_seen": steps_done * a.batch * a.seq_len,
        "wall_s": round(wall, 1),
        "final_train_ce": log[-1]["ce"],
        "final_train_ce_ema": round(ema, 4),
        "final_eval_ce_fp32_seq256": round(final_eval, 4),
        "final_eval_ppl_fp32_seq256": round(math.exp(final_eval), 3),
        "tokens": tok_info,
        "log": log,
        "expert_usage_eval": usage,
        "torch": torch.__version__,
    }
    import transformers

    summary["transformers"] = transformers.__version__
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
