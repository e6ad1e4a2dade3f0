"""Packed against unpacked gold forwards (``data.packing``; issue "Long traces II"): the kd step of a
2-layer student under a 4-layer teacher (the demo's GPT-2 shapes), on two data sets:

* ``dolly``: the demo's Dolly-format training set, batch 16, rows of its longest example;
* ``traces``: synthetic reasoning traces, prompts of 32-128 tokens and responses of 64-3,968 (log-normal,
  median about 700), batch 4 (``--traces_batch``), rows of 4,096 slots (``model.attention_kernel=auto``: blockwise there).

Both layouts run the same batches (each epoch grouped to fit the packed rows, ``packing.group``),
alternated step by step in one process; medians. Tokens/s counts real (prompt and response) tokens.

    python bench/packing.py --out bench/results/packing_cpu.json
"""

import argparse
import json
import statistics
import tempfile

import jax
import numpy as np

from dpkd_jax import demo, sharding
from dpkd_jax.batch import Batch
from dpkd_jax.data import Batches, Tokenized
from dpkd_jax.runspec import RunSpec
from demo_speed import Case, demo_config
from report import report


def dolly():
    c = demo_config("kd")
    with tempfile.TemporaryDirectory() as wd, c.unlocked():
        c.workdir, c.gen.eos_token_id, c.gen.pad_token_id = wd, -1, -1
        run = demo.demo_run(RunSpec.of(c))
    return run.train, c.train.batch_size, (c.data.max_prompt_length, c.data.max_length)


def traces(n=64, P=128, R=3968, seed=0, batch=4):
    rng, vocab = np.random.default_rng(seed), demo_config("kd").demo.vocab_size
    p = rng.integers(32, P + 1, n)
    r = np.clip(rng.lognormal(np.log(700), 0.8, n).astype(int), 64, R)
    pm = (np.arange(P)[None] >= P - p[:, None]).astype(np.int32)
    rm = (np.arange(R)[None] < r[:, None]).astype(np.int32)
    ids = lambda shape: rng.integers(1, vocab, shape).astype(np.int32)
    data = Tokenized(ids((n, P)) * pm, pm, ids((n, R)) * rm, rm, [""] * n, [""] * n)
    return data, batch, (P, P + R)


def batches_of(data, batch_size, length, n):
    """``n`` grouped batches with their packing (and the demo's pre-training rows), and the rows they pack into."""
    b = Batches(data, batch_size, 0)
    rows = b.packed(length)
    c, rng, out = demo_config("kd"), np.random.default_rng(1), []
    for _ in range(n):
        arrays = b.next()
        arrays.pop("example_ids")
        arrays["lm_ids"] = rng.integers(1, c.demo.vocab_size, (batch_size, c.data.lm_seq_len)).astype(np.int32)
        out.append(arrays)
    return out, rows


def run_set(name, data, batch_size, lengths, repeats):
    longest = data.longest_row()
    case = Case("kd", False, 2, gold_length=longest, batch_size=batch_size, lengths=lengths)
    arrays, rows = batches_of(data, batch_size, longest, repeats + 1)
    packed = [Batch.of(a) for a in arrays]
    unpacked = [Batch.of({k: v for k, v in a.items() if not k.startswith("packing.")}) for a in arrays]
    real = [int(a["prompt_mask"].sum() + a["response_mask"].sum()) for a in arrays]
    times = {"unpacked": [], "packed": []}
    for layout, bs in (("unpacked", unpacked), ("packed", packed)):  # compile both first
        case.batch = sharding.put(bs[0], case.sh["batch"])
        case(0)
    for i in range(1, repeats + 1):  # alternated: both layouts see the same box
        for layout, bs in (("unpacked", unpacked), ("packed", packed)):
            case.batch = sharding.put(bs[i], case.sh["batch"])
            times[layout].append(case(i) / real[i])
    per_token = {k: statistics.median(v) for k, v in times.items()}
    row = {"batch": batch_size, "row_slots": longest, "packed_rows": rows,
           "slots_per_step": {"unpacked": batch_size * longest, "packed": rows * longest},
           "efficiency": {"unpacked": float(np.mean(real[1:])) / (batch_size * longest),
                          "packed": float(np.mean(real[1:])) / (rows * longest)},
           "tokens_per_s": {k: 1.0 / v for k, v in per_token.items()},
           "speedup": per_token["unpacked"] / per_token["packed"]}
    print(name, json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--sets", default="dolly,traces")
    ap.add_argument("--traces_batch", type=int, default=4)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    sets = {"dolly": dolly, "traces": lambda: traces(batch=args.traces_batch)}
    rows = {name: run_set(name, *sets[name](), args.repeats) for name in args.sets.split(",")}
    report({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "method": "kd",
            "models": "demo GPT-2 shapes: teacher 4 layers, student 2", "repeats": args.repeats, "sets": rows},
           args.out)


if __name__ == "__main__":
    main()
