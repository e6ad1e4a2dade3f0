"""Scoring y_t and y_s with the prompt run once (``sampling.shared_prompt_hidden``: one prompt
forward, its KV cache read by both responses) against one teacher-forced row per response
(``sampling.response_hidden`` on the prompt tiled twice), at the demo's shapes (batch 16, prompt 96,
40 new tokens): the student's forward and backward (2 layers) and the teacher's forward
(4 layers), interleaved in one process, medians.

    python bench/shared_prompt.py --out bench/results/shared_prompt_cpu.json
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import models, sampling
from dpkd_jax.models import gpt2
from demo_speed import demo_config
from report import report


def inputs(c, rng):
    """The demo's prompts (64 of 96 slots real) and two responses per prompt of ragged lengths."""
    B, P, N = c.train.batch_size, c.data.max_prompt_length, c.gen.max_new_tokens
    pmask = np.ones((B, P), np.int32)
    pmask[:, :32] = 0
    rmask = (np.arange(N)[None] < rng.integers(1, N + 1, (2 * B, 1))).astype(np.int32)
    ids = lambda shape: jnp.asarray(rng.integers(1, c.demo.vocab_size, shape), jnp.int32)
    return ids((B, P)), jnp.asarray(pmask), ids((2 * B, N)), jnp.asarray(rmask)


def timed(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    c = demo_config("dpkd")
    pids, pmask, rids, rmask = inputs(c, np.random.default_rng(0))
    twice = lambda a: jnp.concatenate([a, a], 0)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(*rids.shape, c.demo.teacher.d_model)), jnp.float32)
    rows = {}
    for name, layers, grad in (("student forward+backward", 2, True), ("teacher forward", 4, False)):
        arch = gpt2.tiny_config(vocab_size=c.demo.vocab_size, max_positions=c.data.max_length, scan_layers=False,
                                **dict(c.demo.teacher, n_layers=layers))
        decode, params = models.init(arch, 0)
        shared = lambda p: jnp.sum(sampling.shared_prompt_hidden(decode, p, pids, pmask, rids, rmask) * w)
        own = lambda p: jnp.sum(sampling.response_hidden(decode, p, twice(pids), twice(pmask), rids, rmask) * w)
        fns = {k: jax.jit(jax.grad(f) if grad else f) for k, f in (("own_rows", own), ("shared_prompt", shared))}
        times = {k: [] for k in fns}
        for _ in range(args.repeats):  # interleaved: both see the same box
            for k, f in fns.items():
                times[k] += timed(f, (params,), 1)
        r = {f"{k}_s": statistics.median(v) for k, v in times.items()}
        r["speedup"] = r["own_rows_s"] / r["shared_prompt_s"]
        rows[f"{name} ({layers} layers)"] = r
        print(name, json.dumps(r), flush=True)
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "repeats": args.repeats, "rows": rows}
    report(out, args.out)


if __name__ == "__main__":
    main()
