"""Decoding speed: ours vs transformers' ``generate`` on the same weights, interleaved.

  python bench/generate.py                         # GPT-2 shape: 4 layers, width 256, vocab 5000, B=8, P=32, N=64
  python bench/generate.py --family llama          # a Llama shape (GQA 4:1, SwiGLU, RoPE), same sizes
  python bench/generate.py --family smollm2        # the real SmolLM2-135M-Instruct (asset), chat prompts
  python bench/generate.py --scaling               # time per new token at N = 64, 128, 256, 512
  python bench/generate.py --family smollm2 --early-exit   # EOS at ~N/4: stopping vs running to N
  python bench/generate.py --dtype bfloat16 --batch 32 ... # on a GPU: tokens/s and the HBM roofline fraction

Each repeat times ours and theirs back to back; the speedup reported is the median of the
per-pair ratios (with their range), since this kind of machine drifts by tens of percent.
Sampling at temperature 1, top-k 0, top-p 1, always ``N`` new tokens unless ``--early-exit``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpkd_jax import models, sampling
from dpkd_jax.models import gpt2, llama

PEAK_HBM = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s (SXM)
QUESTIONS = ["What is the capital of France? Answer in one sentence.", "Name three primary colors.",
             "What is 12 plus 30?", "Give one word that rhymes with cat.", "Which planet is closest to the sun?",
             "Say hello in Spanish.", "What color is the sky on a clear day?", "How many legs does a spider have?"]


def build(args):
    """(model, prompt ids [B, P], prompt mask, eos id)."""
    rng = np.random.default_rng(0)
    if args.family == "smollm2":
        from dpkd_jax import assets
        path = assets.fetch("smollm2-135m-instruct")
        model = models.from_pretrained(path, dtype=jnp.dtype(args.dtype))
        tok = models.load_tokenizer(path)
        rows = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
                for i in range(args.batch)]
        P = max(map(len, rows))
        ids = np.full((args.batch, P), tok.pad_token_id)
        mask = np.zeros((args.batch, P), np.int64)
        for i, r in enumerate(rows):
            ids[i, P - len(r):], mask[i, P - len(r):] = r, 1
        return model, ids, mask, tok.eos_token_id
    kw = dict(vocab_size=args.vocab, d_model=args.width, n_layers=args.layers, n_heads=args.heads,
              param_dtype=args.dtype, compute_dtype=args.dtype, scan_layers=not args.unroll)
    if args.family == "llama":
        cfg = llama.tiny_config(n_kv_heads=max(1, args.heads // 4), d_ff=int(8 * args.width / 3) // 64 * 64, **kw)
    else:
        cfg = gpt2.tiny_config(d_ff=4 * args.width, max_positions=2048, **kw)
    model = models.CausalLM(cfg, rngs=nnx.Rngs(0))
    ids = rng.integers(0, args.vocab, (args.batch, args.prompt))
    return model, ids, np.ones_like(ids), -1


def time_ours(model, ids, mask, n, seed, eos):
    t = time.perf_counter()
    toks, m = models.generate(model, ids, mask,
                              sampling.Sampling(max_new_tokens=n, eos_token_id=eos, pad_token_id=0),
                              rng=jax.random.PRNGKey(seed))
    toks.block_until_ready()
    return time.perf_counter() - t, int(np.asarray(m).sum(1).max())


def torch_runner(model, ids, mask, args, dev):
    import torch
    from transformers import AutoModelForCausalLM
    tmp = tempfile.mkdtemp()
    models.save_pretrained(model, tmp)
    torch_dev = "cuda" if dev.platform == "gpu" and torch.cuda.is_available() else "cpu"
    ref = AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, args.dtype)).to(torch_dev).eval()
    tids, tmask = torch.tensor(ids, device=torch_dev), torch.tensor(mask, device=torch_dev)

    def run(n, eos):
        t = time.perf_counter()
        with torch.no_grad():
            ref.generate(tids, attention_mask=tmask, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=n,
                         min_new_tokens=n if eos < 0 else 0, eos_token_id=eos if eos >= 0 else None, pad_token_id=0)
        if torch_dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t
    return run


def compare(args, model, ids, mask, eos, run_torch, n):
    ours_t, torch_t, ratios = [], [], []
    time_ours(model, ids, mask, n, 0, eos)
    if run_torch:
        run_torch(n, eos)
    for r in range(args.repeats):
        o, _ = time_ours(model, ids, mask, n, r + 1, eos)
        ours_t.append(o)
        if run_torch:
            torch_t.append(run_torch(n, eos))
            ratios.append(torch_t[-1] / o)
    out = {"ours_tokens_per_s": args.batch * n / statistics.median(ours_t)}
    if ratios:
        out.update(torch_tokens_per_s=args.batch * n / statistics.median(torch_t),
                   speedup_median=statistics.median(ratios), speedup_range=[min(ratios), max(ratios)])
    return out, statistics.median(ours_t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="gpt2", choices=("gpt2", "llama", "smollm2"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--unroll", action="store_true", help="unrolled layers instead of lax.scan")
    ap.add_argument("--scaling", action="store_true", help="time per new token at N = 64, 128, 256, 512")
    ap.add_argument("--early-exit", action="store_true", help="real EOS (smollm2): N = 4x the longest answer")
    args = ap.parse_args()
    dev = jax.devices()[0]
    out = {"device": dev.device_kind, "platform": dev.platform, "args": vars(args)}
    model, ids, mask, eos = build(args)
    run_torch = None if args.no_torch else torch_runner(model, ids, mask, args, dev)

    if args.early_exit:
        if eos < 0:
            raise SystemExit("--early-exit needs a real model with an EOS: --family smollm2")
        _, longest = time_ours(model, ids, mask, 256, 0, eos)
        n = 4 * longest
        stop, t_stop = compare(args, model, ids, mask, eos, run_torch, n)
        full, t_full = compare(args, model, ids, mask, -1, None, n)
        out["early_exit"] = {"longest_answer": longest, "max_new_tokens": n, "seconds_with_eos": t_stop,
                             "seconds_to_max": t_full, "gain": t_full / t_stop, "vs_transformers_with_eos": stop}
    else:
        res, t_med = compare(args, model, ids, mask, -1, run_torch, args.new)  # always N tokens, as HF below
        out.update(res)
        cfg = model.config  # roofline: each decode step reads all weights and the KV cache filled so far
        wbytes = sum(v.size * v.dtype.itemsize for v in models.split(model)[1].values())
        kv = (2 * cfg.n_layers * args.batch * (ids.shape[1] + args.new / 2) * cfg.kv_heads * cfg.head_size
              * jnp.dtype(args.dtype).itemsize)
        out["achieved_bytes_per_s"] = float((wbytes + kv) / (t_med / args.new))
        for k, v in PEAK_HBM.items():
            if k in dev.device_kind:
                out["hbm_fraction"] = out["achieved_bytes_per_s"] / v
    if args.scaling:  # round robin over N, so the machine's drift hits every N alike
        ns = (64, 128, 256, 512)
        times = {n: [] for n in ns}
        for n in ns:
            time_ours(model, ids, mask, n, 0, -1)  # compile
        for r in range(args.repeats):
            for n in ns:
                times[n].append(time_ours(model, ids, mask, n, r + 1, -1)[0])
        per_tok = {n: statistics.median(t) / n for n, t in times.items()}
        ns = sorted(per_tok)
        out["seconds_per_new_token"] = per_tok
        out["growth_per_doubling"] = [per_tok[b] / per_tok[a] for a, b in zip(ns, ns[1:])]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
