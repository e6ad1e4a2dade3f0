"""The training loop around the compiled step: placement on the mesh, resume,
logging, periodic eval and checkpoints, preemption (SIGTERM) and NaN guards.

Shared by `pipeline.run` (paper configs) and the demo (several stages).
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
from . import objectives
from . import teacher_cache
from .optim import make_optimizer
from .throughput import Throughput, step_flops
from .train import make_step, place_state, step_shardings


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
               tokenizer=None, ref_params=None, desc=None, placement=None, callback=None):
    """Train ``params`` with ``cfg.method`` on ``placement`` (from ``cfg.mesh`` by default).

    Returns :class:`Trained`. ``callback(step, state, metrics)``, if given, runs after
    every step. Raises :class:`Preempted` after a SIGTERM (checkpoint written) and
    :class:`Diverged` after ``train.max_bad_steps`` non-finite steps in a row.
    """
    from tensorboardX import SummaryWriter
    t = cfg.train
    placement = placement or sharding.Placement(cfg.mesh)
    mesh = placement.mesh
    sharding.check_batch(t.batch_size, mesh)
    sharding.check_heads(student.n_heads, mesh, "student")
    sharding.check_heads(teacher.n_heads, mesh, "teacher")
    objective = objectives.build(cfg.method, cfg.loss)
    tx = make_optimizer(t, objectives.updates_per_step(objective))
    sh = step_shardings(placement, student, teacher, tx, params)
    teacher_params = sharding.put(teacher_params, sh["teacher"])
    if ref_params is not None:
        ref_params = sharding.put(ref_params, sh["params"])
    state = place_state(params, tx, sh)  # a copy: the caller's params stay valid under donation
    extra = {}
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
    writer = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else None
    throughput = Throughput(step_flops(cfg, student, teacher, t.batch_size),
                            t.batch_size * (cfg.data.max_length + cfg.gen.max_new_tokens))
    base_rng = jax.random.PRNGKey(cfg.seed)
    saved = start

    def save(step, best=None):
        nonlocal saved
        ckpt.save(step, state, {"data": batches.state(), "history": history}, best_metric=best)
        saved = step

    watch = HackingWatch(t.hacking_warn_ratio, history)
    pbar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc=desc or cfg.method, leave=False,
                disable=jax.process_index() != 0)
    with SigtermGuard() as guard:
        for step in pbar:
            batch = batches.next()
            if use_lm:
                # Deterministic per step, so a resumed run sees the same text.
                rows = np.random.default_rng([cfg.seed, step]).integers(0, len(lm_rows), t.batch_size)
                batch["lm_ids"] = lm_rows[rows]
            batch.pop("example_ids")
            state, metrics = step_fn(state, sharding.put(batch, sh["batch"]), jax.random.fold_in(base_rng, step))
            done = step + 1
            if callback:
                callback(done, state, metrics)
            streak = int(metrics["nonfinite/streak"])
            if streak:
                logging.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)", done, streak)
                if streak >= t.max_bad_steps:
                    save(done)  # the skipped updates left the last good parameters in place
                    ckpt.wait()
                    raise Diverged(f"{streak} consecutive steps with a NaN/Inf loss or gradient (train.max_bad_steps="
                                   f"{t.max_bad_steps}); the last good state is saved as step {done} in "
                                   f"{ckpt.latest.directory}")
            if done % t.log_every == 0 or done == t.steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                metrics.update(throughput(t.log_every if done % t.log_every == 0 else done % t.log_every))
                metrics["step"] = done
                history.append(metrics)
                watch(metrics)
                pbar.set_postfix(loss=f"{metrics['loss/total']:.3f}")
                if writer:
                    for k, v in metrics.items():
                        writer.add_scalar(k, v, done)
            best = None
            if t.eval_every and done % t.eval_every == 0 and dev is not None:
                res = eval_lib.evaluate(student, state["params"], {"dev": dev}, tokenizer, _quick_eval(cfg),
                                        cfg.gen, mesh=mesh)
                best = res["dev"]["rougeL"]
                if writer:
                    writer.add_scalar("eval/dev_rougeL", best, done)
            if (t.save_every and (done % t.save_every == 0 or done == t.steps)) or best is not None:
                save(done, best)
            if guard.requested:
                if saved != done:
                    save(done)
                ckpt.wait()
                ckpt.close()
                raise Preempted(done, ckpt.latest.directory)
    ckpt.wait()
    best_params = ckpt.restore_best_params(state) if ckpt.has_best() else None
    ckpt.close()
    if writer:
        writer.close()
    return Trained(state["params"], history, best_params)


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
