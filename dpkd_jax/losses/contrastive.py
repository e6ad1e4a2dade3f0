"""DistiLLM-2's contrastive loss (CALD, arXiv 2503.07067), as method.md defines it."""

from __future__ import annotations

import jax

from .core import _kl, _log_mix, _log_probs, masked_mean


def cald_loss(student_logits_t, teacher_logits_t, mask_t, student_logits_s, teacher_logits_s, mask_s, *,
              alpha=0.1, beta=0.5):
    """``(1−β)·tokenmean SKL_α(y_t) + β·tokenmean SRKL_α(y_s)`` per example ``[B]``:

    * ``SKL_α = KL(p ‖ α·p + (1−α)·q)`` on the teacher's response (gradient through q in
      the mixture);
    * ``SRKL_α = KL(q ‖ (1−α)·p + α·sg(q))`` on the student's own response, the q inside
      the mixture detached (stop-gradient), exactly as method.md says.

    Logits ``[B, T, V]`` aligned with their responses; masks ``[B, T]`` (y_t and y_s may
    have different lengths). Temperature 1, float32."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    logq_t, logp_t = _log_probs(student_logits_t, teacher_logits_t, mask_t, 1.0)
    skl = masked_mean(_kl(logp_t, _log_mix(alpha, logp_t, logq_t)), mask_t)
    logq_s, logp_s = _log_probs(student_logits_s, teacher_logits_s, mask_s, 1.0)
    srkl = masked_mean(_kl(logq_s, _log_mix(1.0 - alpha, logp_s, jax.lax.stop_gradient(logq_s))), mask_s)
    return (1.0 - beta) * skl + beta * srkl
