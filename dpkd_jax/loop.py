"""A training stage: placement on the mesh, the offline teacher caches, resume, and the
trainer's hooks (logging, progress, periodic eval and checkpoints, preemption on SIGTERM,
the NaN guard, the reward-hacking watch).

``run.train_stage`` (the one run path of the CLI, the demo and the experiment) calls :func:`train_loop`.
"""

from __future__ import annotations

import dataclasses
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
from . import memory, sharding, stored_config, trackers
from .checkpoint import Checkpoints
from . import cross_tokenizer, specs, teacher_cache, teachers
from .batch import Batch
from .errors import InputError
from .optim import make_optimizer
from .profiling import ProfileWindow
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


class Placed(NamedTuple):
    """A stage's placed pieces: the optimizer, the step's shardings, the state, the frozen models' params."""
    tx: object
    shardings: dict
    state: dict
    teacher_params: dict | None
    ref_params: dict | None


def place(placement, spec, student, params, teacher, teacher_params, ref_params, train_cfg) -> Placed:
    """Check the mesh against the models, build the optimizer, and put everything on its shardings."""
    mesh = placement.mesh
    sharding.check_batch(spec.batch_size, mesh)
    sharding.check_heads(student.config.n_heads, mesh, "student")
    sharding.check_heads(teacher.config.n_heads, mesh, "teacher")
    kinds = {n: i.kind for n, i in student.info.items()}
    kinds.update({n: "weight" for n in (spec.feature.init_params() if spec.feature else {})})  # decayed like a matrix
    tx = make_optimizer(train_cfg, spec.objective.updates_per_step, kinds)
    sh = step_shardings(placement, student, teacher, tx, params, spec.objective, spec.feature)
    ref_params = None if ref_params is None else sharding.put(ref_params, sh["params"])
    # a copy: the caller's params stay valid under donation
    state = place_state(student, params, tx, sh, spec.objective, spec.feature)
    return Placed(tx, sh, state, sharding.put(teacher_params, sh["teacher"]), ref_params)


def row_extras(run, cfg, spec, teacher_params, tag=""):
    """(training data, extra row arrays for the batches, the teacher params the step takes): the
    teacher's own prompts across tokenizers and the offline caches (samples, top-k; with the
    top-k cache the step takes no teacher weights). ``tag``: in the cache files' names (one
    cache per teacher of a multi-teacher run)."""
    objective, extra = spec.objective, {}
    teacher, train_data, teacher_tokenizer, mesh = run.teacher[0], run.train, run.teacher_tokenizer, run.placement.mesh
    cache = lambda name: os.path.join(cfg.teacher.cache_dir or cfg.workdir, name.replace(".npz", f"{tag}.npz"))
    if teacher_tokenizer is not None:
        cross_tokenizer.check_method(objective, cfg.method)
        if cfg.gen.teacher_mode == "offline":
            raise InputError("config.gen.teacher_mode: 'offline' teacher samples are not kept across tokenizers; "
                             "use gen.teacher_mode=online")
        keep, views = cross_tokenizer.teacher_prompts(train_data, teacher_tokenizer,
                                                      template=cfg.data.teacher_template or cfg.data.template,
                                                      max_prompt_length=cfg.data.max_prompt_length)
        train_data = train_data.take(keep)
        extra.update(views)
    if objective.needs.teacher_samples and cfg.gen.teacher_mode == "offline":
        extra.update(teacher_cache.teacher_samples(spec.sampling, cfg.seed, spec.batch_size, teacher, teacher_params,
                                                   train_data, cache("teacher_samples.npz"), mesh))
    if cfg.teacher.topk and cfg.teacher.cache == "sampled":
        extra.update(teacher_cache.teacher_sampled(spec.batch_size, teacher, teacher_params, train_data,
                                                   cfg.teacher.topk, cfg.seed,
                                                   cache(f"teacher_sampled{cfg.teacher.topk}.npz"), mesh))
        teacher_params = None
    elif cfg.teacher.topk:
        extra.update(teacher_cache.teacher_topk(spec.batch_size, teacher, teacher_params, train_data, cfg.teacher.topk,
                                                cache(f"teacher_top{cfg.teacher.topk}.npz"), mesh))
        teacher_params = None
    return train_data, extra, teacher_params


def bind_feature(spec, student, run):
    """The feature term checked against the models (layers exist; every teacher of one width) and
    bound to their widths (the projection's shape)."""
    if spec.feature is None:
        return spec
    if run.teacher_tokenizer is not None:
        raise InputError("config.loss.feature: across tokenizers the teacher's positions are other tokens; the "
                         "feature term needs one tokenizer")
    teachers = [d.config for d, _ in (run.teachers or {"": run.teacher}).values()]
    return dataclasses.replace(spec, feature=spec.feature.bind_all(student.config, teachers))


def resume(ckpt, state, batches, desc, steps):
    """(state, history, start step) from the latest checkpoint, or the fresh state."""
    restored = ckpt.restore_latest(state)
    if restored is None:
        return state, [], 0
    state, ext = restored
    batches.restore(ext["data"])
    start = int(state["step"])
    done_already = " (finished: reusing it)" if start >= steps else ""
    print(f"{desc}: resumed from step {start}{done_already} ({ckpt.latest.directory})")
    return state, ext.get("history", []), start


def batch_source(batches, lm_rows, seed, batch_size, batch_sharding, routed=False):
    """``next_batch(step)``: the next typed :class:`Batch` on the mesh (``routed``: ``(teacher
    name, Batch)`` from :class:`teachers.GroupedBatches`); pre-training rows drawn
    deterministically per step, so a resumed run sees the same text."""
    def next_batch(step):
        name, rows = batches.next() if routed else (None, batches.next())
        rows.pop("example_ids")
        if lm_rows is not None:
            rows["lm_ids"] = lm_rows[np.random.default_rng([seed, step]).integers(0, len(lm_rows), batch_size)]
        batch = sharding.put(Batch.of(rows), batch_sharding)
        return (name, batch) if routed else batch
    return next_batch


def one_teacher(run, cfg, spec, student, placed):
    """(batches, step) of a one-teacher run (across tokenizers: the wrapped step)."""
    train_data, extra, step_teacher = row_extras(run, cfg, spec, placed.teacher_params)
    batches = data_lib.Batches(train_data, spec.batch_size, cfg.seed, extra or None)
    if cfg.data.packing:
        pack(batches, spec, run.placement.mesh, cfg.method)
    if cfg.data.group_by_length:
        full, mean = batches.length_grouped(cfg.data.group_by_length)
        print(f"{cfg.method}: length-grouped batches (windows of {cfg.data.group_by_length}): prompt slots per row "
              f"{full:.0f} -> {mean:.0f} on average this epoch ({100 * (1 - mean / full):.0f}% fewer); each prompt "
              f"width compiles the step once (padding/prompt_width in the log)", flush=True)
    step_fn = make_step(spec, student, run.teacher[0], placed.tx, step_teacher, placed.ref_params, placed.shardings)
    if run.teacher_tokenizer is not None:
        sides = cross_tokenizer.Sides(run.tokenizer, run.teacher_tokenizer, data_lib.end_token_id(
            run.teacher_tokenizer, cfg.data.teacher_template or cfg.data.template))
        step_fn = cross_tokenizer.wrap_step(step_fn, spec.sampling, spec.objective.needs, student, run.teacher[0],
                                            placed.teacher_params, sides, placed.shardings["batch"])
    return batches, step_fn


def routed_teachers(run, cfg, spec, student, placed):
    """(batches, step) of a multi-teacher run: each teacher's rows with their own caches, one step
    per teacher (teachers of one architecture share its compiled step: only the params differ),
    dispatched by the batch's teacher; the metrics count the steps each teacher graded."""
    groups, steps = {}, {}
    for name, data in teachers.split(run.train, run.routing, spec.batch_size).items():
        decoder, params = run.teachers[name]
        sharding.check_heads(decoder.config.n_heads, run.placement.mesh, f"teacher {name}")
        sh = dict(placed.shardings, teacher=run.placement.params(decoder.info, "teacher"))
        params = placed.teacher_params if name == run.routing.names[0] else sharding.put(params, sh["teacher"])
        sub = dataclasses.replace(run, teacher=(decoder, params), train=data)
        data, extra, step_teacher = row_extras(sub, cfg, spec, params, tag=f"_{name}")
        groups[name] = data_lib.Batches(data, spec.batch_size, cfg.seed, extra or None)
        if cfg.data.packing:
            pack(groups[name], spec, run.placement.mesh, f"{cfg.method} ({name})")
        steps[name] = make_step(spec, student, decoder, placed.tx, step_teacher, placed.ref_params, sh)
    batches = teachers.GroupedBatches(groups, cfg.seed)

    def step(state, routed, rng):
        name, batch = routed
        state, metrics = steps[name](state, batch, rng)
        counts = {f"teacher/{n}_steps": float(batches.counts.get(n, 0)) for n in run.routing.names}
        if "opd/teacher_kl" in metrics:  # method.md §9's per-teacher log (this step's teacher only)
            counts[f"teacher_kl/{name}"] = metrics["opd/teacher_kl"]
        return state, {**metrics, **counts}
    return batches, step


def pack(batches, spec, mesh, desc):
    """``data.packing``: every batch's gold forward on packed rows of the data's longest row (static: enough
    rows for a batch of the data's mean length; batches are grouped to fit), with the slots saved said once."""
    length = spec.gold_length or batches.data.prompt_ids.shape[1] + batches.data.response_ids.shape[1]
    rows = batches.packed(length, sharding.data_parallel_size(mesh))
    print(f"{desc}: packing {spec.batch_size} examples per step into {rows} rows of {length} slots "
          f"({rows * length} slots instead of {spec.batch_size * length}); packing/efficiency in the log is real "
          "tokens over packed slots", flush=True)


class Saver:
    """Checkpoints of the trainer's state with the data position and history; remembers the
    last step saved so a hook never writes the same step twice."""

    def __init__(self, ckpt, trainer, batches, history, start):
        self.ckpt, self.trainer, self.batches, self.history, self.last = ckpt, trainer, batches, history, start

    def __call__(self, step, best=None):
        if step == self.last and best is None:
            return
        self.trainer.flush()  # the history saved with it includes this step
        self.ckpt.save(step, self.trainer.state, {"data": self.batches.state(), "history": self.history},
                       best_metric=best)
        self.last = step

    def now(self, step):
        """Save and wait: the directory of the checkpoint written."""
        self(step)
        self.ckpt.wait()
        return self.ckpt.latest.directory


def register_hooks(trainer, save, run, cfg, spec, student, history, desc, callback=None):
    """The stage's hooks: NaN guard, logging (the trackers, throughput, the hacking watch),
    progress bar, the caller's callback, dev eval, periodic checkpoints. Returns what to close."""
    t, d = cfg.train, cfg.data
    writer = trackers.open_for(cfg)
    throughput = Throughput(step_flops(spec.objective.needs, student, run.teacher[0], spec.batch_size,
                                       (d.max_prompt_length, d.max_length - d.max_prompt_length,
                                        spec.sampling.max_new_tokens)),
                            spec.batch_size * (d.max_length + spec.sampling.max_new_tokens))
    pbar = tqdm(initial=trainer.step, total=spec.steps, desc=desc, leave=False, disable=jax.process_index() != 0)
    trainer.every(1, nan_guard(t.max_bad_steps, save.now, lambda: trainer.step))
    rates = lambda steps: throughput(steps, trainer.ready_time)  # each interval ends when its last step did
    trainer.every(t.log_every, log_metrics(history, rates, t.log_every, HackingWatch(t.hacking_warn_ratio, history),
                                           writer, pbar))
    trainer.every(1, lambda step, _: pbar.update(1), state=True, at_end=False)
    if callback:
        trainer.every(1, lambda step, tr: callback(step, tr.state), state=True, at_end=False)
    if t.eval_every and run.dev is not None:
        trainer.every(t.eval_every, dev_eval(run, cfg, student, writer, save), state=True, at_end=False)
    if t.save_every:
        trainer.every(t.save_every, lambda step, tr: save(step), state=True)
    closing = [pbar, writer]
    if cfg.log.profile_steps:
        window = ProfileWindow(*cfg.log.profile_steps, os.path.join(cfg.workdir, "profile"), trainer.step)
        trainer.every(1, window, state=True)
        closing.append(window)
    return closing


def dev_eval(run, cfg, student, writer, save):
    """State hook: RougeL on the dev set, logged, and a checkpoint ranked by it."""
    def evaluate(step, tr):
        res = eval_lib.evaluate(student, tr.state["params"], {"dev": run.dev}, run.tokenizer, _quick_eval(cfg),
                                cfg.gen, mesh=run.placement.mesh)
        writer.scalars({"eval/dev_rougeL": res["dev"]["rougeL"]}, step)
        save(step, res["dev"]["rougeL"])
    return evaluate


def train_loop(run, cfg, student, params, *, spec=None, ref_params=None, desc=None, callback=None):
    """Train ``params`` from the shared :class:`run.Run` (teacher, data, placement, tokenizers)
    with the stage config ``cfg`` (its method, steps and ``workdir``) and its objective ``spec``
    (a :class:`specs.Step`, built from ``cfg`` when not given).

    A run with a ``teacher_tokenizer`` trains across tokenizers (cross_tokenizer.py;
    sequence-level methods only). Returns :class:`Trained`. ``callback(step, state)``, if given,
    runs after every step. Raises :class:`Preempted` after a SIGTERM (checkpoint written) and
    :class:`Diverged` after ``train.max_bad_steps`` non-finite steps in a row. The checkpoint
    manager is closed on every exit.
    """
    # every batch is drawn from run.train (or a subset of its rows): its longest row bounds the gold forwards
    spec = bind_feature(spec or specs.Step.of(cfg), student, run).with_data(run.train).with_micro_batch(
        cfg.train.micro_batch, sharding.data_parallel_size(run.placement.mesh))
    desc = desc or cfg.method
    if spec.micro_batches > 1:
        logging.info("%s: each step runs %d micro-batches of %d rows per device (train.micro_batch)", desc,
                     spec.micro_batches, cfg.train.micro_batch)
    placed = place(run.placement, spec, student, params, *run.teacher, ref_params, cfg.train)
    routed = run.routing is not None
    batches, step_fn = (routed_teachers if routed else one_teacher)(run, cfg, spec, student, placed)
    if batches.dropped_per_epoch:
        logging.info("%d examples per epoch fall in the last partial batch and are not used that epoch",
                     batches.dropped_per_epoch)
    lm_rows = run.lm_rows if spec.objective.lm_coef > 0 else None
    with Checkpoints(os.path.join(cfg.workdir, "checkpoints"), keep=cfg.train.keep) as ckpt:
        state, history, start = resume(ckpt, placed.state, batches, desc, spec.steps) if cfg.resume else (
            placed.state, [], 0)
        stored_config.check_and_store(cfg, desc, resumed=start > 0)
        base_rng = jax.random.PRNGKey(cfg.seed)
        trainer = Trainer(step_fn, batch_source(batches, lm_rows, cfg.seed, spec.batch_size, placed.shardings["batch"],
                                                routed), lambda step: jax.random.fold_in(base_rng, step),
                          start=start, steps=spec.steps)
        save = Saver(ckpt, trainer, batches, history, start)
        memory.set_where(f"{desc} step {start + 1}")  # named by a run-time out-of-memory's line
        trainer.every(1, lambda step, tr: memory.set_where(f"{desc} step {step + 1}"), state=True)
        to_close = register_hooks(trainer, save, run, cfg, spec, student, history, desc, callback)
        try:
            state = _run_guarded(trainer, save, state)
        finally:
            for c in to_close:
                c.close()
        ckpt.wait()
        best_params = ckpt.restore_best_params(state) if ckpt.has_best() else None
    return Trained(state["params"], history, best_params)


def _run_guarded(trainer, save, state):
    """Run the trainer; a SIGTERM finishes the step, saves, and raises :class:`Preempted`."""
    with SigtermGuard() as guard:
        def preempt(step, tr):
            if guard.requested:
                raise Preempted(step, save.now(step))
        trainer.every(1, preempt, state=True)
        return trainer.run(state)


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
    """Metric hook: append to the history, throughput, the hacking watch, the trackers, the bar."""
    def hook(step, m):
        m = dict(m, **throughput(log_every if step % log_every == 0 else step % log_every), step=step)
        history.append(m)
        watch(m)
        pbar.set_postfix(loss=f"{m['loss/total']:.3f}")
        writer.scalars(m, step)
    return hook


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
    return dataclasses.replace(cfg.eval, seeds=cfg.eval.seeds[:1])
