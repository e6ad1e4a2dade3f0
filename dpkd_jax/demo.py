"""The embedded default: the whole pipeline on a CPU in minutes, with no download.

Stages: train a BPE tokenizer on the shipped data; SFT a small GPT-2-shaped
teacher; SFT a smaller student (the common start); from that start distil with
each of ``demo.methods``; evaluate all and the teacher; print a Table-1-like table.
"""

from __future__ import annotations

import copy
import json
import logging
import os

import jax

from . import data as data_lib
from . import evaluate as eval_lib
from . import models, objectives, sharding
from .loop import train_loop
from .models import gpt2
from .checkpoint import prepare_workdir
from .pipeline import (data_options, export, load_eval_sets, plot_history, print_table,
                       resolve_token_ids)

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


def _stage_cfg(cfg, method, steps, lr, workdir):
    c = copy.deepcopy(cfg)
    with c.unlocked():
        c.method, c.train.steps, c.train.lr, c.workdir = method, steps, lr, workdir
    return c


def run_demo(cfg):
    d = cfg.demo
    wd = cfg.workdir
    prepare_workdir(cfg)
    placement = sharding.Placement(cfg.mesh)
    mesh = placement.mesh
    tok_dir = os.path.join(wd, "tokenizer")
    if jax.process_index() == 0:
        train_tokenizer(tok_dir, d.vocab_size, [cfg.data.train or demo_file("train.jsonl"), demo_file("pretrain.txt")])
    if jax.process_count() > 1:  # the others read what process 0 wrote
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("demo tokenizer")
    tokenizer = models.load_tokenizer(tok_dir)
    resolve_token_ids(cfg, tokenizer)
    full, report = data_lib.load_instructions(cfg.data.train or demo_file("train.jsonl"), tokenizer,
                                              **data_options(cfg))
    print(report)
    train_data, dev = data_lib.split_dev(full, cfg.data.dev_num, cfg.seed)
    lm_rows = data_lib.load_packed(cfg.data.pretrain or demo_file("pretrain.txt"), tokenizer, cfg.data.lm_seq_len)
    with cfg.unlocked():
        if not cfg.data.eval_sets:
            cfg.data.eval_sets = {"demo_eval": demo_file("eval.jsonl")}
    sets = load_eval_sets(cfg, tokenizer, dev)

    vocab = len(tokenizer)
    mk = lambda size, role: gpt2.tiny_config(vocab_size=vocab, max_positions=cfg.data.max_length,
                                             rules=placement.rules(role), **size)
    t_cfg, s_cfg = mk(dict(d.teacher), "teacher"), mk(dict(d.student), "student")
    t_params = models.init_params(t_cfg, jax.random.PRNGKey(cfg.seed + 1))
    s_params = models.init_params(s_cfg, jax.random.PRNGKey(cfg.seed + 2))
    print(f"teacher: {models.CausalLM(t_cfg, t_params).num_params():,} params; "
          f"student: {models.CausalLM(s_cfg, s_params).num_params():,} params; vocab {vocab}")

    stages = {}

    def stage(name, c, params, teacher, teacher_params, ref=None):
        out_dir = os.path.join(wd, name)
        if c.train.steps == 0:  # a stage can be switched off (tests, or a teacher already trained)
            return params
        student_cfg = teacher if name == "teacher_sft" else s_cfg
        params, history, _ = train_loop(c, student_cfg, params, teacher, teacher_params, train_data, lm_rows,
                                        out_dir, dev=dev, tokenizer=tokenizer, ref_params=ref, desc=name,
                                        placement=placement)
        if history:
            plot_history(history, os.path.join(out_dir, "curves.png"), name)
            final = history[-1]
            print(f"[{name}] step {final['step']}: loss {final['loss/total']:.3f}, "
                  f"{final['perf/tokens_per_s']:.0f} tokens/s")
        stages[name] = params
        return params

    t_params = stage("teacher_sft", _stage_cfg(cfg, "sft", d.teacher_steps, d.teacher_lr, os.path.join(wd, "teacher")),
                     t_params, t_cfg, t_params)
    s_init = stage("student_sft", _stage_cfg(cfg, "sft", d.student_steps, d.student_lr, os.path.join(wd, "student")),
                   s_params, t_cfg, t_params)
    results = {}
    ec = cfg.eval
    results["teacher"] = eval_lib.evaluate(t_cfg, t_params, sets, tokenizer, ec, cfg.gen,
                                           os.path.join(wd, "eval"), "teacher", mesh=mesh)
    results["student init (SFT)"] = eval_lib.evaluate(s_cfg, s_init, sets, tokenizer, ec, cfg.gen,
                                                      os.path.join(wd, "eval"), "student_init", mesh=mesh)
    for method in d.methods:
        c = _stage_cfg(cfg, method, d.distill_steps, d.distill_lr, os.path.join(wd, method))
        ref = s_init if objectives.build(method, cfg.loss).needs.reference else None
        params = stage(method, c, s_init, t_cfg, t_params, ref=ref)
        results[method] = eval_lib.evaluate(s_cfg, params, sets, tokenizer, ec, cfg.gen, os.path.join(wd, "eval"),
                                            method, mesh=mesh)
        host = jax.tree.map(sharding.to_host, params)
        if jax.process_index() == 0:
            export(s_cfg, host, tokenizer, os.path.join(wd, method, "export"))
    if jax.process_index() != 0:
        return results
    table = print_table(results)
    with open(os.path.join(wd, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(wd, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\ncurves: {wd}/<stage>/curves.png   answers and scores: {wd}/eval/   table: {wd}/table.md")
    logging.info("demo done")
    return results
