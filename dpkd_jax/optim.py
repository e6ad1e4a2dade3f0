"""The optimizer: AdamW with masked weight decay, global-norm clipping, gradient
accumulation and a NaN/Inf guard, its learning-rate schedule, and the guarded update."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from .errors import InputError
from .models.components import DECAYED

# optax >= 0.2.5 names it optax.tree.norm; older releases only have global_norm.
global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm



def decay_mask(kinds: dict):
    """Weight decay on matrices, embeddings and adapters only (never biases, norm scales or
    learned positions), by each parameter's kind from the model's metadata."""
    return lambda params: {k: kinds[k] in DECAYED for k in params}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning rate per optimizer update (a hashable callable: the compiled step is keyed by it)."""
    kind: str
    lr: float
    warmup_steps: int
    updates: int            # optimizer updates in the run: MiniLLM takes several per step
    min_lr_ratio: float = 0.0

    @classmethod
    def of(cls, t, updates_per_step=1) -> "Schedule":
        if t.schedule not in ("constant", "cosine"):
            raise InputError(f"config.train.schedule must be 'constant' or 'cosine', got {t.schedule!r}")
        return cls(t.schedule, float(t.lr), int(t.warmup_steps), int(t.steps * updates_per_step),
                   float(t.min_lr_ratio))

    def optax(self):
        if self.kind == "constant":
            if not self.warmup_steps:
                return optax.constant_schedule(self.lr)
            return optax.join_schedules([optax.linear_schedule(0.0, self.lr, self.warmup_steps),
                                         optax.constant_schedule(self.lr)], [self.warmup_steps])
        return optax.warmup_cosine_decay_schedule(0.0 if self.warmup_steps else self.lr, self.lr, self.warmup_steps,
                                                  max(self.updates, self.warmup_steps + 1),
                                                  end_value=self.lr * self.min_lr_ratio)

    def __call__(self, count):
        return self.optax()(count)


def make_schedule(t, updates_per_step=1) -> Schedule:
    return Schedule.of(t, updates_per_step)


@dataclasses.dataclass(frozen=True)
class Optim:
    """AdamW's settings; equal settings give the same optax object (``build`` is cached)."""
    schedule: Schedule
    grad_clip: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_accum: int
    kinds: tuple | None     # ((name, parameter kind), ...) for the decay mask; None: decay all

    @classmethod
    def of(cls, t, updates_per_step=1, kinds: dict | None = None) -> "Optim":
        return cls(Schedule.of(t, updates_per_step), float(t.grad_clip), float(t.adam_b1), float(t.adam_b2),
                   float(t.adam_eps), float(t.weight_decay), int(t.grad_accum),
                   None if kinds is None else tuple(sorted(kinds.items())))


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=16)  # one transformation per spec: the step compiled for it (train._compiled) is found again
def build(spec: Optim):
    """AdamW (decay masked off biases/norms by the parameter kinds), global-norm clipping,
    gradient accumulation; outermost, ``apply_if_finite`` skips any step whose gradients hold
    a NaN or Inf (counted in its state; the loop stops after ``train.max_bad_steps`` in a row)."""
    mask = decay_mask(dict(spec.kinds)) if spec.kinds is not None else None
    tx = optax.chain(optax.clip_by_global_norm(spec.grad_clip) if spec.grad_clip > 0 else optax.identity(),
                     optax.adamw(spec.schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay,
                                 mask=mask))
    tx = optax.MultiSteps(tx, spec.grad_accum) if spec.grad_accum > 1 else tx
    # Never let optax apply a bad update itself: the loop decides when to stop.
    return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def make_optimizer(t, updates_per_step=1, kinds: dict | None = None):
    """The optax transformation of ``config.train`` (see :func:`build`); ``kinds``: name ->
    parameter kind from the model's metadata (all decayed without it)."""
    return build(Optim.of(t, updates_per_step, kinds))


def apply_update(tx, params, opt_state, grads, total):
    """One optax update. A NaN/Inf loss can leave the gradients finite (e.g. through an
    additive term): poison them so ``apply_if_finite`` skips the update either way."""
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(total), g, jnp.nan), grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
