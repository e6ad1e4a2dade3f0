"""The one run path the CLI pipeline, the demo and the experiment share:

1. **build the run** once: the validated config completed by :func:`resolved` (token ids from
   the tokenizer, asset paths), the placement, the teacher, the data (:class:`Run`);
2. **train a stage**: :func:`train_stage` (one method from a student, its curves and summary);
3. **evaluate**: :func:`evaluate` (RougeL/EM on the run's eval sets).

The pipeline runs one stage; the demo and the experiment only choose which stages to run
(:func:`stage_config` derives each stage's spec; no spec is ever changed in place).
"""

from __future__ import annotations

import dataclasses
import os

import jax

from . import data as data_lib
from . import evaluate as eval_lib
from . import memory, models, specs
from . import curves
from .loop import Trained, train_loop
from .runspec import RunSpec


def resolved(cfg: RunSpec, tokenizer, **paths) -> RunSpec:
    """The validated spec completed before anything reads it, a new spec: the sampler's EOS/pad ids from the
    tokenizer (and the template's end token) where the config says -1, and resolved model paths
    (``teacher_path=``, ``student_path=``)."""
    changes = {f"{field.removesuffix('_path')}.path": path for field, path in paths.items()}
    if cfg.gen.eos_token_id < 0:
        changes["gen.eos_token_id"] = data_lib.end_token_id(tokenizer, cfg.data.template)
    if cfg.gen.pad_token_id < 0:
        changes["gen.pad_token_id"] = models.pad_id(tokenizer)
    return cfg.replace(changes)


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage of a run shares."""
    cfg: RunSpec                # the resolved spec (:func:`resolved`)
    tokenizer: object
    placement: object           # sharding.Placement
    teacher: tuple              # (decoder, params)
    train: object               # data.Tokenized
    dev: object = None
    lm_rows: object = None
    eval_sets: dict = dataclasses.field(default_factory=dict)
    teacher_tokenizer: object = None  # a tokenizer other than the student's: train across tokenizers
    teachers: dict = None       # multi-teacher: {name: (decoder, params)}; ``teacher`` is the first
    routing: object = None      # multi-teacher: teachers.Routing of ``train``'s rows

    @property
    def sampling(self) -> specs.Sampling:
        return specs.Sampling.of(self.cfg.gen)

    def with_teacher(self, decoder, params) -> "Run":
        return dataclasses.replace(self, teacher=(decoder, params))


def stage_config(cfg: RunSpec, method, workdir, *, seed=None, steps=None, lr=None, loss=None, **fields) -> RunSpec:
    """A stage's spec: the run's with its method, work dir and the given changes (``loss``: fields of the
    method's block; ``fields``: dotted paths such as ``resume``), a new spec."""
    changes = {k: v for k, v in (("train.steps", steps), ("train.lr", lr)) if v is not None} | fields
    if loss:
        changes[f"loss.{method}"] = dataclasses.replace(cfg.loss.block(method), **loss)
    return cfg.replace(changes, method=method, workdir=workdir, seed=cfg.seed if seed is None else seed)


def train_stage(run: Run, c, student, params, *, desc=None, init=None, callback=None, plot=True) -> Trained:
    """Train ``params`` with the stage config ``c``: the objective is built once here; a method
    that needs a reference model gets ``init`` (the student it started from). Writes
    ``<workdir>/curves.png`` (on the curves worker: ``curves.wait()`` before reading it) and prints a
    one-line summary when ``plot``."""
    spec = specs.Step.of(c)
    desc = desc or c.method
    ref = (params if init is None else init) if spec.objective.needs.reference else None
    trained = train_loop(run, c, student, params, spec=spec, ref_params=ref, desc=desc, callback=callback)
    if plot and jax.process_index() == 0 and trained.history:
        curves.plot_later(trained.history, os.path.join(c.workdir, "curves.png"), desc)
        final = trained.history[-1]
        print(f"[{desc}] step {final['step']}: loss {final['loss/total']:.3f}, "
              f"{final['perf/tokens_per_s']:.0f} tokens/s")
    return trained


def evaluate(run: Run, decoder, params, tag, out_dir=None, sets=None) -> dict:
    """RougeL/EM of a model on the run's eval sets (or ``sets``), answers written under ``out_dir``."""
    with memory.where(f"evaluation of the {tag}"):
        return eval_lib.evaluate(decoder, params, run.eval_sets if sets is None else sets, run.tokenizer, run.cfg.eval,
                                 run.sampling, out_dir, tag, mesh=run.placement.mesh)
