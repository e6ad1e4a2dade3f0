"""The embedded default: the whole pipeline on a CPU in minutes, with no download.

Stages: train a BPE tokenizer on the shipped data; SFT a small GPT-2-shaped
teacher; cut layers out of it for the student (the common start, as in the
real-weights experiment); from that start distil with each of ``demo.methods`` for
each of ``demo.seeds``; evaluate all and the teacher; print how much of the
teacher-student gap each method closes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import numpy as np

from . import data as data_lib
from . import curves, models, sharding
from . import run as run_lib
from .checkpoint import prepare_workdir
from .models import gpt2
from .model_options import attention_options
from .pipeline import data_options, export, fitted, load_eval_sets, publish_table
from .pruning import parse_layers, prune

DEMO_DIR = os.path.join(os.path.dirname(__file__), "data", "demo")


def demo_file(name):
    return os.path.join(DEMO_DIR, name)


def train_tokenizer(path, vocab_size, files):
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return models.load_tokenizer(path)
    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def lines():
        for fn in files:
            with open(fn) as f:
                for line in f:
                    if fn.endswith(".jsonl"):
                        rec = json.loads(line)
                        yield data_lib.format_prompt(rec["instruction"], rec.get("context", "")) + rec["response"]
                    else:
                        yield line
    tok.train_from_iterator(lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def demo_run(cfg):
    """Build the demo's run (``run.Run``): its tokenizer trained on the shipped data, its data,
    and a fresh GPT-2-shaped teacher."""
    d, wd = cfg.demo, cfg.workdir
    placement = sharding.Placement(cfg.mesh.as_dict())
    tok_dir = os.path.join(wd, "tokenizer")
    if jax.process_index() == 0:
        train_tokenizer(tok_dir, d.vocab_size, [cfg.data.train or demo_file("train.jsonl"), demo_file("pretrain.txt")])
    if jax.process_count() > 1:  # the others read what process 0 wrote
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("demo tokenizer")
    tokenizer = models.load_tokenizer(tok_dir)
    cfg = run_lib.resolved(cfg, tokenizer)
    full, report = data_lib.load_instructions(cfg.data.train or demo_file("train.jsonl"), tokenizer,
                                              **data_options(cfg))
    print(report)
    train_data, dev = data_lib.split_dev(full, cfg.data.dev_num, cfg.seed)
    lm_rows = data_lib.load_packed(cfg.data.pretrain or demo_file("pretrain.txt"), tokenizer, cfg.data.lm_seq_len)
    sets = load_eval_sets(cfg, tokenizer, dev, cfg.data.eval_sets or {"demo_eval": demo_file("eval.jsonl")})
    arch = gpt2.tiny_config(vocab_size=len(tokenizer), max_positions=cfg.data.max_length,
                            scan_layers=cfg.model.scan_layers, remat=cfg.model.remat, **attention_options(cfg.model),
                            **dataclasses.asdict(d.teacher))
    teacher = models.init(arch, cfg.seed + 1, placement.rules("teacher"))
    return run_lib.Run(cfg, tokenizer, placement, teacher, train_data, dev, lm_rows, sets)


def run_demo(cfg):
    d = cfg.demo
    wd = cfg.workdir
    prepare_workdir(cfg)
    run = demo_run(cfg)
    cfg = run.cfg
    t_cfg, t_params = run.teacher
    arch = t_cfg.config
    keep = parse_layers(d.keep_layers, arch.n_layers, "config.demo.keep_layers")
    print(f"teacher: {models.merge(t_cfg, t_params).num_params():,} params, {arch.n_layers} layers; the student "
          f"is the trained teacher with layers {d.keep_layers} kept; vocab {len(run.tokenizer)}")

    def stage(name, c, model, params, init=None):
        if c.train.steps == 0:  # a stage can be switched off (tests, or a teacher already trained)
            return params
        return run_lib.train_stage(run, c, model, params, desc=name, init=init).params

    sft = run_lib.stage_config(cfg, "sft", os.path.join(wd, "teacher"), steps=d.teacher_steps, lr=d.teacher_lr)
    t_params = stage("teacher_sft", checked(sft, run, (t_cfg, t_cfg)), t_cfg, t_params)
    run = run.with_teacher(t_cfg, t_params)
    s_cfg, s_init = prune(models.decoder_for(arch, run.placement.rules("student")), t_params, keep)
    ev = lambda model, params, tag: run_lib.evaluate(run, model, params, tag, os.path.join(wd, "eval"))
    results = {"teacher": [ev(t_cfg, t_params, "teacher")], "student at start (pruned teacher)":
               [ev(s_cfg, s_init, "student_init")]}
    for i, method in enumerate(d.methods):
        results[method] = []
        base = checked(run_lib.stage_config(cfg, method, os.path.join(wd, method), steps=d.distill_steps,
                                            lr=d.distill_lr), run, (t_cfg, s_cfg), generation=i == 0)
        for seed in d.seeds:  # one compiled step serves every seed (train.make_step)
            c = run_lib.stage_config(base, method, os.path.join(wd, method, f"seed{seed}"), seed=seed)
            params = stage(f"{method} seed {seed}", c, s_cfg, s_init, init=s_init)
            results[method].append(ev(s_cfg, params, f"{method}_seed{seed}"))
            if jax.process_index() == 0 and seed == d.seeds[0]:
                export(s_cfg, jax.tree.map(sharding.to_host, params), run.tokenizer,
                       os.path.join(wd, method, "export"))
    if jax.process_index() != 0:
        return results
    curves.wait()
    table = gap_table(results, d.distill_steps)
    print(table + f"\n\n{SAME_MACHINE}")
    publish_table(cfg, table)  # table.md and the trackers
    with open(os.path.join(wd, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\ncurves: {wd}/<method>/seed<k>/curves.png   answers and scores: {wd}/eval/   table: {wd}/table.md")
    logging.info("demo done")
    return results


# floating-point rounding follows the CPU's kernels: measured tables on three CPU setups are in the README
SAME_MACHINE = ("This table repeats on this machine; another CPU rounds differently and prints cells that differ by "
                "up to about one ± (README, 'The same table on the same machine').")


def checked(c, run, archs, generation=False):
    """A stage's config checked against the device right before the stage runs (``pipeline.fitted``: its
    step, and with ``generation`` the evaluations' generation, compiled as the stage then runs them), with
    ``train.micro_batch`` resolved; ``archs``: the stage's (teacher, student) decoders."""
    if not c.check.memory or not c.train.steps:
        return c
    return fitted(c, run.placement, {"data": run.train, "models": archs, "lm_rows": run.lm_rows is not None},
                  generation)


def gap_table(results, steps):
    """RougeL per eval set (mean ± std over training seeds) and the share of the teacher-student
    gap each method closes: (method - start) / (teacher - start)."""
    sets = sorted(results["teacher"][0])
    start_key = next(k for k in results if k.startswith("student at start"))
    mean = lambda rs, s: float(np.mean([r[s]["rougeL"] for r in rs]))
    lines = ["| student | " + " | ".join(f"{s} RougeL | {s} gap closed" for s in sets) + " |",
             "|" + "---|" * (1 + 2 * len(sets))]
    for name, rs in results.items():
        cells = []
        for s in sets:
            v = np.array([r[s]["rougeL"] for r in rs])
            gap = mean(results["teacher"], s) - mean(results[start_key], s)
            spread = f" ± {v.std():.1f}" if len(v) > 1 else ""
            closed = ""
            if name not in ("teacher", start_key):
                c = 100 * (v - mean(results[start_key], s)) / gap if gap else None
                closed = "n/a (no gap)" if c is None else f"{c.mean():.0f}%" + (f" ± {c.std():.0f}" if len(v) > 1 else "")
            cells += [f"{v.mean():.1f}{spread}", closed]
        label = f"{name}, {steps} steps, {len(rs)} seeds" if name not in ("teacher", start_key) else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
