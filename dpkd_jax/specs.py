"""Small frozen specs built once from the validated config at the entry points; the
library modules (the step, sampling callers, the teacher caches, throughput, the
cross-tokenizer wrapper) take these, never the ConfigDict. They are hashable, so a
compiled step is keyed by them and serves every seed of a method (``train.make_step``)."""

from __future__ import annotations

import dataclasses

from . import objectives
from .optim import Schedule


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The sampler's options: ``sampling.sample(..., **spec.kwargs())``."""
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int = -1
    pad_token_id: int = 0

    @classmethod
    def of(cls, g) -> "Sampling":
        return cls(int(g.max_new_tokens), float(g.temperature), int(g.top_k), float(g.top_p), int(g.eos_token_id),
                   int(g.pad_token_id))

    def kwargs(self, **changes) -> dict:
        return dict(dataclasses.asdict(self), **changes)


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

    @classmethod
    def of(cls, cfg, objective=None) -> "Step":
        objective = objective or objectives.build(cfg.method, cfg.loss)
        return cls(objective, Sampling.of(cfg.gen), int(cfg.train.steps), int(cfg.train.log_every),
                   int(cfg.train.batch_size), Schedule.of(cfg.train, objective.updates_per_step),
                   int(cfg.model.loss_chunk_tokens))
