"""Decoding at the demo's shapes with the two KV-cache layouts: a scanned model's stacked cache
``[L, B, G, S, K]`` (each layer's step reads its slots out of it: a copy of that layer's cache per
token) against an unrolled model's one array per layer (attention reads the layer's own buffer).
``sampling.sample`` of 40 new tokens inside one jit: the teacher sampling in a train step (4 layers,
batch 16, prompt 96) and the student answering in evaluation (2 layers, batch 50); interleaved in
one process, medians.

    python bench/decode_cache.py --out bench/results/decode_cache_cpu.json

Run it with ``PYTHONPATH`` at an older checkout to time that commit's code with the same script.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import models, sampling
from dpkd_jax.models import gpt2
from report import report


def sampler(layers, scan, B, P, N, rng):
    """A jitted ``sample`` of N new tokens for B prompts (64 of P slots real, as the demo's)."""
    arch = gpt2.tiny_config(vocab_size=384, max_positions=P + N, scan_layers=scan, d_model=128, n_layers=layers,
                            n_heads=4, d_ff=512)
    dec, params = models.init(arch, 0)
    ids = jnp.asarray(rng.integers(1, 384, (B, P)), jnp.int32)
    mask = np.ones((B, P), np.int32)
    mask[:, :P - 64] = 0
    mask = jnp.asarray(mask)
    f = jax.jit(lambda p, r: sampling.sample(dec, p, ids, mask, r,
                                             sampling.Sampling(max_new_tokens=N, eos_token_id=-1, pad_token_id=0)))
    return lambda i: jax.block_until_ready(f(params, jax.random.PRNGKey(i)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = {}
    for name, layers, B in (("teacher sampling in a train step (4 layers, batch 16)", 4, 16),
                            ("student answers in evaluation (2 layers, batch 50)", 2, 50)):
        runs = {scan: sampler(layers, scan, B, 96, 40, rng) for scan in (True, False)}
        for run in runs.values():
            run(0)  # compile
        times = {scan: [] for scan in runs}
        for i in range(args.repeats):
            for scan, run in runs.items():
                t = time.perf_counter()
                run(i + 1)
                times[scan].append(time.perf_counter() - t)
        med = {scan: statistics.median(t) for scan, t in times.items()}
        rows[name] = {"stacked_cache_scanned_s": med[True], "per_layer_cache_unrolled_s": med[False],
                      "ratio": med[True] / med[False]}
        print(name, rows[name], flush=True)
    report({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "new_tokens": 40, "prompt": 96,
            "repeats": args.repeats, "sample": rows}, args.out)


if __name__ == "__main__":
    main()
