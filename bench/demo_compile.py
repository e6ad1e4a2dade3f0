"""The demo's five train steps (configs/demo.py shapes, layers unrolled): compile time and step time with
this round's two compile cuts against the code before them, interleaved in one process.

* first-token KLs read from the objective's own forwards (``objectives.first_positions``) against two
  extra prompt forwards in a ``lax.cond`` on log steps (the old path: ``first_positions`` -> ``(None, None)``);
* decode chunks of at least 64 tokens (``sampling.MIN_CHUNK``; the demo's 40 new tokens: one compiled
  decode body per model) against 16 (three bodies).

    python bench/demo_compile.py --out bench/results/demo_compile_cpu.json
"""

import argparse
import json
import statistics

import jax

from demo_speed import Case
from dpkd_jax import objectives, sampling, train
from report import report

NEW = (objectives.first_positions, sampling.MIN_CHUNK)
OLD = (lambda ctx: (None, None), 16)


def measure(method, layers, variant, steps):
    objectives.first_positions, sampling.MIN_CHUNK = variant
    train._compiled.cache_clear()   # a fresh compile of the step each time
    jax.clear_caches()
    case = Case(method, False, layers)
    times = [case(i + 1) for i in range(steps)]
    return case.compile_s, statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="steps per measurement (the 10th logs: the old cond runs)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = {}
    for method, layers in (("sft", 4), ("sft", 2), ("kd", 2), ("seqkd", 2), ("dpkd", 2)):
        got = {"before": [], "after": []}
        for _ in range(args.repeats):  # alternating: both variants see the same box
            for name, variant in (("before", OLD), ("after", NEW)):
                got[name].append(measure(method, layers, variant, args.steps))
        rows[f"{method} ({layers} layers)"] = r = {
            name: {"compile_and_first_s": [round(c, 2) for c, _ in v], "step_s": [round(s, 4) for _, s in v]}
            for name, v in got.items()}
        print(method, layers, json.dumps(r), flush=True)
    objectives.first_positions, sampling.MIN_CHUNK = NEW
    total = {name: round(sum(min(r[name]["compile_and_first_s"]) for r in rows.values()), 1) for name in ("before", "after")}
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "repeats": args.repeats,
           "steps_per_measurement": args.steps, "sum_of_best_compile_and_first_s": total, "steps": rows}
    report(out, args.out)


if __name__ == "__main__":
    main()
