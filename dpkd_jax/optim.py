"""The optimizer: AdamW with masked weight decay, global-norm clipping, gradient
accumulation and a NaN/Inf guard, its learning-rate schedule, and the guarded update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .errors import InputError

# optax >= 0.2.5 names it optax.tree.norm; older releases only have global_norm.
global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm



def decay_mask(kinds: dict):
    """Weight decay on matrices, embeddings and adapters only (never biases, norm scales or
    learned positions), by each parameter's kind from the model's metadata."""
    from .models.components import DECAYED
    return lambda params: {k: kinds[k] in DECAYED for k in params}


def make_schedule(t, updates_per_step=1):
    if t.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, t.lr, max(t.warmup_steps, 1)),
                                     optax.constant_schedule(t.lr)], [t.warmup_steps]) if t.warmup_steps else t.lr
    if t.schedule == "cosine":
        steps = t.steps * updates_per_step  # optimizer updates: MiniLLM takes several per step
        return optax.warmup_cosine_decay_schedule(0.0 if t.warmup_steps else t.lr, t.lr, t.warmup_steps,
                                                  max(steps, t.warmup_steps + 1), end_value=t.lr * t.min_lr_ratio)
    raise InputError(f"config.train.schedule must be 'constant' or 'cosine', got {t.schedule!r}")


def make_optimizer(t, updates_per_step=1, kinds: dict | None = None):
    """AdamW (decay masked off biases/norms by ``kinds``, name -> parameter kind; all decayed
    without it), global-norm clipping, gradient accumulation;
    outermost, ``apply_if_finite`` skips any step whose gradients hold a NaN or Inf
    (counted in its state; the loop stops after ``train.max_bad_steps`` in a row)."""
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
                     optax.adamw(make_schedule(t, updates_per_step), b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                                 weight_decay=t.weight_decay,
                                 mask=decay_mask(kinds) if kinds is not None else None))
    tx = optax.MultiSteps(tx, t.grad_accum) if t.grad_accum > 1 else tx
    # Never let optax apply a bad update itself: the loop decides when to stop.
    return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def apply_update(tx, params, opt_state, grads, total):
    """One optax update. A NaN/Inf loss can leave the gradients finite (e.g. through an
    additive term): poison them so ``apply_if_finite`` skips the update either way."""
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(total), g, jnp.nan), grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
