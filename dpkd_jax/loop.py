"""A training stage: placement on the mesh, the offline teacher caches, resume, and the
trainer's hooks (logging, progress, periodic eval and checkpoints, preemption on SIGTERM,
the NaN guard, the reward-hacking watch).

``run_stage`` is what the CLI (`pipeline.run`) and the demo (several stages) both call.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from . import data as data_lib
from . import evaluate as eval_lib
from . import sharding
from .checkpoint import Checkpoints
from .curves import plot_history
from . import objectives
from . import cross_tokenizer, teacher_cache
from .errors import InputError
from .optim import make_optimizer
from .throughput import Throughput, step_flops
from .train import make_step, place_state, step_shardings
from .trainer import Trainer


class Trained(NamedTuple):
    params: dict
    history: list          # one dict of metrics per log interval
    best_params: dict | None  # best by dev RougeL, when train.eval_every > 0


class Preempted(Exception):
    """SIGTERM arrived; the step finished and a checkpoint was written."""

    def __init__(self, step, directory):
        super().__init__(f"preempted (SIGTERM): checkpoint of step {step} written to {directory}; "
                         "rerun the same command to resume")
        self.step = step


class Diverged(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


class SigtermGuard:
    """First SIGTERM: ask the loop to stop after this step. Second: exit at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handle(self, signum, frame):
        if self.requested:
            print("second SIGTERM: exiting now without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = True
        print("SIGTERM: finishing this step, then writing a checkpoint", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_loop(cfg, student, params, teacher, teacher_params, train_data, lm_rows, workdir, *, dev=None,
               tokenizer=None, ref_params=None, desc=None, placement=None, callback=None, teacher_tokenizer=None):
    """Train ``params`` with ``cfg.method`` on ``placement`` (from ``cfg.mesh`` by default).

    ``teacher_tokenizer`` (a tokenizer other than the student's ``tokenizer``): train across
    tokenizers (cross_tokenizer.py; sequence-level methods only).

    Returns :class:`Trained`. ``callback(step, state)``, if given, runs after
    every step. Raises :class:`Preempted` after a SIGTERM (checkpoint written) and
    :class:`Diverged` after ``train.max_bad_steps`` non-finite steps in a row.
    """
    from tensorboardX import SummaryWriter
    t = cfg.train
    placement = placement or sharding.Placement(cfg.mesh)
    mesh = placement.mesh
    sharding.check_batch(t.batch_size, mesh)
    sharding.check_heads(student.config.n_heads, mesh, "student")
    sharding.check_heads(teacher.config.n_heads, mesh, "teacher")
    objective = objectives.build(cfg.method, cfg.loss)
    tx = make_optimizer(t, objectives.updates_per_step(objective), {n: i.kind for n, i in student.info.items()})
    sh = step_shardings(placement, student, teacher, tx, params)
    teacher_params = sharding.put(teacher_params, sh["teacher"])
    if ref_params is not None:
        ref_params = sharding.put(ref_params, sh["params"])
    state = place_state(student, params, tx, sh)  # a copy: the caller's params stay valid under donation
    extra = {}
    if teacher_tokenizer is not None:
        cross_tokenizer.check_method(objective, cfg.method)
        if cfg.gen.teacher_mode == "offline":
            raise InputError("config.gen.teacher_mode: 'offline' teacher samples are not kept across tokenizers; "
                             "use gen.teacher_mode=online")
        keep, views = cross_tokenizer.teacher_prompts(train_data, teacher_tokenizer, template=cfg.data.template,
                                                      max_prompt_length=cfg.data.max_prompt_length)
        train_data = train_data.take(keep)
        extra.update(views)
    if objective.needs.teacher_samples and cfg.gen.teacher_mode == "offline":
        extra.update(teacher_cache.teacher_samples(cfg, teacher, teacher_params, train_data,
                                                   os.path.join(cfg.teacher.cache_dir or workdir, "teacher_samples.npz"), mesh))
    if cfg.teacher.topk:
        extra.update(teacher_cache.teacher_topk(cfg, teacher, teacher_params, train_data, cfg.teacher.topk,
                                                os.path.join(cfg.teacher.cache_dir or workdir, f"teacher_top{cfg.teacher.topk}.npz"), mesh))
        teacher_params = None  # the step trains from the cache: no teacher weights in it
    batches = data_lib.Batches(train_data, t.batch_size, cfg.seed, extra or None)
    if batches.dropped_per_epoch:
        logging.info("%d examples per epoch fall in the last partial batch and are not used that epoch",
                     batches.dropped_per_epoch)
    use_lm = lm_rows is not None and getattr(objective, "lm_coef", 0.0) > 0
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), keep=t.keep)
    history, start = [], 0
    if cfg.resume:
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, ext = restored
            batches.restore(ext["data"])
            history = ext.get("history", [])
            start = int(state["step"])
            done_already = " (finished: reusing it)" if start >= t.steps else ""
            print(f"{desc or cfg.method}: resumed from step {start}{done_already} ({ckpt.latest.directory})")
    step_fn = make_step(cfg, student, teacher, tx, teacher_params, ref_params, sh)
    if teacher_tokenizer is not None:
        step_fn = cross_tokenizer.wrap_step(step_fn, cfg, objective.needs, student, teacher, teacher_params,
                                            tokenizer, teacher_tokenizer, sh["batch"])
    writer = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else None
    throughput = Throughput(step_flops(cfg, student, teacher, t.batch_size),
                            t.batch_size * (cfg.data.max_length + cfg.gen.max_new_tokens))
    base_rng = jax.random.PRNGKey(cfg.seed)

    def next_batch(step):
        batch = batches.next()
        if use_lm:
            # Deterministic per step, so a resumed run sees the same text.
            rows = np.random.default_rng([cfg.seed, step]).integers(0, len(lm_rows), t.batch_size)
            batch["lm_ids"] = lm_rows[rows]
        batch.pop("example_ids")
        return sharding.put(batch, sh["batch"])

    trainer = Trainer(step_fn, next_batch, lambda step: jax.random.fold_in(base_rng, step), start=start,
                      steps=t.steps)
    saved = [start]

    def save(step, best=None):
        trainer.flush()  # the history saved with it includes this step
        ckpt.save(step, trainer.state, {"data": batches.state(), "history": history}, best_metric=best)
        saved[0] = step

    pbar = tqdm(initial=start, total=t.steps, desc=desc or cfg.method, leave=False,
                disable=jax.process_index() != 0)
    def save_now(step):
        save(step)
        ckpt.wait()
        return ckpt.latest.directory

    trainer.every(1, nan_guard(t.max_bad_steps, save_now, lambda: trainer.step))
    trainer.every(t.log_every, log_metrics(history, throughput, t.log_every, HackingWatch(t.hacking_warn_ratio, history),
                                           writer, pbar))
    trainer.every(1, lambda step, _: pbar.update(1), state=True, at_end=False)
    if callback:
        trainer.every(1, lambda step, tr: callback(step, tr.state), state=True, at_end=False)
    if t.eval_every and dev is not None:
        def evaluate(step, tr):
            res = eval_lib.evaluate(student, tr.state["params"], {"dev": dev}, tokenizer, _quick_eval(cfg), cfg.gen,
                                    mesh=mesh)
            if writer:
                writer.add_scalar("eval/dev_rougeL", res["dev"]["rougeL"], step)
            save(step, res["dev"]["rougeL"])
        trainer.every(t.eval_every, evaluate, state=True, at_end=False)
    if t.save_every:
        trainer.every(t.save_every, lambda step, tr: saved[0] != step and save(step), state=True)

    with SigtermGuard() as guard:
        def preempt(step, tr):
            if guard.requested:
                if saved[0] != step:
                    save(step)
                ckpt.wait()
                ckpt.close()
                raise Preempted(step, ckpt.latest.directory)
        trainer.every(1, preempt, state=True)
        state = trainer.run(state)
    pbar.close()
    ckpt.wait()
    best_params = ckpt.restore_best_params(state) if ckpt.has_best() else None
    ckpt.close()
    if writer:
        writer.close()
    return Trained(state["params"], history, best_params)


def nan_guard(max_bad_steps, save, current_step):
    """Metric hook: warn on each skipped (NaN/Inf) update; after ``max_bad_steps`` in a row, save
    the state (the skipped updates left the last good parameters in place) and stop."""
    def hook(step, m):
        streak = int(m["nonfinite/streak"])
        if not streak:
            return
        logging.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)", step, streak)
        if streak >= max_bad_steps:
            now = current_step()  # read one step late: the state is already at the next step
            where = save(now)
            raise Diverged(f"{streak} consecutive steps with a NaN/Inf loss or gradient (train.max_bad_steps="
                           f"{max_bad_steps}); the last good state is saved as step {now} in {where}")
    return hook


def log_metrics(history, throughput, log_every, watch, writer, pbar):
    """Metric hook: append to the history, throughput, the hacking watch, TensorBoard, the bar."""
    def hook(step, m):
        m = dict(m, **throughput(log_every if step % log_every == 0 else step % log_every), step=step)
        history.append(m)
        watch(m)
        pbar.set_postfix(loss=f"{m['loss/total']:.3f}")
        if writer:
            for k, v in m.items():
                writer.add_scalar(k, v, step)
    return hook


def run_stage(cfg, student, params, teacher, teacher_params, train_data, lm_rows, workdir, *, desc=None,
              **kw) -> Trained:
    """One training stage, as the CLI and the demo run it: :func:`train_loop`, then the stage's
    curves (``<workdir>/curves.png``) and a one-line summary."""
    trained = train_loop(cfg, student, params, teacher, teacher_params, train_data, lm_rows, workdir, desc=desc, **kw)
    if jax.process_index() == 0 and trained.history:
        plot_history(trained.history, os.path.join(workdir, "curves.png"), desc or cfg.method)
        final = trained.history[-1]
        print(f"[{desc or cfg.method}] step {final['step']}: loss {final['loss/total']:.3f}, "
              f"{final['perf/tokens_per_s']:.0f} tokens/s")
    return trained


class HackingWatch:
    """Warns (once) when NLL(y_s), the student's per-token NLL of its own samples, rises past
    ``ratio`` x its first logged value: the preference term may be winning by making the
    student's own text unlikely (DistiLLM-2's finding for DPKD)."""
    KEY = "hacking/student_nll_ys"

    def __init__(self, ratio, history):
        self.ratio, self.warned = ratio, False
        self.first = next((h[self.KEY] for h in history if self.KEY in h), None)

    def __call__(self, metrics):
        if self.KEY not in metrics or not self.ratio:
            return
        self.first = metrics[self.KEY] if self.first is None else self.first
        metrics["hacking/nll_ys_vs_start"] = metrics[self.KEY] / max(self.first, 1e-8)
        if metrics["hacking/nll_ys_vs_start"] > self.ratio and not self.warned:
            self.warned = True
            logging.warning("step %d: the student's NLL of its own samples is %.2fx its start (%.3f -> %.3f): "
                            "possible reward hacking (see README, 'Reward hacking')", metrics["step"],
                            metrics["hacking/nll_ys_vs_start"], self.first, metrics[self.KEY])


def _quick_eval(cfg):
    ec = cfg.eval.copy_and_resolve_references()
    with ec.unlocked():
        ec.seeds = ec.seeds[:1]
    return ec
