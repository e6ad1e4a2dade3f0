"""Gold-response forwards on squeezed rows (``sampling.squeezed_rows``: the padding between a
left-padded prompt and its right-padded response removed, rows as long as the data's longest
example) against the full ``P + R`` rows, at the demo's shapes on its own data: the teacher's SFT
step (4 layers) and the kd and dpkd steps of the pruned student (2 layers), interleaved in one
process, medians.

    python bench/squeezed_rows.py --out bench/results/squeezed_rows_cpu.json
"""

import argparse
import json
import statistics
import tempfile

import jax
import numpy as np

from dpkd_jax import demo, sharding
from dpkd_jax.runspec import RunSpec
from demo_speed import Case, demo_config
from report import report


def demo_batches(c, n):
    """``n`` batches of the demo's training data and its longest row."""
    from dpkd_jax.data import Batches
    from dpkd_jax.batch import Batch
    with tempfile.TemporaryDirectory() as wd, c.unlocked():
        c.workdir, c.gen.eos_token_id, c.gen.pad_token_id = wd, -1, -1
        run = demo.demo_run(RunSpec.of(c))
    batches = Batches(run.train, c.train.batch_size, 0)
    lm = run.lm_rows
    out = []
    for i in range(n):
        rows = batches.next()
        rows.pop("example_ids")
        rows["lm_ids"] = lm[np.random.default_rng(i).integers(0, len(lm), c.train.batch_size)]
        out.append(Batch.of(rows))
    return out, run.train.longest_row()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    batches, longest = demo_batches(demo_config("sft"), args.repeats + 1)
    rows = {}
    for method, layers in (("sft", 4), ("kd", 2), ("dpkd", 2)):
        cases = {}
        for length in (None, longest):
            case = Case(method, False, layers, gold_length=length)
            case.batch = sharding.put(batches[0], case.sh["batch"])
            cases[length] = case
        times = {k: [] for k in cases}
        for i in range(args.repeats):  # interleaved: both layouts see the same box
            for k, case in cases.items():
                case.batch = sharding.put(batches[i + 1], case.sh["batch"])
                times[k].append(case(i + 1))
        full, squeezed = (statistics.median(times[k]) for k in cases)
        rows[f"{method} ({layers} layers)"] = {"full_rows_step_s": full, "squeezed_rows_step_s": squeezed,
                                               "speedup": full / squeezed}
        print(method, layers, json.dumps(rows[f"{method} ({layers} layers)"]), flush=True)
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "repeats": args.repeats,
           "rows": {"full": batches[0].prompt_ids.shape[1] + batches[0].response_ids.shape[1], "squeezed": longest},
           "steps": rows}
    report(out, args.out)


if __name__ == "__main__":
    main()
