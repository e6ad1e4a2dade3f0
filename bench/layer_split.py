"""The demo's train steps with unrolled layers taking their weights from the stacked arrays by one
``jnp.split`` (the model's way: its gradient is one concatenate) against one ``a[i]`` slice per
layer (the gradient of each slice is a zero-padded ``[L, ...]`` copy, L of them summed). Interleaved in
one process, medians, with each step's compile. Both give the same numbers (adding exact zeros).

    python bench/layer_split.py --out bench/results/layer_split_cpu.json
"""

import argparse
import json
import statistics
from unittest import mock

import jax
import jax.numpy as jnp

from demo_speed import Case
from dpkd_jax import train
from dpkd_jax.models import transformer
from report import report


def sliced_unrolled(self, block, x, kv, xs, collect):
    """The previous ``_unrolled``: one ``a[i]`` per layer."""
    outs, new = [], []
    for i in range(self.config.n_layers):
        state, window, _ = jax.tree.map(lambda a: a[i], xs)
        x, kv_i = block(x, None if kv is None else (kv[0][i], kv[1][i]), (state, window, None))
        outs.append(x)
        new.append(kv_i)
    per_layer = jnp.stack(outs) if collect else None
    return x, None if kv is None else tuple(tuple(n[j] for n in new) for j in range(2)), per_layer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = {}
    for method, layers in (("sft", 4), ("kd", 2), ("dpkd", 2)):
        with mock.patch.object(transformer.CausalLM, "_unrolled", sliced_unrolled):
            sliced = Case(method, False, layers, gold_length=101)   # traced and compiled here
        train._compiled.cache_clear()   # the same spec and models: compile the split layout afresh
        jax.clear_caches()
        cases = {"sliced": sliced, "split": Case(method, False, layers, gold_length=101)}
        times = {k: [] for k in cases}
        for i in range(args.repeats):  # interleaved: both see the same box
            for k, case in cases.items():
                times[k].append(case(i + 1))
        r = {k: {"step_s": statistics.median(times[k]), "compile_and_first_s": cases[k].compile_s} for k in cases}
        r["split_speedup"] = r["sliced"]["step_s"] / r["split"]["step_s"]
        rows[f"{method} ({layers} layers)"] = r
        print(method, layers, json.dumps(r), flush=True)
    report({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "repeats": args.repeats,
            "steps": rows}, args.out)


if __name__ == "__main__":
    main()
