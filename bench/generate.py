"""Decoding speed: our `generate` vs transformers (PyTorch) `generate` on the same random GPT-2.

    python bench/generate.py                      # CPU defaults (4 layers, width 256, vocab 5000)
    python bench/generate.py --layers 48 --width 1600 --heads 25 --vocab 50257 --dtype bfloat16 --batch 32

Reports medians over interleaved runs, the time per new token as N doubles,
compile time at 12 vs 48 layers (scan keeps it flat), and on a GPU the
achieved fraction of HBM bandwidth (bytes of weights + KV cache read per step).
"""

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import models, sampling
from dpkd_jax.models import gpt2

PEAK_HBM = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s (SXM)


def build(args, layers=None):
    cfg = gpt2.tiny_config(vocab_size=args.vocab, d_model=args.width, n_layers=layers or args.layers,
                           n_heads=args.heads, d_ff=4 * args.width, max_positions=1024,
                           param_dtype=args.dtype, compute_dtype=args.dtype, scan_layers=not args.unroll)
    return models.CausalLM(cfg, models.init_params(cfg, jax.random.PRNGKey(0)))


def time_ours(model, ids, mask, n, seed):
    t = time.perf_counter()
    toks, _ = sampling.generate(model, ids, mask, max_new_tokens=n, rng=jax.random.PRNGKey(seed), eos_token_id=-1,
                                pad_token_id=0)
    toks.block_until_ready()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--unroll", action="store_true", help="unrolled layers instead of lax.scan")
    ap.add_argument("--scaling", action="store_true", help="time per token at 64..512 and compile 12 vs 48 layers")
    args = ap.parse_args()
    dev = jax.devices()[0]
    out = {"device": dev.device_kind, "platform": dev.platform, "args": vars(args)}
    model = build(args)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, (args.batch, args.prompt))
    mask = np.ones_like(ids)
    time_ours(model, ids, mask, args.new, 0)  # compile

    ref = None
    if not args.no_torch:
        import torch
        from transformers import AutoModelForCausalLM
        tmp = tempfile.mkdtemp()
        models.save_pretrained(model, tmp)
        torch_dev = "cuda" if dev.platform == "gpu" and torch.cuda.is_available() else "cpu"
        tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        ref = AutoModelForCausalLM.from_pretrained(tmp, dtype=tdtype).to(torch_dev).eval()
        tids = torch.tensor(ids, device=torch_dev)

        def time_torch():
            t = time.perf_counter()
            with torch.no_grad():
                ref.generate(tids, attention_mask=torch.ones_like(tids), do_sample=True, top_k=0, top_p=1.0,
                             max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)
            if torch_dev == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t
        time_torch()

    ours_t, torch_t = [], []
    for r in range(args.repeats):  # interleaved
        ours_t.append(time_ours(model, ids, mask, args.new, r + 1))
        if ref is not None:
            torch_t.append(time_torch())
    toks = args.batch * args.new
    out["ours_tokens_per_s"] = toks / statistics.median(ours_t)
    if torch_t:
        out["torch_tokens_per_s"] = toks / statistics.median(torch_t)
        out["speedup"] = out["ours_tokens_per_s"] / out["torch_tokens_per_s"]

    # HBM roofline: each decode step reads all weights and the KV cache written so far.
    cfg = model.config
    wbytes = sum(v.size * v.dtype.itemsize for v in model.arrays().values())
    kv_avg = 2 * cfg.n_layers * args.batch * (args.prompt + args.new / 2) * cfg.d_model * jnp.dtype(args.dtype).itemsize
    step_s = statistics.median(ours_t) / args.new
    out["bytes_per_step"] = float(wbytes + kv_avg)
    out["achieved_bytes_per_s"] = float((wbytes + kv_avg) / step_s)
    for k, v in PEAK_HBM.items():
        if k in dev.device_kind:
            out["hbm_fraction"] = out["achieved_bytes_per_s"] / v

    if args.scaling:
        per_tok = {}
        for n in (64, 128, 256, 512):
            time_ours(model, ids, mask, n, 0)
            per_tok[n] = statistics.median(time_ours(model, ids, mask, n, s) for s in range(3)) / n
        out["seconds_per_new_token"] = per_tok
        compile_s = {}
        for layers in (12, 48):
            m = build(args, layers)
            t = time.perf_counter()
            sampling._generate_jit.lower(m.config, m.arrays(), jnp.asarray(ids), jnp.asarray(mask),
                                         jax.random.PRNGKey(0), jnp.float32(1.0), max_new_tokens=args.new,
                                         top_k=0, top_p=1.0, greedy=False, eos_token_id=-1,
                                         pad_token_id=0).compile()
            compile_s[layers] = time.perf_counter() - t
        out["compile_seconds_by_layers"] = compile_s
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
