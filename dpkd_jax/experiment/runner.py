"""The experiment's phases, in one process so compiled steps are shared across seeds:

1. the teacher's greedy answers (cached) and the pruned student's damage before training;
2. each method's learning rate from ``experiment.lr_grid`` on the dev prompts (seed 0);
3. DPKD's β x kd_ratio grid on dev: how far the preference term moves and what it buys;
4. every method (and DPKD at the best knobs found) over ``experiment.seeds`` with the
   metrics of ``measure.py`` on the held-out prompts at ``experiment.eval_points`` steps.

Each finished run is written to ``<workdir>/runs/<name>.json``; a rerun reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import jax
import numpy as np

from .. import data as data_lib
from .. import models, objectives, sharding
from ..assets import resolve
from ..errors import InputError
from ..pipeline import fitted, load_model
from .. import run as run_lib
from ..sampling import Sampling
from ..pruning import parse_layers, prune
from . import report
from .measure import Measure
from .targets import greedy_targets, prompts_only

PROMPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "prompts")
# A row of the table that is a method with some of its fields changed.
VARIANTS = {"dpkd_dpop": ("dpkd", {"form": "dpop"}), "opd_iw": ("opd", {"iw_gamma": 0.5}),
            "dadpo_a0": ("dadpo", {"alpha": 0.0})}  # daDPO's preference term alone: works across tokenizers


def variant(name: str):
    method, over = VARIANTS.get(name, (name, {}))
    if method not in objectives.OBJECTIVES:
        raise InputError(f"config.experiment.methods: unknown method {name!r}")
    return method, over


class Experiment:
    """Models, data and settings shared by every run; ``run`` trains and measures one."""

    def __init__(self, cfg):
        self.placement = sharding.Placement(cfg.mesh.as_dict())
        path = resolve(cfg.teacher.path)
        self.tokenizer = models.load_tokenizer(path)
        cfg = run_lib.resolved(cfg, self.tokenizer, teacher_path=path)
        self.cfg, self.e = cfg, cfg.experiment
        vocab = models.real_vocab_size(self.tokenizer)
        self.t_cfg, self.t_params = load_model(cfg, self.placement, "teacher", path, vocab)
        full_cfg, full = load_model(cfg, self.placement, "student", path, vocab)
        self.keep = parse_layers(self.e.keep_layers, full_cfg.config.n_layers, "config.experiment.keep_layers")
        self.s_cfg, self.s_params = prune(full_cfg, full, self.keep)
        self.train, self.dev, self.eval = self._data()
        # the shared run path: the train prompts with the teacher's greedy answers as the gold responses
        self.run_ctx = run_lib.Run(cfg, self.tokenizer, self.placement, (self.t_cfg, self.t_params), self.train)
        self._measures()

    def describe(self):
        return (f"teacher {self.t_cfg.config.n_layers} layers; student keeps {len(self.keep)}: "
                f"{self.e.keep_layers}")

    def teacher_row(self):
        return self.measure_eval(self.t_cfg, self.t_params)

    def _data(self):
        cfg, e = self.cfg, self.e
        P, N = cfg.data.max_prompt_length, cfg.gen.max_new_tokens
        pool, held = read_prompts(e)
        if len(pool) < e.n_train + e.n_dev or len(held) < e.n_eval:
            raise InputError(f"config.experiment: n_train + n_dev = {e.n_train + e.n_dev} and n_eval = {e.n_eval} "
                             f"need that many prompts; the set has {len(pool)} and {len(held)}")
        out = []
        for name, recs in (("train", pool[:e.n_train]), ("dev", pool[e.n_train:e.n_train + e.n_dev]),
                           ("eval", held[:e.n_eval])):
            prompts, rep = prompts_only(recs, self.tokenizer, max_prompt_length=P, max_new_tokens=N,
                                        pad_token_id=cfg.gen.pad_token_id, template=cfg.data.template, source=name)
            print(rep)
            out.append(greedy_targets(self.t_cfg, self.t_params, prompts, self.tokenizer, Sampling.of(cfg.gen),
                                      batch_size=cfg.eval.batch_size, mesh=self.placement.mesh,
                                      path=os.path.join(cfg.workdir, f"teacher_targets_{name}.npz")))
        return out

    def _measures(self):
        c = self.cfg
        kw = dict(batch_size=c.eval.batch_size, mesh=self.placement.mesh)
        gen = Sampling.of(c.gen)
        self.measure_eval = Measure(self.t_cfg, self.t_params, self.eval, self.tokenizer, gen, **kw)
        self.measure_dev = Measure(self.t_cfg, self.t_params, self.dev, self.tokenizer, gen, full=False, **kw)

    def run_cfg(self, method, lr, seed, over, workdir):
        # y_t sampled once (teacher.cache_dir), shared by every run; no checkpoints
        return run_lib.stage_config(self.cfg, method, workdir, seed=seed, steps=self.e.steps, lr=lr, loss=over,
                                    resume=False, **{"train.save_every": 0, "train.eval_every": 0,
                                                     "teacher.cache_dir": self.cfg.workdir})

    def run(self, method, lr, seed, over):
        """Train one run from the pruned student: the held-out metrics at ``experiment.eval_points``
        steps and the dev metrics at the end. The same settings are never trained twice (knobs at
        the config's values are left out of the name: ``dpkd`` and ``dpkd`` at its β are one run)."""
        default = dataclasses.asdict(self.cfg.loss.block(method))  # what the run's config already sets
        over = {k: v for k, v in over.items() if v != default[k]}
        knobs = "".join(f"_{k}{v}" for k, v in sorted(over.items()))
        name = f"{method}{knobs}_lr{lr:g}_seed{seed}"
        path = os.path.join(self.cfg.workdir, "runs", f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        c = self.run_cfg(method, lr, seed, over, os.path.join(self.cfg.workdir, "scratch", name))
        curve, dev, eval_s = [], {}, [0.0]
        steps = set(eval_steps(self.e))

        def on_step(step, state):
            if step in steps or step == self.e.steps:
                t = time.perf_counter()
                if step in steps:
                    curve.append({"step": step, **self.measure_eval(self.s_cfg, state["params"])})
                if step == self.e.steps:
                    dev.update(self.measure_dev(self.s_cfg, state["params"]))
                eval_s[0] += time.perf_counter() - t

        # the run's step against the device, compiled once (the run then reuses it); across tokenizers the step is
        # wrapped (cross_tokenizer.wrap_step), which the planner does not build
        if c.check.memory and self.run_ctx.teacher_tokenizer is None:
            c = fitted(c, self.placement, {"data": self.train, "models": (self.t_cfg, self.s_cfg), "lm_rows": False},
                       generation=False)
        start = time.perf_counter()
        trained = run_lib.train_stage(self.run_ctx, c, self.s_cfg, self.s_params, desc=name, callback=on_step,
                                      plot=False)
        out = {"name": name, "method": method, "lr": lr, "seed": seed, "over": over, "curve": curve, "dev": dev,
               "history": trained.history, "train_s": time.perf_counter() - start - eval_s[0], "eval_s": eval_s[0]}
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(out, f)
            os.replace(path + ".tmp", path)
        shutil.rmtree(c.workdir, ignore_errors=True)  # TensorBoard only: the run's record is the JSON
        return out


def read_prompts(e):
    """(the training pool, the held-out set) of ``experiment.prompts`` (default: the shipped set)."""
    return tuple(data_lib.read_jsonl(os.path.join(e.prompts or PROMPTS_DIR, f"{name}.jsonl"),
                                     data_lib.Report(f"experiment.prompts {name}.jsonl")) for name in ("train", "eval"))


def eval_steps(e):
    return sorted({int(round(x)) for x in np.linspace(0, e.steps, e.eval_points)} - {0})


def pick_lrs(x: Experiment, names):
    """Each row's lr: the best final dev RougeL over ``experiment.lr_grid`` (first seed)."""
    picks, grid = {}, {}
    for name in names:
        method, over = variant(name)
        scores = {lr: x.run(method, lr, x.e.seeds[0], over)["dev"]["rougeL"] for lr in x.e.lr_grid}
        grid[name] = scores
        picks[name] = max(scores, key=scores.get)
    return picks, grid


def dpkd_knobs(x: Experiment, lr):
    """β x kd_ratio on dev: the preference term's start and end, the margin, and dev RougeL."""
    rows, runs = [], []
    for beta in x.e.dpkd_betas:
        for kd in x.e.dpkd_kd_ratios:
            r = x.run("dpkd", lr, x.e.seeds[0], {"beta": beta, "kd_ratio": kd})
            h = r["history"]
            runs.append(r)
            rows.append({"beta": beta, "kd_ratio": kd, "dev_rougeL": r["dev"]["rougeL"],
                         **{f"{k}_{w}": h[i].get(k, float("nan")) for k in ("loss/dpkd", "reward/margin",
                                                                             "hacking/student_nll_ys")
                            for w, i in (("first", 0), ("last", -1))}})
    return rows, runs


def previous_rows(e):
    """The rows of an earlier ``results.json`` (``experiment.previous``) reported beside this
    run's and not retrained: {row: runs}, their lrs, lr grid and DPKD knob rows."""
    if not e.previous:
        return {}, {}, {}, []
    try:
        with open(e.previous) as f:
            prev = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"config.experiment.previous: cannot read {e.previous!r}: {err}") from None
    grid = {n: {float(k): v for k, v in g.items()} for n, g in prev.get("grid", {}).items()}
    return prev["runs"], dict(prev["lrs"]), grid, prev.get("knobs", [])


def run_experiment(cfg, kind=None):
    """The experiment ``cfg.experiment`` describes, with ``kind`` (:class:`Experiment`, or across tokenizers
    ``cross.CrossExperiment``, which the package's ``run_experiment`` picks) holding its models and data."""
    e = cfg.experiment
    os.makedirs(cfg.workdir, exist_ok=True)
    old_runs, lrs, grid, knobs = previous_rows(e)  # before the models load: a bad path fails at once
    x = (kind or Experiment)(cfg)
    print(f"{x.describe()}; train {len(x.train)}, dev {len(x.dev)}, eval {len(x.eval)} prompts")
    start = {"student": x.measure_eval(x.s_cfg, x.s_params), "teacher": x.teacher_row()}
    print(f"before training: student {start['student']}\n                 teacher {start['teacher']}")
    names = [n for n in e.methods if n not in old_runs]
    new_lrs, new_grid = pick_lrs(x, names)
    lrs.update(new_lrs)
    grid.update(new_grid)
    knob_runs = []
    if "dpkd" in names and e.dpkd_betas:
        knobs, knob_runs = dpkd_knobs(x, lrs["dpkd"])
    group = [n for n in e.best_of if n in new_grid]
    dropped = {n for n in group if n != max(group, key=lambda n: max(new_grid[n].values()))} if group else set()
    rows = {n: variant(n) for n in (*old_runs, *names) if n != "dpkd_best" and n not in dropped}
    best = max(knobs, key=lambda k: k["dev_rougeL"]) if knobs else None
    if best and (best["beta"], best["kd_ratio"]) != (cfg.loss.dpkd.beta, cfg.loss.dpkd.kd_ratio):
        rows["dpkd_best"] = ("dpkd", {"beta": best["beta"], "kd_ratio": best["kd_ratio"]})  # else: the dpkd row
        lrs["dpkd_best"] = lrs["dpkd"]
    runs = {n: old_runs[n] if n in old_runs else [x.run(m, lrs[n], s, over) for s in e.seeds]
            for n, (m, over) in rows.items()}
    if jax.process_index() == 0:
        report.write(cfg, start, runs, lrs, grid, knobs, rows, knob_runs, previous=sorted(old_runs))
    return runs
