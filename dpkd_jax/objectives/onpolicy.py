"""On-policy distillation (method.md §1–3, §10): the student samples ``y ~ q_old`` and the
teacher grades every sampled token. The sampled-token form needs only the teacher's
log-prob of each drawn token (one chunked gather per chunk, no teacher distribution kept):
``A_t = λ·log p + (1−λ)·log π_ref − log q_old`` (discount 0), optionally IW-OPD's position
weights, and the importance-sampling policy gradient ``−ρ_t·w_t·A_t`` (Tinker; clipped PPO
when ``clip_range > 0``). With one update per rollout ``ρ ≡ 1`` and the gradient is
``−w_t A_t ∇log q(y_t)``, an unbiased single-sample estimate of reverse KL's."""

from __future__ import annotations

import dataclasses

import jax

from .. import losses
from ..losses import tokenwise as tw
from .base import Model, Needs, Objective, Response, check, check_mix, mixed


@dataclasses.dataclass(frozen=True)
class OPD(Objective):
    """``opd``: sampled-token on-policy distillation and its 2026 refinements."""
    temperature: float = 1.0       # the student's sampling temperature (Tinker: 1, no truncation)
    reward_scale: float = 1.0      # ExOPD's λ (1.25 in its scripts); ≠ 1 reads the frozen initial student as π_ref
    iw_gamma: float = 0.0          # IW-OPD's γ (0.5 in its paper); 0 = plain OPD
    clip_range: float = 0.0        # PPO clip ε; 0 = the unclipped importance-sampling loss (Tinker)
    entropy_fkl: float = 0.0       # EOPD's α: + α·1[H(p) > τ]·FKL^(k) at uncertain teacher positions
    entropy_tau: float = 0.8
    entropy_k: int = 16
    exact: bool = False            # the full-vocabulary reverse KL per position on the same samples
    kd_ratio: float = 1.0
    lm_coef: float = 0.0

    @property
    def needs(self):
        return Needs(student_samples=True, reference=self.reward_scale != 1.0, student_temperature=self.temperature)

    def validate(self):
        check("opd", "temperature", self.temperature > 0, "must be > 0", self.temperature)
        check("opd", "iw_gamma", self.iw_gamma >= 0, "must be >= 0", self.iw_gamma)
        check("opd", "clip_range", 0.0 <= self.clip_range < 1.0, "must be in [0, 1)", self.clip_range)
        check("opd", "entropy_fkl", self.entropy_fkl >= 0, "must be >= 0", self.entropy_fkl)
        check("opd", "entropy_k", self.entropy_k >= 1, "must be >= 1", self.entropy_k)
        check("opd", "exact", not (self.exact and (self.iw_gamma or self.reward_scale != 1.0)),
              "the exact reverse KL has no per-token advantage to weight or rescale; set iw_gamma=0 and "
              "reward_scale=1", self.exact)
        check_mix("opd", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        _, mask = ctx.response(Response.STUDENT)
        if self.exact:
            value = ctx.divergence(tw.reverse_kl, Response.STUDENT)
            metrics = {}
        else:
            value, metrics = self._sampled_token(ctx, mask)
        terms = mixed(ctx, "opd", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef)
        if self.entropy_fkl > 0:
            terms["entropy_fkl"] = (self.entropy_fkl, ctx.divergence(tw.entropy_aware_fkl, Response.STUDENT,
                                                                     tau=self.entropy_tau, k=self.entropy_k))
        return terms, metrics

    def _sampled_token(self, ctx, mask):
        logps = ctx.token_logps(Model.STUDENT, Response.STUDENT)
        old = jax.lax.stop_gradient(logps)  # q_old: the params that drew y_s, this step's
        teacher = ctx.token_logps(Model.TEACHER, Response.STUDENT)
        ref = ctx.token_logps(Model.REFERENCE, Response.STUDENT) if self.reward_scale != 1.0 else None
        adv = losses.opd_advantages(teacher, old, mask, reward_scale=self.reward_scale, ref_token_logps=ref)
        weights = losses.iw_opd_weights(adv, mask, gamma=self.iw_gamma) if self.iw_gamma else mask
        value = losses.ppo_clip_loss(logps, old, weights * adv, mask, clip_range=self.clip_range or None)
        metrics = {"opd/teacher_kl": losses.masked_mean(old - teacher, mask),
                   "opd/advantage": losses.masked_mean(weights * adv, mask)}
        if self.iw_gamma:
            metrics["opd/mean_weight"] = losses.masked_mean(weights, mask)
        return value, metrics
