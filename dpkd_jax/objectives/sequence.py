"""Sequence-level objectives on sampled responses: SeqKD, DPKD (all preference forms),
PLaD and daDPO (method.md). They need each model's log-probability of whole responses."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from .. import losses
from ..losses import DPKD_FORMS
from ..losses import tokenwise as tw
from .base import Model, Needs, Objective, Response, check, check_mix, mixed

_PAIR = Needs(teacher_samples=True, student_samples=True)


@dataclasses.dataclass(frozen=True)
class SeqKD(Objective):
    """Cross-entropy on the teacher's sampled responses, mixed with CE on gold."""
    kd_ratio: float = 0.5
    lm_coef: float = 0.5
    needs: ClassVar = Needs(teacher_samples=True, teacher_logits=False)
    cross_tokenizer: ClassVar = True  # needs only the student's log-prob of y_t

    def validate(self):
        check_mix("seqkd", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        return mixed(ctx, "seqkd", ctx.ce(Response.TEACHER), kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {}


def preference_metrics(beta, normalize, sc, sr, tc, tr, nc, nr):
    """Implicit rewards of y_t and y_s; ``nc``/``nr``: (student, teacher) token counts."""
    r_t = losses.implicit_reward(sc, tc, nc[0] if normalize else None, beta=beta, teacher_lengths=nc[1])
    r_s = losses.implicit_reward(sr, tr, nr[0] if normalize else None, beta=beta, teacher_lengths=nr[1])
    return {"reward/teacher_response": r_t, "reward/student_response": r_s,
            "reward/margin": losses.reward_margin(r_t, r_s), "reward/accuracy": losses.preference_accuracy(r_t, r_s)}


@dataclasses.dataclass(frozen=True)
class DPKD(Objective):
    """DPKD (arXiv 2406.19774, Eq. 9): the teacher's sample preferred over the student's,
    the implicit reward the student/teacher log-ratio; preference forms of Table 2."""
    beta: float = 0.1
    form: str = "sigmoid"
    length_normalize: bool = True
    label_smoothing: float = 0.0
    reference_free: bool = False
    simpo_gamma: float = 0.5
    dpop_lambda: float = 50.0
    cpo_alpha: float = 1.0
    kd_ratio: float = 0.5
    lm_coef: float = 0.5
    needs: ClassVar = _PAIR
    cross_tokenizer: ClassVar = True  # each model's log-prob of whole texts, in its own tokens

    def validate(self):
        check("dpkd", "beta", self.beta > 0, "must be > 0", self.beta)
        check("dpkd", "form", self.form in DPKD_FORMS, f"must be one of {DPKD_FORMS}", self.form)
        check("dpkd", "label_smoothing", 0.0 <= self.label_smoothing < 0.5, "must be in [0, 0.5)",
              self.label_smoothing)
        check_mix("dpkd", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        (sc, nc), (sr, nr) = ctx.logps(Model.STUDENT, Response.TEACHER), ctx.logps(Model.STUDENT, Response.STUDENT)
        # The teacher's own token counts: they differ from the student's across tokenizers.
        (tc, tnc), (tr, tnr) = ctx.logps(Model.TEACHER, Response.TEACHER), ctx.logps(Model.TEACHER, Response.STUDENT)
        value = losses.dpkd_loss(sc, sr, tc, tr, nc, nr, beta=self.beta, form=self.form,
                                 length_normalize=self.length_normalize, label_smoothing=self.label_smoothing,
                                 reference_free=self.reference_free, simpo_gamma=self.simpo_gamma,
                                 dpop_lambda=self.dpop_lambda, cpo_alpha=self.cpo_alpha,
                                 teacher_chosen_lengths=tnc, teacher_rejected_lengths=tnr)
        metrics = preference_metrics(self.beta, self.length_normalize, sc, sr, tc, tr, (nc, tnc), (nr, tnr))
        return mixed(ctx, "dpkd", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), metrics


@dataclasses.dataclass(frozen=True)
class PLaD(Objective):
    """PLaD (arXiv 2406.02886): margin ranking of the student's length-normalised
    log-likelihoods, teacher sample over student sample; no teacher logits."""
    margin: float = 1.0
    smooth: bool = False
    alpha: float = 0.0          # + alpha x CE(y_t)
    kd_ratio: float = 0.5
    lm_coef: float = 0.5
    needs: ClassVar = Needs(teacher_samples=True, student_samples=True, teacher_logits=False)
    cross_tokenizer: ClassVar = True

    def validate(self):
        check("plad", "alpha", self.alpha >= 0, "must be >= 0", self.alpha)
        check_mix("plad", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        (sc, nc), (sr, nr) = ctx.logps(Model.STUDENT, Response.TEACHER), ctx.logps(Model.STUDENT, Response.STUDENT)
        value = losses.plad_loss(sc, sr, nc, nr, margin=self.margin, smooth=self.smooth)
        if self.alpha:
            value = value + self.alpha * ctx.ce(Response.TEACHER)
        return mixed(ctx, "plad", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {}


@dataclasses.dataclass(frozen=True)
class DaDPO(Objective):
    """daDPO (arXiv 2506.15717): DPO on teacher-preferred pairs against the frozen initial
    student, plus alpha x KL(p || q) on the teacher's response."""
    beta: float = 0.1
    alpha: float = 1.0
    temperature: float = 1.0
    kd_ratio: float = 0.5
    lm_coef: float = 0.5
    needs: ClassVar = Needs(teacher_samples=True, student_samples=True, reference=True)

    @property
    def cross_tokenizer(self):
        """The preference term works across tokenizers; the KL term (alpha) needs one vocabulary."""
        return self.alpha == 0.0

    def validate(self):
        check("dadpo", "beta", self.beta > 0, "must be > 0", self.beta)
        check("dadpo", "alpha", self.alpha >= 0, "must be >= 0", self.alpha)
        check_mix("dadpo", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        (sc, _), (sr, _) = ctx.logps(Model.STUDENT, Response.TEACHER), ctx.logps(Model.STUDENT, Response.STUDENT)
        (rc, _), (rr, _) = ctx.logps(Model.REFERENCE, Response.TEACHER), ctx.logps(Model.REFERENCE, Response.STUDENT)
        if self.alpha:
            kl = ctx.divergence(tw.forward_kl, Response.TEACHER, temperature=self.temperature)
        else:  # the preference term alone: no teacher logits (and it works across tokenizers)
            kl = jnp.zeros_like(sc)
        value = losses.dadpo_loss(sc, sr, rc, rr, kl, beta=self.beta, alpha=self.alpha)
        return mixed(ctx, "dadpo", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {"dadpo/distribution_kl": kl}
