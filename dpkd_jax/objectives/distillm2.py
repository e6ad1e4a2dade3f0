"""DistiLLM-2 (arXiv 2503.07067): contrastive CALD, pulling toward the teacher on its
samples and pushing off the student's own mistakes on the student's samples."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from ..losses import tokenwise as tw
from .base import Needs, Objective, Response, check, check_mix, mixed


@dataclasses.dataclass(frozen=True)
class DistiLLM2(Objective):
    """``(1−β)·SKL_α(y_t) + β·SRKL_α(y_s)`` (method.md). ``beta_ramp``: the released code's
    schedule, β from 0.5 to 0.75 by mid-training. No CE or LM term by default (the paper
    has none); ``kd_ratio``/``lm_coef`` add them."""
    alpha: float = 0.1
    beta: float = 0.5
    beta_ramp: bool = False
    kd_ratio: float = 1.0
    lm_coef: float = 0.0
    needs: ClassVar = Needs(teacher_samples=True, student_samples=True)

    def validate(self):
        check("distillm2", "alpha", 0.0 <= self.alpha < 1.0, "must be in [0, 1)", self.alpha)
        check("distillm2", "beta", 0.0 <= self.beta <= 1.0, "must be in [0, 1]", self.beta)
        check_mix("distillm2", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        beta = self.beta
        if self.beta_ramp:  # b = 1 + 0.5·min(1, 2·step/steps) in the code's (2−b)·SKL + b·SRKL
            beta = (1.0 + 0.5 * jnp.minimum(1.0, 2.0 * ctx.progress)) / 2.0
        # CALD (losses.cald_loss) in chunks: SKL on the teacher's response, SRKL on the student's
        skl = ctx.divergence(tw.skew_kl, Response.TEACHER, alpha=self.alpha)
        srkl = ctx.divergence(tw.cald_skew_reverse_kl, Response.STUDENT, alpha=self.alpha)
        value = (1.0 - beta) * skl + beta * srkl
        return (mixed(ctx, "distillm2", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef),
                {"distillm2/beta": jnp.broadcast_to(jnp.asarray(beta, jnp.float32), value.shape)})
