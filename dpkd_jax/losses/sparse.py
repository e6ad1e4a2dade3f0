"""Token-level divergences against a sparse teacher: its top-k tokens with their true
log-probs plus one residual bucket for the rest of the mass (method.md, "Sparse teacher").

The student's distribution is reduced to the same k + 1 categories: its log-probs of the
k tokens, and ``log q_rest`` as a log-sum-exp over every other token (stable, no
``1 − Σ``). The teacher's ``p_rest = 1 − Σ_k p_v`` is clamped at 0 and, inside a log,
at 1e-30 (it is exactly 0 when k = V, where these equal the dense losses).
"""

from __future__ import annotations


from . import tokenwise as tw
from .core import masked_mean


def topk_logprobs(teacher_logits, k: int):
    """(ids ``[..., k]`` int32, log-probs ``[..., k]`` float32): the teacher's k most likely
    tokens with log-probs normalised over the full vocabulary, temperature 1 (the cache)."""
    return tw.topk(teacher_logits, k)


def _checked(per_token, student_logits, teacher_topk_ids, teacher_topk_logps, mask, **kw):
    if teacher_topk_ids.shape != teacher_topk_logps.shape or teacher_topk_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"teacher_topk_ids {teacher_topk_ids.shape} and teacher_topk_logps "
                         f"{teacher_topk_logps.shape} must be [B, T, k] with [B, T] = student_logits "
                         f"{student_logits.shape[:-1]}")
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask has shape {mask.shape}, expected {student_logits.shape[:-1]}")
    return masked_mean(per_token(student_logits, teacher_topk_ids, teacher_topk_logps, **kw), mask)


def sparse_forward_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask):
    """Token-mean ``KL(p‖q)`` over the k + 1 categories; ``[B, T, V]``, ``[B, T, k]`` x2,
    ``[B, T]`` -> ``[B]``."""
    return _checked(tw.sparse_forward_kl, student_logits, teacher_topk_ids, teacher_topk_logps, mask)


def sparse_reverse_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask):
    """Token-mean ``KL(q‖p)`` over the k + 1 categories; shapes as :func:`sparse_forward_kl`."""
    return _checked(tw.sparse_reverse_kl, student_logits, teacher_topk_ids, teacher_topk_logps, mask)


def sparse_generalized_jsd(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, beta=0.5):
    """Token-mean ``β KL(p‖M) + (1−β) KL(q‖M)``, ``M = βp + (1−β)q``, over the k + 1
    categories; β = 0 and 1 are forward and reverse KL exactly. Shapes as above."""
    return _checked(tw.sparse_generalized_jsd, student_logits, teacher_topk_ids, teacher_topk_logps, mask, beta=beta)


def sparse_skew_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, alpha=0.1):
    """Token-mean ``KL(p ‖ αp + (1−α)q)`` (DistiLLM) over the k + 1 categories; shapes as above."""
    return _checked(tw.sparse_skew_kl, student_logits, teacher_topk_ids, teacher_topk_logps, mask, alpha=alpha)


def sparse_skew_reverse_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, alpha=0.1):
    """Token-mean ``KL(q ‖ (1−α)p + αq)`` over the k + 1 categories; shapes as above."""
    return _checked(tw.sparse_skew_reverse_kl, student_logits, teacher_topk_ids, teacher_topk_logps, mask, alpha=alpha)


def sparse_adaptive_kl(student_logits, teacher_topk_ids, teacher_topk_logps, mask, *, mu=0.5):
    """Token-mean AKL over the k + 1 categories. The cache holds the teacher's tokens sorted by
    probability (``topk_logprobs``), so the head is its first tokens whose cumulative
    probability is ``≤ μ`` (the top-1 always) and the residual bucket is always tail; weights
    as :func:`adaptive_kl` (``q`` detached in ``e = |p − q|``). Shapes as above."""
    return _checked(tw.sparse_adaptive_kl, student_logits, teacher_topk_ids, teacher_topk_logps, mask, mu=mu)


# ------------------------------------------- a sampled (RS-KD) teacher cache ---

def sampled_tokens(teacher_logits, key, n: int = 12):
    """RS-KD's cache (arXiv 2503.16870): ``n`` draws with replacement from the teacher per
    position, duplicates merged: (ids ``[..., n]`` int32, counts ``[..., n]`` int32, Σ = n)."""
    return tw.sample_tokens(teacher_logits, key, n)


def sampled_forward_kl(student_logits, sampled_ids, sampled_counts, mask):
    """RS-KD's unbiased forward-KL estimate: token mean of ``Σ_i t̂_i (log t̂_i − log q(i))``,
    ``t̂ = counts / Σ counts`` (count-0 entries are padding), ``log q`` the student's
    full-vocabulary log-softmax. ``E[t̂] = p``, so the gradient is unbiased for FKL's.
    ``[B, T, V]``, ``[B, T, U]`` x2, ``[B, T]`` -> ``[B]``."""
    if sampled_ids.shape != sampled_counts.shape or sampled_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"sampled_ids {sampled_ids.shape} and sampled_counts {sampled_counts.shape} must be "
                         f"[B, T, U] with [B, T] = student_logits {student_logits.shape[:-1]}")
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask has shape {mask.shape}, expected {student_logits.shape[:-1]}")
    return masked_mean(tw.sampled_forward_kl(student_logits, sampled_ids, sampled_counts), mask)
