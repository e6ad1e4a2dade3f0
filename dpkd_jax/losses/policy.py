"""MiniLLM's policy-gradient pieces, as the released code (LMOps minillm/) computes them
(method.md): per-token rewards, length-normalised discounted advantages whitened over the
valid tokens, and the PPO-clip loss with importance weights from mixture sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .core import masked_mean


def minillm_rewards(teacher_token_logps, old_student_token_logps, mask, *, scale=0.5, clip=100.0):
    """Per-token rewards ``r_t = clip((log p(y_t) − log q_old(y_t)) / scale, −clip, clip)``,
    0 where ``mask`` is 0. Inputs ``[B, T]`` (token log-probs of the sampled response under
    the teacher and under the student at sampling time); returns ``[B, T]`` float32."""
    r = (teacher_token_logps.astype(jnp.float32) - old_student_token_logps.astype(jnp.float32)) / scale
    return jnp.where(mask.astype(bool), jnp.clip(r, -clip, clip), 0.0)


def minillm_advantages(rewards, mask, *, gamma=0.95):
    """``A_t = whiten(Σ_{t'≥t} γ^{t'−t} r_{t'} / n_t)`` with ``n_t`` the valid tokens from
    ``t`` to the end inclusive; whitened ``(x − mean) / sqrt(var + 1e-8)`` with the mean and
    population variance over the valid tokens of the arrays given (a multi-host caller
    passes the global batch; the reference whitens over padding zeros too, we do not).
    ``[B, T] -> [B, T]`` float32, 0 where ``mask`` is 0."""
    m = mask.astype(jnp.float32)
    r = rewards.astype(jnp.float32) * m

    def back(carry, x):
        g = x + gamma * carry
        return g, g
    _, g = jax.lax.scan(back, jnp.zeros(r.shape[0], jnp.float32), r.T[::-1])
    returns = g[::-1].T
    n = jnp.cumsum(m[:, ::-1], axis=1)[:, ::-1]
    adv = returns / jnp.maximum(n, 1.0)
    count = jnp.maximum(m.sum(), 1.0)
    mean = (adv * m).sum() / count
    var = (jnp.square(adv - mean) * m).sum() / count
    return jnp.where(m > 0, (adv - mean) * jax.lax.rsqrt(var + 1e-8), 0.0)


def ppo_clip_loss(logps, old_logps, advantages, mask, *, importance_weights=None, clip_range=0.2):
    """Masked token mean of ``max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))`` with
    ``ρ = exp(logps − old_logps) · w`` (``w``: mixture-sampling importance weights, no
    gradient; 1 when None). ``clip_range=None``: no clipping, ``−A·ρ`` (Tinker's
    importance-sampling loss). ``[B, T]`` inputs; returns ``[B]``."""
    logps = logps.astype(jnp.float32)
    ratio = jnp.exp(logps - jax.lax.stop_gradient(old_logps.astype(jnp.float32)))
    if importance_weights is not None:
        ratio = ratio * jax.lax.stop_gradient(importance_weights.astype(jnp.float32))
    adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))
    if clip_range is None:
        return masked_mean(-adv * ratio, mask)
    per_token = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range))
    return masked_mean(per_token, mask)
