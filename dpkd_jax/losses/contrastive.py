"""DistiLLM-2's contrastive loss (CALD, arXiv 2503.07067), as method.md defines it."""

from __future__ import annotations

from . import tokenwise as tw
from .core import _check_logits, masked_mean


def cald_loss(student_logits_t, teacher_logits_t, mask_t, student_logits_s, teacher_logits_s, mask_s, *,
              alpha=0.1, beta=0.5):
    """``(1−β)·tokenmean SKL_α(y_t) + β·tokenmean SRKL_α(y_s)`` per example ``[B]``:

    * ``SKL_α = KL(p ‖ α·p + (1−α)·q)`` on the teacher's response (gradient through q in
      the mixture);
    * ``SRKL_α = KL(q ‖ (1−α)·p + α·sg(q))`` on the student's own response, the q inside
      the mixture detached (stop-gradient), exactly as method.md says.

    Logits ``[B, T, V]`` aligned with their responses; masks ``[B, T]`` (y_t and y_s may
    have different lengths). Temperature 1, float32."""
    _check_logits(student_logits_t, teacher_logits_t, mask_t)
    _check_logits(student_logits_s, teacher_logits_s, mask_s)
    skl = masked_mean(tw.skew_kl(student_logits_t, teacher_logits_t, alpha=alpha), mask_t)
    srkl = masked_mean(tw.cald_skew_reverse_kl(student_logits_s, teacher_logits_s, alpha=alpha), mask_s)
    return (1.0 - beta) * skl + beta * srkl
