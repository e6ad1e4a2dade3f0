"""Token-level divergences against a sparse teacher: its top-k tokens with their true
log-probs plus one residual bucket for the rest of the mass (method.md, "Sparse teacher").

The student's distribution is reduced to the same k + 1 categories: its log-probs of the
k tokens, and ``log q_rest`` as a log-sum-exp over every other token (stable, no
``1 − Σ``). The teacher's ``p_rest = 1 − Σ_k p_v`` is clamped at 0 and, inside a log,
at 1e-30 (it is exactly 0 when k = V, where these equal the dense losses).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .core import _jsd, _kl, _log_mix, masked_mean

_FLOOR = 1e-30


def topk_logprobs(teacher_logits, k: int):
    """(ids ``[..., k]`` int32, log-probs ``[..., k]`` float32): the teacher's k most likely
    tokens with log-probs normalised over the full vocabulary, temperature 1 (the cache)."""
    logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    vals, ids = jax.lax.top_k(logp, k)
    return ids.astype(jnp.int32), vals


def _categories(student_logits, teacher_topk_ids, teacher_topk_logps):
    """(log q, log p) over the k + 1 categories ``[B, T, k+1]`` (last: the residual bucket)."""
    x = student_logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    ids = teacher_topk_ids.astype(jnp.int32)
    logq_k = jnp.take_along_axis(x, ids, axis=-1) - lse
    in_k = jnp.zeros(x.shape, bool)
    in_k = jax.vmap(jax.vmap(lambda row, i: row.at[i].set(True)))(in_k, ids)
    # A finite fill, not -inf: with k = V the bucket is empty and its gradient must stay finite.
    logq_rest = jax.nn.logsumexp(jnp.where(in_k, -1e30, x), axis=-1, keepdims=True) - lse
    logp_k = teacher_topk_logps.astype(jnp.float32)
    p_rest = jnp.maximum(1.0 - jnp.exp(logp_k).sum(-1, keepdims=True), 0.0)
    logp_rest = jnp.where(p_rest > 0, jnp.log(jnp.maximum(p_rest, _FLOOR)), -jnp.inf)
    return jnp.concatenate([logq_k, logq_rest], -1), jnp.concatenate([logp_k, logp_rest], -1)


def _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask):
    if teacher_topk_ids.shape != teacher_topk_logps.shape or teacher_topk_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"teacher_topk_ids {teacher_topk_ids.shape} and teacher_topk_logps "
                         f"{teacher_topk_logps.shape} must be [B, T, k] with [B, T] = student_logits "
                         f"{student_logits.shape[:-1]}")
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask has shape {mask.shape}, expected {student_logits.shape[:-1]}")
    return _categories(student_logits, teacher_topk_ids, teacher_topk_logps)


def _kl_floor(log_a, log_b):
    """``_kl`` with ``log b`` floored (a residual bucket the teacher leaves empty)."""
    return _kl(log_a, jnp.maximum(log_b, jnp.log(_FLOOR)))


def sparse_forward_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask):
    """Token-mean ``KL(p‖q)`` over the k + 1 categories; ``[B, T, V]``, ``[B, T, k]`` x2,
    ``[B, T]`` -> ``[B]``."""
    logq, logp = _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask)
    return masked_mean(_kl_floor(logp, logq), mask)


def sparse_reverse_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask):
    """Token-mean ``KL(q‖p)`` over the k + 1 categories; shapes as :func:`sparse_forward_kl`."""
    logq, logp = _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask)
    return masked_mean(_kl_floor(logq, logp), mask)


def sparse_generalized_jsd(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, beta=0.5):
    """Token-mean ``β KL(p‖M) + (1−β) KL(q‖M)``, ``M = βp + (1−β)q``, over the k + 1
    categories; β = 0 and 1 are forward and reverse KL exactly. Shapes as above."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    logq, logp = _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask)
    return masked_mean(_jsd(logp, logq, beta, kl=_kl_floor), mask)


def sparse_skew_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, alpha=0.1):
    """Token-mean ``KL(p ‖ αp + (1−α)q)`` (DistiLLM) over the k + 1 categories; shapes as above."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    logq, logp = _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask)
    return masked_mean(_kl(logp, _log_mix(alpha, logp, logq)), mask)


def sparse_skew_reverse_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, alpha=0.1):
    """Token-mean ``KL(q ‖ (1−α)p + αq)`` over the k + 1 categories; shapes as above."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    logq, logp = _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask)
    return masked_mean(_kl(logq, _log_mix(alpha, logq, logp)), mask)


def sparse_adaptive_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, mu=0.5):
    """Token-mean AKL over the k + 1 categories. The cache holds the teacher's tokens sorted by
    probability (``topk_logprobs``), so the head is its first tokens whose cumulative
    probability is ``≤ μ`` (the top-1 always) and the residual bucket is always tail; weights
    as :func:`adaptive_kl` (``q`` detached in ``e = |p − q|``). Shapes as above."""
    logq, logp = _checked(student_logits, teacher_topk_ids, teacher_topk_logps, mask)
    p = jnp.exp(logp)
    e = jnp.abs(p - jax.lax.stop_gradient(jnp.exp(logq)))
    head = (jnp.cumsum(p[..., :-1], axis=-1) <= mu).at[..., 0].set(True)
    head = jnp.concatenate([head, jnp.zeros_like(head[..., :1])], axis=-1)
    g_head, g_tail = jnp.sum(jnp.where(head, e, 0.0), -1), jnp.sum(jnp.where(head, 0.0, e), -1)
    total = g_head + g_tail
    w = jax.lax.stop_gradient(jnp.where(total > 0, g_head / jnp.where(total > 0, total, 1.0), 0.5))
    return masked_mean(w * _kl_floor(logp, logq) + (1.0 - w) * _kl_floor(logq, logp), mask)
