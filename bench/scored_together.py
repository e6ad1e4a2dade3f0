"""A model's responses to the batch's prompts (gold, y_t, y_s) on one prompt forward
(``objectives.scored_responses`` records what the objective asks; ``Context`` then runs them together)
against the previous layout (y_t and y_s together, the gold response on its own squeezed rows), as
whole train steps of seqkd and dpkd at the demo's shapes (batch 16, prompt 96, 40 new tokens, gold
rows squeezed to 104 slots), interleaved in one process, medians; with each step's compile.

    python bench/scored_together.py --out bench/results/scored_together_cpu.json
"""

import argparse
import statistics
from unittest import mock

import jax

from dpkd_jax import train
from demo_speed import Case
from report import report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = {}
    for method in ("seqkd", "dpkd"):
        cases = {"together": Case(method, False, 2, gold_length=104)}
        train._compiled.cache_clear()  # a new jit, traced again under the patch
        with mock.patch.object(train.objectives, "scored_responses", lambda *a, **k: None):
            cases["gold_apart"] = Case(method, False, 2, gold_length=104)  # compiled with the previous layout
        times = {k: [] for k in cases}
        for i in range(args.repeats):
            for k, case in cases.items():
                times[k].append(case(i + 1))
        med = {k: statistics.median(t) for k, t in times.items()}
        rows[method] = {**{f"{k}_step_s": v for k, v in med.items()},
                        **{f"{k}_compile_and_first_s": c.compile_s for k, c in cases.items()},
                        "speedup": med["gold_apart"] / med["together"]}
        print(method, rows[method], flush=True)
    report({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "repeats": args.repeats, "steps": rows},
           args.out)


if __name__ == "__main__":
    main()
