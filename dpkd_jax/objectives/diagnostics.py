"""Metrics that are not losses: the first-token KLs the paper tracks, and reward-hacking
diagnostics (DistiLLM-2 reports DPKD driving up the student's NLL of its own samples):
the student's per-token NLL of y_t and y_s, the teacher's per-token log-prob of y_s, and
the distinct-2 ratio and mean length of y_s. Read from the step's memoised logits only,
so they add no forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import losses
from .base import Context, Model, Response


def distinct_2(ids, mask):
    """Per row: distinct bigrams / bigrams among the valid tokens ``[B]`` (1 when none)."""
    valid = (mask[:, :-1] * mask[:, 1:]).astype(bool)
    big = jnp.iinfo(jnp.int32).max
    a = jnp.where(valid, ids[:, :-1], big).astype(jnp.int32)
    b = jnp.where(valid, ids[:, 1:], big).astype(jnp.int32)
    a, b = jax.lax.sort((a, b), dimension=1, num_keys=2)
    first = jnp.ones(a.shape[:1] + (1,), bool)
    new = jnp.concatenate([first, (a[:, 1:] != a[:, :-1]) | (b[:, 1:] != b[:, :-1])], axis=1)
    n = valid.sum(1)
    return jnp.where(n > 0, (new & (a != big)).sum(1) / jnp.maximum(n, 1), 1.0)


def reward_hacking(ctx: Context) -> dict:
    out = {}
    for m, r, name, sign in ((Model.STUDENT, Response.TEACHER, "hacking/student_nll_yt", -1.0),
                             (Model.STUDENT, Response.STUDENT, "hacking/student_nll_ys", -1.0),
                             (Model.TEACHER, Response.STUDENT, "hacking/teacher_logp_ys", 1.0)):
        if ctx.has(m, r):
            total, n = ctx.logps(m, r)
            out[name] = jax.lax.stop_gradient(sign * total / n)
    if Response.STUDENT in ctx.samples:
        ids, mask = ctx.samples[Response.STUDENT]
        out["hacking/distinct2_ys"] = distinct_2(ids, mask)
        out["hacking/length_ys"] = mask.sum(1).astype(jnp.float32)
    return out


def first_token_logits(decoder, params, prompt_ids, prompt_mask):
    """One prompt forward: the logits at the last prompt position ``[B, 1, V]`` (they predict the
    first response token)."""
    P = prompt_ids.shape[1]
    pos = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    return decoder(params, prompt_ids, pos, prompt_mask, logits_range=(P - 1, P))[0]


def first_token_kls(student, params, teacher, teacher_params, prompt_ids, prompt_mask):
    """Forward and reverse KL between teacher and student on the first response token ``[B]``,
    by two prompt forwards (a step reads what it can from its own forwards: :func:`first_positions`)."""
    return first_token_kls_of_logits(first_token_logits(student, params, prompt_ids, prompt_mask),
                                     first_token_logits(teacher, teacher_params, prompt_ids, prompt_mask))


def first_positions(ctx: Context):
    """(student, teacher) final hidden states at the last prompt position ``[B, 1, D]``, from the
    forwards the objective ran (``Context.first_position``; None for a model it did not run),
    without gradient: their heads give the first-token logits with no forward of their own."""
    out = (ctx.first_position(Model.STUDENT), ctx.first_position(Model.TEACHER))
    return tuple(None if h is None else jax.lax.stop_gradient(h) for h in out)


def first_token_kls_of_logits(s, t):
    """(KL(t‖s), KL(s‖t)) ``[B]`` of first-token logits ``[B, 1, V]``, without gradient."""
    s, t = jax.lax.stop_gradient(s), jax.lax.stop_gradient(t)
    ones = jnp.ones(s.shape[:2])
    return losses.forward_kl(s, t, ones), losses.reverse_kl(s, t, ones)
