"""On-policy distillation's pieces (method.md §1–3, §10): the student samples, the teacher
grades each sampled token. Advantages and IW-OPD weights are ``[B, T]`` arrays without
gradient; the loss is then ``policy.ppo_clip_loss(logps, old_logps, w·A, mask, clip_range=…)``
(``clip_range=None`` for the unclipped importance-sampling form). EOPD's entropy-gated forward
KL is a token mean like the other divergences."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import tokenwise as tw
from .core import _check_logits, _same_shape, masked_mean


def opd_advantages(teacher_token_logps, old_student_token_logps, mask, *, reward_scale=1.0, ref_token_logps=None):
    """``A_t = sg(λ·log p(y_t) + (1 − λ)·log π_ref(y_t) − log q_old(y_t))``, λ = ``reward_scale``
    (1: plain OPD, π_ref unused; ExOPD's default 1.25), discount 0, 0 where ``mask`` is 0.
    Inputs ``[B, T]`` token log-probs of the sampled response; returns ``[B, T]`` float32.
    A teacher log-prob of −inf at a valid position gives −inf here: the step's non-finite
    guard then skips and counts it."""
    _same_shape(teacher_token_logps=teacher_token_logps, old_student_token_logps=old_student_token_logps,
                mask=mask, ref_token_logps=ref_token_logps)
    lam = float(reward_scale)
    target = teacher_token_logps.astype(jnp.float32)
    if lam != 1.0:
        if ref_token_logps is None:
            raise ValueError(f"reward_scale={lam} (≠ 1) needs ref_token_logps: the advantage is "
                             "λ·log p + (1 − λ)·log π_ref − log q_old")
        target = lam * target + (1.0 - lam) * ref_token_logps.astype(jnp.float32)
    adv = target - old_student_token_logps.astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.where(mask.astype(bool), adv, 0.0))


def iw_opd_weights(advantages, mask, *, gamma=0.5, eps=1e-8):
    """IW-OPD's position weights ``w_t = 1 + γ(1 − P_t / max(S, ε))`` with ``d = |A|·m``,
    ``S = Σ_s d_s`` and ``P_t = Σ_{s<t} d_s`` (exclusive prefix sum): ``w ∈ [1, 1+γ]``,
    non-increasing, ``1+γ`` everywhere when ``S = 0``; 0 where ``mask`` is 0; no gradient.
    ``[B, T] -> [B, T]`` float32."""
    _same_shape(advantages=advantages, mask=mask)
    m = mask.astype(jnp.float32)
    d = jnp.abs(advantages.astype(jnp.float32)) * m
    total = jnp.sum(d, axis=-1, keepdims=True)
    before = jnp.cumsum(d, axis=-1) - d
    w = 1.0 + gamma * (1.0 - before / jnp.maximum(total, eps))
    return jax.lax.stop_gradient(w * m)


def entropy_aware_fkl(student_logits, teacher_logits, mask, *, tau=0.8, k=16):
    """EOPD's term: token mean of ``1[H(p_t) > τ] · Σ_{j∈TopK(p_t)} p̃_t(j)(log p̃_t(j) − log q_t(j))``,
    ``p̃`` the teacher renormalised over its k most likely tokens, ``log q`` the student's
    full-vocabulary log-softmax, ``H`` the teacher's entropy in nats; the gate and ``p̃`` carry
    no gradient. Logits ``[B, T, V]``, mask ``[B, T]`` -> ``[B]``."""
    _check_logits(student_logits, teacher_logits, mask)
    return masked_mean(tw.entropy_aware_fkl(student_logits, teacher_logits, tau=tau, k=k), mask)
