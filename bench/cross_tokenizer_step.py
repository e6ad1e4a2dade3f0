"""The DPKD step across two tokenizers against the same step with one, side by side: the
cost of crossing the samples as text on the host (decode, encode, copy back) each step.

    python bench/cross_tokenizer_step.py                       # CPU: tiny GPT-2 shapes
    python bench/cross_tokenizer_step.py --width 768 --layers 12 --batch 16 --new 128   # GPU

Two byte-level BPE tokenizers trained on the demo data (--student-vocab, --teacher-vocab);
teachers of one shape, one per vocabulary; the demo's prompts. Interleaved runs, medians.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from dpkd_jax import cross_tokenizer, models, specs
from dpkd_jax.batch import Batch
from dpkd_jax import data as data_lib
from dpkd_jax.config import default_config
from dpkd_jax.demo import demo_file, train_tokenizer
from dpkd_jax.models import gpt2
from dpkd_jax.optim import make_optimizer
from dpkd_jax.runspec import RunSpec
from dpkd_jax.train import init_state, make_step


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(width=128, layers=2, heads=4, batch=8, new=32, repeats=7, student_vocab=384,
                     teacher_vocab=512).items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    files = [demo_file("train.jsonl"), demo_file("pretrain.txt")]
    s_tok = train_tokenizer(os.path.join(tmp, "s"), args.student_vocab, files)
    t_tok = train_tokenizer(os.path.join(tmp, "t"), args.teacher_vocab, files)
    c = default_config()
    c.method, c.loss.dpkd.lm_coef = "dpkd", 0.0
    c.data.max_prompt_length, c.data.max_length = 96, 96 + args.new
    c.gen.max_new_tokens, c.gen.eos_token_id, c.gen.pad_token_id = args.new, s_tok.eos_token_id, s_tok.eos_token_id
    c.train.batch_size, c.train.log_every, c.train.steps = args.batch, 10**9, 10**9
    data, _ = data_lib.load_instructions(demo_file("eval.jsonl"), s_tok, max_prompt_length=96, max_length=96 + args.new,
                                         pad_token_id=s_tok.eos_token_id)
    keep, views = cross_tokenizer.teacher_prompts(data, t_tok, template="dolly", max_prompt_length=96)
    data = data.take(keep)
    mk = lambda V, seed: (lambda m: models.init(m, seed))(gpt2.tiny_config(
        vocab_size=V, d_model=args.width, n_layers=args.layers, n_heads=args.heads, d_ff=4 * args.width,
        max_positions=96 + 2 * args.new + 8))
    (s_cfg, s_p), (t_same, tp_same), (t_x, tp_x) = mk(len(s_tok), 0), mk(len(s_tok), 1), mk(len(t_tok), 2)
    run = RunSpec.of(c)
    spec = specs.Step.of(run)
    tx = make_optimizer(run.train)
    same = make_step(spec, s_cfg, t_same, tx, tp_same)
    sides = cross_tokenizer.Sides(s_tok, t_tok, t_tok.eos_token_id)
    cross = cross_tokenizer.wrap_step(make_step(spec, s_cfg, t_x, tx, tp_x), spec.sampling, spec.objective.needs,
                                      s_cfg, t_x, tp_x, sides)
    batches = data_lib.Batches(data, args.batch, 0, views)
    states = {"same": init_state(s_cfg, jax.tree.map(lambda a: a.copy(), s_p), tx),
              "cross": init_state(s_cfg, jax.tree.map(lambda a: a.copy(), s_p), tx)}
    fns = {"same": same, "cross": cross}
    times = {k: [] for k in fns}
    for r in range(args.repeats + 1):  # the first round compiles
        rows = {k: v for k, v in batches.next().items() if k != "example_ids"}
        for name, fn in fns.items():
            batch = Batch.of(rows if name == "cross" else {k: v for k, v in rows.items()
                                                          if not k.startswith("teacher_view.")})
            t = time.perf_counter()
            states[name], m = fn(states[name], batch, jax.random.PRNGKey(r))
            jax.block_until_ready(states[name]["params"])
            if r:
                times[name].append(time.perf_counter() - t)
    host = host_time(cross, s_tok, t_tok, args)
    to_student, to_teacher = cross.retokenizers
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"device": jax.devices()[0].device_kind, "args": vars(args), "same_tokenizer_step_s": med["same"],
           "cross_tokenizer_step_s": med["cross"], "overhead": med["cross"] / med["same"] - 1.0,
           "host_retokenize_s": host, "ranges_s": {k: [min(v), max(v)] for k, v in times.items()},
           "rows_truncated": to_student.truncated + to_teacher.truncated}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def host_time(cross, s_tok, t_tok, args):
    """The host part alone: both crossings of one step's samples (median seconds)."""
    to_student, to_teacher = cross.retokenizers
    ys = np.random.default_rng(0).integers(1, len(s_tok), (args.batch, args.new)).astype(np.int32)
    yt = np.random.default_rng(1).integers(1, len(t_tok), (args.batch, args.new)).astype(np.int32)
    ones = np.ones_like(ys)
    return statistics.median(_timed(lambda: (to_teacher(ys, ones), to_student(yt, ones))) for _ in range(args.repeats))


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
