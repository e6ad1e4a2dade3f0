"""A gated MLP's forward and backward (scanned, or with --unroll unrolled), with its matmuls as written
(``tensordot`` over ``[B, T, D]``) against the same matmuls on merged leading axes (``[B*T, D]``,
``models.components.contract``'s XLA:CPU path), at bench/peer_step.py's student shapes (4 layers, D 256, F 1024,
batch 4 x 256 tokens), alternated, medians. ``--tied_head=V`` times a tied head over chunks of tokens instead.

    python bench/flat_matmul.py --out bench/results/flat_matmul_cpu.json
    python bench/flat_matmul.py --unroll --out bench/results/flat_matmul_unrolled_cpu.json
    python bench/flat_matmul.py --tied_head=8192 --tokens=192 --out bench/results/flat_matmul_tied_head_cpu.json

Also counts, in each compiled program, the transposed copies (``copy_bitcast_fusion``) that XLA:CPU's layout
assignment adds for weight gradients that contract two token axes.
"""

import argparse
import platform
import statistics

import jax
import jax.numpy as jnp

from dpkd_jax.models.components import contract
from report import alternated, ratio, report


def step(flat, unroll):
    def mlp(h, w):
        g, u = contract(h, w["g"], 1, flat), contract(h, w["u"], 1, flat)
        return h + contract(jax.nn.silu(g) * u, w["d"], 1, flat), None

    def loss(w, x):
        if unroll:  # each layer its own ops (model.scan_layers=False)
            for i in range(w["g"].shape[0]):
                x = mlp(x, jax.tree.map(lambda a: a[i], w))[0]
            return jnp.mean(x ** 2)
        return jnp.mean(jax.lax.scan(mlp, x, w)[0] ** 2)
    return jax.jit(jax.value_and_grad(loss))


def head_step(flat, vocab, chunk):
    """A tied head over chunks of tokens as the chunked losses run it (``[B, C, D] @ E[:V].T`` in a checkpointed scan;
    the weight gradient contracts the chunk's two token axes)."""
    def loss(e, x):
        B, T, D = x.shape
        chunks = jnp.moveaxis(x.reshape(B, T // chunk, chunk, D), 1, 0)
        body = jax.checkpoint(lambda c, h: (c, jax.nn.logsumexp(contract(h, e[:vocab].T, 1, flat), -1).sum()))
        return jax.lax.scan(body, 0.0, chunks)[1].sum()
    return jax.jit(jax.value_and_grad(loss))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--f", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--unroll", action="store_true", help="layers unrolled instead of scanned")
    ap.add_argument("--tied_head", type=int, default=0, help="V > 0: a tied head of V rows over chunks of 32 tokens "
                    "per row, in place of the MLP")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    k = jax.random.split(jax.random.key(0), 4)
    L, D, F = a.layers, a.d, a.f
    w = {"g": jax.random.normal(k[0], (L, D, F)) * 0.02, "u": jax.random.normal(k[1], (L, D, F)) * 0.02,
         "d": jax.random.normal(k[2], (L, F, D)) * 0.02}
    x = jax.random.normal(k[3], (a.batch, a.tokens, D))
    steps = {"tensordot": step(False, a.unroll), "flat": step(True, a.unroll)}
    if a.tied_head:
        w = jax.random.normal(k[0], (a.tied_head, D)) * 0.02
        steps = {"tensordot": head_step(False, a.tied_head, 32), "flat": head_step(True, a.tied_head, 32)}
    copies = {n: sum("copy_bitcast_fusion" in ln and "fusion(" in ln for ln in
                     f.lower(w, x).compile().as_text().splitlines()) for n, f in steps.items()}
    times = alternated(steps, (w, x), a.rounds, a.calls)
    report({"machine": f"{platform.node()} {jax.devices()[0].device_kind}", "jax": jax.__version__, "args": vars(a),
            "transposed_copies": copies, "s_per_call": times, "median_s": {n: statistics.median(v) for n, v in times.items()},
            "tensordot_over_flat": ratio(times, "tensordot", "flat")},
           a.out)


if __name__ == "__main__":
    main()
