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


# ----------------------------------------------- round 3: newer divergences ---

def _finite_pair(logp, logq):
    """Zero where both log-probabilities are −inf (a token neither model can emit), so the
    terms below give 0 there with finite gradients instead of ``−inf − (−inf)``."""
    both = jnp.isneginf(logp) & jnp.isneginf(logq)
    return jnp.where(both, 0.0, logp), jnp.where(both, 0.0, logq), both


def abkd(s, t, *, alpha=0.2, beta=0.7, temperature=1.0):
    """ABKD's α-β divergence per position (method.md §4), in log space, continuous (squared
    prefactor) degenerate branches: general ``−1/(αβ) Σ[p^α q^β − α/(α+β) p^{α+β} − β/(α+β) q^{α+β}]``;
    α=0: ``1/β² Σ[q^β log(q^β/p^β) − q^β + p^β]``; β=0: ``1/α² Σ[p^α log(p^α/q^α) − p^α + q^α]``;
    α=−β: ``1/α² Σ[log(q^α/p^α) + p^α/q^α − 1]``; α=β=0: ``½ Σ (log p − log q)²``."""
    lp, lq, both = _finite_pair(log_softmax(t, temperature), log_softmax(s, temperature))
    a, b = float(alpha), float(beta)
    if a == 0.0 and b == 0.0:
        terms = 0.5 * (lp - lq) ** 2
    elif a == 0.0:
        qb, pb = jnp.exp(b * lq), jnp.exp(b * lp)
        terms = (jnp.where(qb > 0, qb * b * (lq - lp), 0.0) - qb + pb) / b**2
    elif b == 0.0:
        pa, qa = jnp.exp(a * lp), jnp.exp(a * lq)
        terms = (jnp.where(pa > 0, pa * a * (lp - lq), 0.0) - pa + qa) / a**2
    elif a + b == 0.0:
        terms = (a * (lq - lp) + jnp.exp(a * (lp - lq)) - 1.0) / a**2
    else:
        g = a + b
        terms = -(jnp.exp(a * lp + b * lq) - a / g * jnp.exp(g * lp) - b / g * jnp.exp(g * lq)) / (a * b)
    return jnp.sum(jnp.where(both, 0.0, terms), axis=-1)


def todi(s, t, *, temperature=1.0):
    """ToDi per position (method.md §5): ``Σ_v [w p (log p − log q) + (1 − w) q (log q − log p)]``,
    ``w = sg(σ(log p − log q))``. Its value is ``FKL + RKL``; its gradient is the w-weighted mix."""
    lp, lq = log_softmax(t, temperature), log_softmax(s, temperature)
    w = jax.lax.stop_gradient(jax.nn.sigmoid(lp - lq))
    p, q = jnp.exp(lp), jnp.exp(lq)
    fkl = jnp.where(p > 0, p * (lp - lq), 0.0)
    rkl = jnp.where(q > 0, q * (lq - lp), 0.0)
    return jnp.sum(w * fkl + (1.0 - w) * rkl, axis=-1)


def taid(s, t, *, lam):
    """TAID's cross-entropy per position (method.md §6): ``−Σ_v p^(λ) log q`` with
    ``p^(λ) = softmax((1−λ)·sg(z_s) + λ·z_t)``; ``lam`` a scalar (possibly traced)."""
    zs = s.astype(jnp.float32)
    target = jax.nn.softmax((1.0 - lam) * jax.lax.stop_gradient(zs) + lam * t.astype(jnp.float32), axis=-1)
    return -jnp.sum(target * jax.nn.log_softmax(zs, axis=-1), axis=-1)


def entropy(logits):
    """``H(softmax(logits))`` in nats per position."""
    lp = log_softmax(logits)
    return -jnp.sum(jnp.where(lp > -jnp.inf, jnp.exp(lp) * lp, 0.0), axis=-1)


def entropy_aware_fkl(s, t, *, tau=0.8, k=16):
    """EOPD's term per position (method.md §10): ``1[H(p) > τ] · Σ_{j∈TopK(p)} p̃_j (log p̃_j − log q_j)``,
    ``p̃`` the teacher renormalised over its top-k, ``log q`` the student's full-vocabulary
    log-softmax; the indicator and ``p̃`` carry no gradient."""
    lp = jax.lax.stop_gradient(log_softmax(t))
    top_lp, ids = jax.lax.top_k(lp, k)
    top_lp = top_lp - jax.nn.logsumexp(top_lp, axis=-1, keepdims=True)
    lq = jnp.take_along_axis(log_softmax(s), ids, axis=-1)
    fkl = jnp.sum(jnp.where(top_lp > -jnp.inf, jnp.exp(top_lp) * (top_lp - lq), 0.0), axis=-1)
    gate = jax.lax.stop_gradient(entropy(t) > tau)
    return jnp.where(gate, fkl, 0.0)


# ------------------------------------ against a sampled (RS-KD) teacher cache ---

def sampled_forward_kl(s, ids, counts):
    """RS-KD per position (method.md §7): ``Σ_i t̂_i (log t̂_i − log q(i))``, ``t̂ = counts / Σ counts``,
    ``log q`` the full-vocabulary log-softmax; entries with count 0 (padding) add nothing."""
    c = counts.astype(jnp.float32)
    that = c / jnp.maximum(jnp.sum(c, axis=-1, keepdims=True), 1.0)
    lq = jnp.take_along_axis(log_softmax(s), ids.astype(jnp.int32), axis=-1)
    log_that = jnp.log(jnp.where(that > 0, that, 1.0))
    return jnp.sum(jnp.where(that > 0, that * (log_that - lq), 0.0), axis=-1)


def sample_tokens(logits, key, n: int):
    """RS-KD's cache entry: ``n`` draws with replacement from ``softmax(logits)`` (temperature 1),
    duplicates merged: (ids ``[..., n]`` int32, counts ``[..., n]`` int32) where a repeated id keeps
    its count at its first draw and 0 at the others, so ``Σ counts = n`` and ``E[counts/n] = p``."""
    draws = jax.random.categorical(key, logits.astype(jnp.float32)[..., None, :], axis=-1,
                                   shape=(*logits.shape[:-1], n)).astype(jnp.int32)
    same = draws[..., :, None] == draws[..., None, :]                      # [..., n, n]
    first = ~jnp.any(jnp.tril(same, k=-1), axis=-1)                        # no equal draw before it
    counts = jnp.where(first, same.sum(-1), 0).astype(jnp.int32)
    return draws, counts
