"""What grading the student's samples costs: ``opd`` (the teacher's log-prob of each sampled
token) against ``gkd`` with λ = 1, β = 1 (the full-vocabulary reverse KL per position), both
chunked from hidden states, at Qwen2.5's vocabulary. Times the loss + gradient w.r.t. the
student's hidden states and head, side by side in one process (interleaved, medians), and
reports each one's compiled temporaries (``memory_analysis()``) and teacher-head matmuls.

  python bench/opd_scoring.py --out bench/results/opd_scoring_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dpkd_jax import losses as L  # noqa: E402
from report import report


def setup(b, n, d, v, seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    f = lambda key, *s: jax.random.normal(key, s, jnp.float32) * 0.05
    return dict(hs=f(k[0], b, n, d), ht=f(k[1], b, n, d), ws=f(k[2], d, v), wt=f(k[3], d, v),
                ys=jax.random.randint(k[4], (b, n), 0, v), mask=jnp.ones((b, n), jnp.float32))


def opd_loss(hs, ws, a, chunk):
    teacher = L.chunked_token_logprobs(a["ht"], L.linear_head(a["wt"]), a["ys"], chunk_size=chunk)  # no gradient
    logps = L.chunked_token_logprobs(hs, L.linear_head(ws), a["ys"], chunk_size=chunk)
    old = jax.lax.stop_gradient(logps)
    adv = L.opd_advantages(teacher, old, a["mask"])
    return L.ppo_clip_loss(logps, old, adv, a["mask"], clip_range=None).mean()


def gkd_loss(hs, ws, a, chunk):
    return L.chunked_reverse_kl(hs, L.linear_head(ws), a["ht"], L.linear_head(a["wt"]), a["mask"],
                                chunk_size=chunk).mean()


def compiled(fn, a, chunk):
    g = jax.jit(jax.value_and_grad(lambda hs, ws: fn(hs, ws, a, chunk), argnums=(0, 1)))
    c = g.lower(a["hs"], a["ws"]).compile()
    return c, c.memory_analysis().temp_size_in_bytes / 2**30


def dots_with(c, v):
    """Matmuls in the compiled HLO with an output dimension of the vocabulary (head matmuls)."""
    txt = c.as_text()
    return sum(1 for line in txt.splitlines() if " dot(" in line and f",{v}]" in line.split("=")[1].split(" dot(")[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--width", type=int, default=896)     # Qwen2.5-0.5B's hidden size
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    a = setup(args.batch, args.tokens, args.width, args.vocab)
    rows = {}
    fns = {}
    for name, fn in (("opd", opd_loss), ("gkd_rkl", gkd_loss)):
        c, temp = compiled(fn, a, args.chunk)
        fns[name] = c
        rows[name] = {"temp_gib": round(temp, 3), "vocab_matmuls_in_hlo": dots_with(c, args.vocab)}
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, c in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(c(a["hs"], a["ws"]))
            times[k].append(time.perf_counter() - t)
    for k in fns:
        rows[k]["median_s"] = round(statistics.median(times[k]), 3)
    out = {"machine": "CPU box, 2 cores, XLA:CPU", "jax": jax.__version__, "args": vars(args), "rows": rows,
           "time_ratio_opd_over_gkd": round(rows["opd"]["median_s"] / rows["gkd_rkl"]["median_s"], 3)}
    report(out, args.out)


if __name__ == "__main__":
    main()
