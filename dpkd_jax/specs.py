"""Small frozen specs built once from the validated config at the entry points; the
library modules (the step, sampling callers, the teacher caches, throughput, the
cross-tokenizer wrapper) take these, never the ConfigDict. They are hashable, so a
compiled step is keyed by them and serves every seed of a method (``train.make_step``)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import objectives
from .errors import InputError
from .objectives import Response
from .optim import Schedule
from .sampling import Sampling  # noqa: F401  (the step's sampler options; specs.Sampling)

FEATURE_SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class Feature:
    """``loss.feature``: a feature-distillation term added to any method (``losses.feature_distance``
    at student → teacher layer ``pairs``). Its weight goes from ``weight`` at the start to
    ``final_weight`` at the end along ``schedule``; the widths are bound to the models by :meth:`bind`."""
    pairs: tuple                    # ((student layer, teacher layer), ...), 0-based
    distance: str = "mse"
    weight: float = 1.0
    final_weight: float = 1.0
    schedule: str = "constant"
    response: Response = Response.GOLD
    widths: tuple = (0, 0)          # (student, teacher) model widths, from bind()

    @classmethod
    def of(cls, f) -> "Feature | None":
        """From ``config.loss.feature``; None when its weight is 0 (off)."""
        if not f.weight and not f.final_weight:
            return None
        pairs = []
        for part in filter(None, (p.strip() for p in str(f.layers).split(","))):
            try:
                s, t = (int(x) for x in part.split(":"))
            except ValueError:
                raise InputError(f"config.loss.feature.layers: {part!r} is not 'student_layer:teacher_layer' "
                                 f"(e.g. '1:3,3:11')") from None
            pairs.append((s, t))
        if not pairs:
            raise InputError("config.loss.feature.layers: name at least one 'student_layer:teacher_layer' pair")
        if f.distance not in ("mse", "cosine"):
            raise InputError(f"config.loss.feature.distance: must be mse or cosine, got {f.distance!r}")
        if f.schedule not in FEATURE_SCHEDULES:
            raise InputError(f"config.loss.feature.schedule: must be one of {FEATURE_SCHEDULES}, got {f.schedule!r}")
        if f.response not in ("gold", "teacher", "student"):
            raise InputError(f"config.loss.feature.response: must be gold, teacher or student, got {f.response!r}")
        return cls(tuple(pairs), f.distance, float(f.weight), float(f.final_weight), f.schedule, Response(f.response))

    @property
    def student_layers(self):
        return tuple(s for s, _ in self.pairs)

    @property
    def teacher_layers(self):
        return tuple(t for _, t in self.pairs)

    def weight_at(self, progress):
        """The weight at ``progress`` = step / steps in [0, 1] (a traced scalar in the step)."""
        import jax.numpy as jnp
        shape = {"constant": lambda p: 1.0, "linear": lambda p: 1.0 - p,
                 "cosine": lambda p: 0.5 * (1.0 + jnp.cos(math.pi * p))}[self.schedule](progress)
        return self.final_weight + (self.weight - self.final_weight) * shape

    def bind(self, student_config, teacher_config) -> "Feature":
        """Checked against the models' depths; their widths recorded (a projection when they differ)."""
        for who, layers, cfg in (("student", self.student_layers, student_config),
                                 ("teacher", self.teacher_layers, teacher_config)):
            bad = [i for i in layers if not 0 <= i < cfg.n_layers]
            if bad:
                raise InputError(f"config.loss.feature.layers: {who} layer {bad[0]} does not exist (the {who} has "
                                 f"{cfg.n_layers} layers, 0-based)")
        return dataclasses.replace(self, widths=(student_config.d_model, teacher_config.d_model))

    def bind_all(self, student_config, teacher_configs) -> "Feature":
        """:meth:`bind` against every teacher's config (one or those of ``teacher.paths``), which must share one
        width and depth: the run's and ``mode=check``'s one check."""
        if len({(c.d_model, c.n_layers) for c in teacher_configs}) > 1:
            raise InputError("config.loss.feature: the teachers of teacher.paths differ in width or depth; the "
                             "feature term needs one projection for all of them")
        return self.bind(student_config, teacher_configs[0])

    def init_params(self) -> dict:
        """The trainable projection ``{"feature/projection": [K, D_s, D_t]}`` (normal, std
        1/sqrt(D_s), seeded), or ``{}`` when the widths are equal."""
        ds, dt = self.widths
        if ds == dt:
            return {}
        rng = np.random.default_rng(0)
        return {"feature/projection": (rng.standard_normal((len(self.pairs), ds, dt)) / np.sqrt(ds)).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class Step:
    """What the compiled train step needs to know: the objective (built once per run), the
    sampler, the run length (schedules, progress), when metrics are logged, the loss chunk."""
    objective: objectives.Objective
    sampling: Sampling
    steps: int
    log_every: int
    batch_size: int
    schedule: Schedule      # the learning rate logged per step
    chunk_tokens: int = 128
    feature: Feature | None = None  # loss.feature: a feature term added to the objective's
    # gold-response forwards on rows of this many slots (the data's longest prompt + response), set by
    # the loop from its data (``with_data``); None: the full prompt + response slots
    gold_length: int | None = None
    # train.micro_batch: the step runs its batch as this many equal micro-batches (a lax.scan), each of the
    # ``replicas`` data-parallel shards splitting its own rows; one optimizer update (``with_micro_batch``)
    micro_batches: int = 1
    replicas: int = 1

    @classmethod
    def of(cls, cfg, objective=None) -> "Step":
        objective = objective or objectives.build(cfg.method, cfg.loss)
        return cls(objective, Sampling.of(cfg.gen), int(cfg.train.steps), int(cfg.train.log_every),
                   int(cfg.train.batch_size), Schedule.of(cfg.train, objective.updates_per_step),
                   int(cfg.model.loss_chunk_tokens), Feature.of(cfg.loss.feature))

    def with_micro_batch(self, micro_batch: int, replicas: int) -> "Step":
        """The step with micro-batches of ``micro_batch`` rows per replica (0: the whole batch)."""
        return dataclasses.replace(self, micro_batches=micro_batches(micro_batch, self.batch_size, replicas),
                                   replicas=replicas)

    def with_data(self, data) -> "Step":
        """The step for batches of ``data`` (a ``data.Tokenized``): gold forwards on its longest row."""
        return dataclasses.replace(self, gold_length=data.longest_row())


def micro_batches(micro_batch: int, batch_size: int, replicas: int) -> int:
    """How many micro-batches of ``micro_batch`` rows per device a step of ``batch_size`` rows over
    ``replicas`` data-parallel devices runs (1: the whole batch); one line when it does not divide."""
    per_replica = batch_size // replicas
    if not micro_batch or micro_batch >= per_replica:
        return 1
    if per_replica % micro_batch:
        raise InputError(f"config.train.micro_batch: {micro_batch} does not divide the batch per device "
                         f"{per_replica} (train.batch_size={batch_size} over {replicas} data-parallel devices)")
    return per_replica // micro_batch
