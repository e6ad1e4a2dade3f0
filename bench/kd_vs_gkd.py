"""The one part of the step where ``kd`` and ``gkd`` differ, timed alone in one process: the chunked head and the
per-token divergence, forward and backward, at bench/peer_step.py's shapes (4 rows x 192 response tokens, student
width 256, teacher width 512, vocabulary 8192): forward KL (kd, temperature 1) against the generalized JSD
(gkd, beta 0.5), alternated, medians. Whole runs are too noisy to order two steps that differ by this much.

    python bench/kd_vs_gkd.py --out bench/results/kd_vs_gkd_cpu.json
"""

import argparse
import platform
import statistics

import jax
import jax.numpy as jnp

from dpkd_jax import losses
from dpkd_jax.losses import tokenwise as tw
from report import alternated, ratio, report


def loss_and_grad(per_token, hidden_t, w_t, ids, **kw):
    """d/d(student hidden, head) of the token mean of ``per_token`` over the chunked heads, as ``Context.divergence``
    computes it (the student's token log-probs from the same pass)."""
    def loss(h_s, w_s):
        fn = lambda lg, y: (per_token(lg[0], jax.lax.stop_gradient(lg[1]), **kw), tw.logprob(lg[0], y))
        values, _ = losses.token_map(fn, (h_s, hidden_t), (lambda h: h @ w_s, lambda h: h @ w_t), ids)
        return jnp.mean(values)
    return jax.jit(jax.value_and_grad(loss, (0, 1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    B, N, Ds, Dt, V = 4, 192, 256, 512, 8192
    k = jax.random.split(jax.random.key(0), 5)
    h_s, h_t = jax.random.normal(k[0], (B, N, Ds)), jax.random.normal(k[1], (B, N, Dt))
    w_s, w_t = jax.random.normal(k[2], (Ds, V)) * 0.05, jax.random.normal(k[3], (Dt, V)) * 0.05
    ids = jax.random.randint(k[4], (B, N), 0, V)
    fns = {"kd": loss_and_grad(tw.forward_kl, h_t, w_t, ids, temperature=1.0),
           "gkd": loss_and_grad(tw.generalized_jsd, h_t, w_t, ids, beta=0.5)}
    times = alternated(fns, (h_s, w_s), a.rounds, a.calls)
    report({"machine": f"{platform.node()} {jax.devices()[0].device_kind}", "jax": jax.__version__, "args": vars(a),
            "s_per_call": times, "median_s": {n: statistics.median(v) for n, v in times.items()},
            "gkd_over_kd": ratio(times, "gkd", "kd")}, a.out)


if __name__ == "__main__":
    main()
