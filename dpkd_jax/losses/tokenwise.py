"""Per-position quantities from logits: ``[..., V]`` in, ``[...]`` out, float32.

The one definition of every token-level term. The dense losses (``core``, ``sparse``,
``contrastive``) take their token mean over ``[B, T, V]`` logits; the chunked forms
(``chunked``) apply the same functions to ``[B, C, V]`` chunks of logits computed from
hidden states, so the two agree by construction and the tests check it.
``s`` is the student's logits, ``t`` the teacher's; both are divided by ``temperature``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FLOOR = 1e-30   # the sparse residual bucket inside a log


def log_softmax(logits, temperature=1.0):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def kl(log_a, log_b):
    """``Σ_v a (log a − log b)`` over the last axis; 0·log 0 counts as 0."""
    a = jnp.exp(log_a)
    return jnp.sum(jnp.where(a > 0, a * (log_a - log_b), 0.0), axis=-1)


def log_mix(w_a, log_a, log_b):
    """``log(w_a·a + (1−w_a)·b)`` from log-probabilities, stably."""
    return jnp.logaddexp(jnp.log(w_a) + log_a, jnp.log1p(-w_a) + log_b)


def jsd_from_logs(logp, logq, beta, kl_fn=kl):
    """JSD_β per position, its endpoints exact (β = 0: KL(p‖q), β = 1: KL(q‖p); method.md §0)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return kl_fn(logp, logq)
    if beta == 1.0:
        return kl_fn(logq, logp)
    log_m = log_mix(beta, logp, logq)
    return beta * kl(logp, log_m) + (1.0 - beta) * kl(logq, log_m)


def _alpha(alpha):
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return alpha


def logprob(logits, labels):
    """``log softmax(logits)[labels]`` as ``logits[label] − logsumexp(logits)``: ``[..., V], [...] -> [...]``."""
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked.astype(jnp.float32) - jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)


def forward_kl(s, t, *, temperature=1.0):
    """``KL(p‖q)`` per position."""
    return kl(log_softmax(t, temperature), log_softmax(s, temperature))


def reverse_kl(s, t, *, temperature=1.0):
    """``KL(q‖p)`` per position."""
    return kl(log_softmax(s, temperature), log_softmax(t, temperature))


def generalized_jsd(s, t, *, temperature=1.0, beta=0.5):
    """``β KL(p‖M) + (1−β) KL(q‖M)``, ``M = βp + (1−β)q``, per position."""
    return jsd_from_logs(log_softmax(t, temperature), log_softmax(s, temperature), beta)


def skew_kl(s, t, *, temperature=1.0, alpha=0.1):
    """``KL(p ‖ αp + (1−α)q)`` per position (DistiLLM)."""
    logq, logp = log_softmax(s, temperature), log_softmax(t, temperature)
    return kl(logp, log_mix(_alpha(alpha), logp, logq))


def skew_reverse_kl(s, t, *, temperature=1.0, alpha=0.1):
    """``KL(q ‖ (1−α)p + αq)`` per position (DistiLLM)."""
    logq, logp = log_softmax(s, temperature), log_softmax(t, temperature)
    return kl(logq, log_mix(_alpha(alpha), logq, logp))


def cald_skew_reverse_kl(s, t, *, alpha=0.1):
    """DistiLLM-2's ``KL(q ‖ (1−α)p + α·sg(q))``: the q inside the mixture detached."""
    logq, logp = log_softmax(s), log_softmax(t)
    return kl(logq, log_mix(1.0 - _alpha(alpha), logp, jax.lax.stop_gradient(logq)))


def akl_weights(p, logq, head):
    """AKL's head weight ``g_h/(g_h+g_t)`` (no gradient; 0.5 when p = q exactly), ``e = |p − sg(q)|``."""
    e = jnp.abs(p - jax.lax.stop_gradient(jnp.exp(logq)))
    g_head, g_tail = jnp.sum(jnp.where(head, e, 0.0), -1), jnp.sum(jnp.where(head, 0.0, e), -1)
    total = g_head + g_tail
    return jax.lax.stop_gradient(jnp.where(total > 0, g_head / jnp.where(total > 0, total, 1.0), 0.5))


def adaptive_kl(s, t, *, temperature=1.0, mu=0.5):
    """AKL per position: the head is p's most likely tokens with cumulative mass ``≤ μ``
    (the top-1 always); ``w·KL(p‖q) + (1−w)·KL(q‖p)`` with ``w`` from :func:`akl_weights`."""
    logq, logp = log_softmax(s, temperature), log_softmax(t, temperature)
    p = jnp.exp(logp)
    order = jnp.argsort(-p, axis=-1)
    cum = jnp.cumsum(jnp.take_along_axis(p, order, axis=-1), axis=-1)
    head_sorted = (cum <= mu).at[..., 0].set(True)
    head = jnp.zeros_like(head_sorted)
    head = jnp.put_along_axis(head, order, head_sorted, axis=-1, inplace=False)
    w = akl_weights(p, logq, head)
    return w * kl(logp, logq) + (1.0 - w) * kl(logq, logp)


def dpkd_token(s, t, *, beta=0.1, label_smoothing=0.0, reference_free=False):
    """The reference code's token-level DPKD per position: chosen ``c = argmax p``, rejected
    ``r = argmax q``; ``h = β[(log q(c) − log p(c)) − (log q(r) − log p(r))]``,
    ``−(1−ε) log σ(h) − ε log σ(−h)``."""
    chosen = jnp.argmax(t, axis=-1)
    rejected = jnp.argmax(jax.lax.stop_gradient(s), axis=-1)
    ratio_c, ratio_r = logprob(s, chosen), logprob(s, rejected)
    if not reference_free:
        ratio_c = ratio_c - logprob(t, chosen)
        ratio_r = ratio_r - logprob(t, rejected)
    h = beta * (ratio_c - ratio_r)
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)


# ---------------------------------------------- against a sparse (top-k) teacher ---

def categories(s, topk_ids, topk_logps):
    """(log q, log p) over the teacher's k tokens plus one residual bucket ``[..., k+1]``."""
    x = s.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    ids = topk_ids.astype(jnp.int32)
    logq_k = jnp.take_along_axis(x, ids, axis=-1) - lse
    in_k = jnp.put_along_axis(jnp.zeros(x.shape, bool), ids, True, axis=-1, inplace=False)
    # A finite fill, not -inf: with k = V the bucket is empty and its gradient must stay finite.
    logq_rest = jax.nn.logsumexp(jnp.where(in_k, -1e30, x), axis=-1, keepdims=True) - lse
    logp_k = topk_logps.astype(jnp.float32)
    p_rest = jnp.maximum(1.0 - jnp.exp(logp_k).sum(-1, keepdims=True), 0.0)
    logp_rest = jnp.where(p_rest > 0, jnp.log(jnp.maximum(p_rest, FLOOR)), -jnp.inf)
    return jnp.concatenate([logq_k, logq_rest], -1), jnp.concatenate([logp_k, logp_rest], -1)


def kl_floor(log_a, log_b):
    """:func:`kl` with ``log b`` floored (a residual bucket the teacher leaves empty)."""
    return kl(log_a, jnp.maximum(log_b, jnp.log(FLOOR)))


def sparse_forward_kl(s, topk_ids, topk_logps):
    logq, logp = categories(s, topk_ids, topk_logps)
    return kl_floor(logp, logq)


def sparse_reverse_kl(s, topk_ids, topk_logps):
    logq, logp = categories(s, topk_ids, topk_logps)
    return kl_floor(logq, logp)


def sparse_generalized_jsd(s, topk_ids, topk_logps, *, beta=0.5):
    logq, logp = categories(s, topk_ids, topk_logps)
    return jsd_from_logs(logp, logq, beta, kl_fn=kl_floor)


def sparse_skew_kl(s, topk_ids, topk_logps, *, alpha=0.1):
    logq, logp = categories(s, topk_ids, topk_logps)
    return kl(logp, log_mix(_alpha(alpha), logp, logq))


def sparse_skew_reverse_kl(s, topk_ids, topk_logps, *, alpha=0.1):
    logq, logp = categories(s, topk_ids, topk_logps)
    return kl(logq, log_mix(_alpha(alpha), logq, logp))


def sparse_adaptive_kl(s, topk_ids, topk_logps, *, mu=0.5):
    """The cache holds the teacher's tokens sorted by probability, so the head is its first
    tokens with cumulative mass ``≤ μ`` (the top-1 always); the residual bucket is tail."""
    logq, logp = categories(s, topk_ids, topk_logps)
    p = jnp.exp(logp)
    head = (jnp.cumsum(p[..., :-1], axis=-1) <= mu).at[..., 0].set(True)
    head = jnp.concatenate([head, jnp.zeros_like(head[..., :1])], axis=-1)
    w = akl_weights(p, logq, head)
    return w * kl_floor(logp, logq) + (1.0 - w) * kl_floor(logq, logp)


def topk(logits, k: int):
    """(ids ``[..., k]`` int32, log-probs ``[..., k]`` float32): the k most likely tokens with
    log-probs normalised over the whole vocabulary, temperature 1 (the sparse cache)."""
    vals, ids = jax.lax.top_k(log_softmax(logits), k)
    return ids.astype(jnp.int32), vals
