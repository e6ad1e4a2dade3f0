"""Attention kernels' speed on this CPU, side by side in one process (interleaved, medians):

1. ``crossover``: attention alone, forward and backward, dense against blockwise, at T = S from 256
   to 4096 (batch 1, 4 heads over 2 KV heads, head 32): where blockwise starts to win sets
   ``models.attention.CROSSOVER``;
2. ``paper``: the demo's sft, kd and dpkd steps (N <= 512) with ``auto`` against ``dense``;
3. ``long``: the demo teacher's sft step at 4096 response tokens, batch 1, blockwise against dense.

    python bench/attention_speed.py --out bench/results/attention_speed_cpu.json
"""

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from demo_speed import Case
from dpkd_jax.models import attention as A
from report import report
from shared_prompt import timed


def crossover(lengths, repeats):
    rows = []
    rng = np.random.default_rng(0)
    for T in lengths:
        q = jnp.asarray(rng.normal(size=(1, T, 4, 32)), jnp.float32)
        k, v = (jnp.asarray(rng.normal(size=(1, 2, T, 32)), jnp.float32) for _ in range(2))
        mask = A.Mask(jnp.ones((1, T), jnp.int32))
        opts = A.options(A.Config("llama", 32, 128, 1, 4, 256, T, n_kv_heads=2))
        fns = {name: jax.jit(jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v, mask, opts)), argnums=(0, 1, 2)))
               for name, f in (("dense", A.dense), ("blockwise", A.blockwise))}
        times = {name: [] for name in fns}
        for _ in range(3):  # interleaved rounds
            for name, f in fns.items():
                times[name].append(statistics.median(timed(f, (q, k, v), repeats)))
        r = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"T": T, "dense_s": r["dense"], "blockwise_s": r["blockwise"],
                     "blockwise_speedup": r["dense"] / r["blockwise"]})
        print(rows[-1], flush=True)
    return rows


def steps(cases, repeats):
    times = {k: [] for k in cases}
    for i in range(repeats):
        for k, case in cases.items():
            times[k].append(case(i + 1))
    return {k: {"step_s": statistics.median(v), "compile_and_first_s": cases[k].compile_s} for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="256,512,1024,2048,4096")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--long", type=int, default=4096)
    ap.add_argument("--paper_kernels", default="dense,auto", help="kernels of part 2 (the first is the baseline)")
    ap.add_argument("--paper_only", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "crossover_in_code": A.CROSSOVER}
    if not args.paper_only:
        out["crossover"] = crossover([int(x) for x in args.lengths.split(",")], args.repeats)
    out["paper"] = {}
    base, *others = args.paper_kernels.split(",")
    for method, layers in (("sft", 4), ("kd", 2), ("dpkd", 2)):
        r = steps({k: Case(method, False, layers, model={"attention_kernel": k}) for k in (base, *others)},
                  args.repeats)
        for k in others:
            r[f"{k}_over_{base}_speed"] = r[base]["step_s"] / r[k]["step_s"]
        out["paper"][method] = r
        print(method, r, flush=True)
    if args.paper_only:
        return report(out, args.out)
    lengths = (64, 64 + args.long)
    r = steps({k: Case("sft", False, 4, model={"attention_kernel": k}, batch_size=1, lengths=lengths)
               for k in ("dense", "blockwise")}, max(2, args.repeats // 2))
    r["blockwise_over_dense_speed"] = r["dense"]["step_s"] / r["blockwise"]["step_s"]
    out["long"] = {"new_tokens": args.long, "batch": 1, **r}
    print(out["long"], flush=True)
    report(out, args.out)


if __name__ == "__main__":
    main()
