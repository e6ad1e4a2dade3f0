"""Newer token-level divergences (method.md §4–6): ABKD's α-β divergence, ToDi's
token-wise FKL/RKL mix and TAID's interpolated target. Logits ``[B, T, V]`` (student,
teacher; the teacher gets no gradient), mask ``[B, T]`` -> per-example token means ``[B]``."""

from __future__ import annotations

from . import tokenwise as tw
from .core import _check_logits, masked_mean


def abkd_divergence(student_logits, teacher_logits, mask, *, alpha=0.2, beta=0.7, temperature=1.0):
    """Token-mean α-β divergence (ABKD, arXiv 2505.04560), ``p``/``q`` at temperature τ:
    ``D = −1/(αβ) Σ_v [p^α q^β − α/(α+β) p^{α+β} − β/(α+β) q^{α+β}]``, with the continuous
    (squared-prefactor) forms at α = 0, β = 0, α = −β and α = β = 0 (:func:`tokenwise.abkd`).
    (α, β) = (1, 0) is ``KL(p‖q)``, (0, 1) is ``KL(q‖p)``."""
    _check_logits(student_logits, teacher_logits, mask)
    return masked_mean(tw.abkd(student_logits, teacher_logits, alpha=alpha, beta=beta, temperature=temperature),
                       mask)


def todi_divergence(student_logits, teacher_logits, mask, *, temperature=1.0):
    """Token-mean ToDi (arXiv 2505.16297): ``Σ_v [w p log(p/q) + (1 − w) q log(q/p)]`` with
    ``w = sg(σ(log p − log q))``. Value ``FKL + RKL``; gradient the w-weighted mix."""
    _check_logits(student_logits, teacher_logits, mask)
    return masked_mean(tw.todi(student_logits, teacher_logits, temperature=temperature), mask)


def taid_loss(student_logits, teacher_logits, mask, *, lam):
    """Token-mean TAID cross-entropy (arXiv 2501.16937): ``−Σ_v p^(λ) log q`` with
    ``p^(λ) = softmax((1−λ)·sg(z_s) + λ·z_t)``. ``lam``: a scalar in [0, 1], possibly traced
    (the adaptive schedule lives in the objective). λ = 0: zero gradient; λ = 1: CE to p."""
    _check_logits(student_logits, teacher_logits, mask)
    return masked_mean(tw.taid(student_logits, teacher_logits, lam=lam), mask)
