"""The demo's train steps at its own shapes (configs/demo.py: batch 16, prompt 96, response 40, 40 new
tokens, the LM term on 64-token rows), layers scanned against unrolled, interleaved in one process,
medians; with the compile time of each. Backs ``model.scan_layers=False`` in the demo config.

    python bench/demo_speed.py --out bench/results/demo_speed_cpu.json
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import models, sharding
from dpkd_jax.batch import Batch
from dpkd_jax.models import gpt2
from dpkd_jax.optim import make_optimizer
from dpkd_jax.runspec import RunSpec
from dpkd_jax.specs import Step
from dpkd_jax.train import make_step, place_state, step_shardings
from report import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(method):
    spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(ROOT, "configs", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.method, c.gen.eos_token_id, c.gen.pad_token_id = method, 0, 0
    return c


def batch(c, vocab, rng):
    B, P = c.train.batch_size, c.data.max_prompt_length
    R = c.data.max_length - P
    pm, rm = np.ones((B, P), np.int32), np.zeros((B, R), np.int32)
    pm[:, :32], rm[:, :10] = 0, 1  # the demo's typical prompt (64 tokens) and answer (10)
    ids = lambda n: jnp.asarray(rng.integers(1, vocab, (B, n)), jnp.int32)
    return Batch.of({"prompt_ids": ids(P), "prompt_mask": jnp.asarray(pm), "response_ids": ids(R),
                     "response_mask": jnp.asarray(rm), "lm_ids": ids(c.data.lm_seq_len)})


class Case:
    """One (method, layout) step, placed as the trainer places it."""

    def __init__(self, method, scan, layers, gold_length=None, model=None, batch_size=None, lengths=None):
        """``model`` (GPT-2 config fields), ``batch_size`` and ``lengths`` (prompt, total) replace the demo's."""
        c = demo_config(method)
        d = c.demo
        if batch_size:
            c.train.batch_size = batch_size
        if lengths:
            c.data.max_prompt_length, c.data.max_length = lengths
        fields = {"vocab_size": d.vocab_size, "max_positions": c.data.max_length, "scan_layers": scan,
                  **d.teacher, **(model or {})}
        mk = lambda n, seed: models.init(gpt2.tiny_config(**dict(fields, n_layers=n)), seed)
        (t_dec, t_params), (s_dec, s_params) = mk(fields["n_layers"], 0), mk(layers, 1)  # the teacher: all layers
        run = RunSpec.of(c)
        tx, spec = make_optimizer(run.train), dataclasses.replace(Step.of(run), gold_length=gold_length)
        self.sh = sh = step_shardings(sharding.Placement(run.mesh.as_dict()), s_dec, t_dec, tx, s_params, spec.objective)
        self.state = place_state(s_dec, s_params, tx, sh, spec.objective)
        self.step = make_step(spec, s_dec, t_dec, tx, sharding.put(t_params, sh["teacher"]), shardings=sh)
        self.batch = sharding.put(batch(c, fields["vocab_size"], np.random.default_rng(0)), sh["batch"])
        t = time.perf_counter()
        self(0)
        self.compile_s = time.perf_counter() - t

    def __call__(self, i):
        t = time.perf_counter()
        self.state, m = self.step(self.state, self.batch, jax.random.PRNGKey(i))
        jax.block_until_ready(m)
        return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    # the teacher's SFT (4 layers) and two distillation steps of the pruned student (2 layers)
    rows = {}
    for method, layers in (("sft", 4), ("kd", 2), ("dpkd", 2)):
        cases = {scan: Case(method, scan, layers) for scan in (True, False)}
        times = {scan: [] for scan in cases}
        for i in range(args.repeats):  # interleaved: both layouts see the same box
            for scan, case in cases.items():
                times[scan].append(case(i + 1))
        rows[f"{method} ({layers} layers)"] = {
            ("scanned" if scan else "unrolled"): {"step_s": statistics.median(times[scan]),
                                                  "compile_and_first_s": cases[scan].compile_s} for scan in cases}
        r = rows[f"{method} ({layers} layers)"]
        r["unrolled_speedup"] = r["scanned"]["step_s"] / r["unrolled"]["step_s"]
        print(method, layers, json.dumps(r), flush=True)
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "repeats": args.repeats, "steps": rows}
    report(out, args.out)


if __name__ == "__main__":
    main()
