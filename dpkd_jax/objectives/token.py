"""Token-level objectives: SFT, word-level KD and the other teacher-forced divergences
(reverse KL, generalised JSD, AKL, DistiLLM's skew KLs), the reference code's token-level
DPKD, and on-policy GKD. All compare next-token distributions over one vocabulary."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..losses import tokenwise as tw
from .base import Needs, Objective, Response, check, check_mix, mixed


@dataclasses.dataclass(frozen=True)
class SFT(Objective):
    """Cross-entropy on the gold response (+ ``lm_coef`` x the pre-training LM loss)."""
    lm_coef: float = 0.5
    needs: ClassVar = Needs(teacher_logits=False)

    def validate(self):
        check_mix("sft", 1.0, self.lm_coef)

    def loss(self, ctx):
        return mixed(ctx, "sft", ctx.ce(Response.GOLD), kd_ratio=1.0, lm_coef=self.lm_coef), {}


def _divergence(name, per_token, doc, sparse, **extra):
    """A teacher-forced divergence on the gold response (a ``losses.tokenwise`` function, computed
    in chunks), mixed with CE as the reference code does. ``sparse``: its form against the
    teacher's top-k cache (``teacher.topk``), used when the batch carries the cache: the step
    then needs no teacher weights."""
    fields = [("kd_ratio", float, 0.5), ("lm_coef", float, 0.5), ("temperature", float, 1.0)]
    fields += [(k, float, v) for k, v in extra.items()]

    def validate(self):
        check_mix(name, self.kd_ratio, self.lm_coef)
        check(name, "temperature", self.temperature > 0, "must be > 0", self.temperature)

    def loss(self, ctx):
        kw = {k: getattr(self, k) for k in extra}
        if ctx.batch.teacher_topk_ids is not None:
            value = ctx.sparse_divergence(sparse, **kw)
        else:
            value = ctx.divergence(per_token, Response.GOLD, temperature=self.temperature, **kw)
        return mixed(ctx, name, value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {}
    return dataclasses.make_dataclass(name.upper(), fields, bases=(Objective,), frozen=True,
                                      namespace={"validate": validate, "loss": loss, "__doc__": doc, "topk": True,
                                                 "loss_temperature": property(lambda self: self.temperature)})


KD = _divergence("kd", tw.forward_kl, "Word-level KD (Hinton): forward KL on the gold response.",
                 sparse=tw.sparse_forward_kl)
RKL = _divergence("rkl", tw.reverse_kl, "Token-level reverse KL on the gold response.",
                  sparse=tw.sparse_reverse_kl)
JSD = _divergence("jsd", tw.generalized_jsd, "Generalised JSD(beta) on the gold response.",
                  sparse=tw.sparse_generalized_jsd, beta=0.5)
AKL = _divergence("akl", tw.adaptive_kl, "Adaptive KL (head/tail mix of forward and reverse KL).",
                  sparse=tw.sparse_adaptive_kl, mu=0.5)
SkewKL = _divergence("skew_kl", tw.skew_kl, "DistiLLM's skew KL(p || a p + (1-a) q).",
                     sparse=tw.sparse_skew_kl, alpha=0.1)
SkewRKL = _divergence("skew_rkl", tw.skew_reverse_kl, "DistiLLM's skew reverse KL.",
                      sparse=tw.sparse_skew_reverse_kl, alpha=0.1)


@dataclasses.dataclass(frozen=True)
class DPKDToken(Objective):
    """The reference code's token-level DPKD (``--seqKD-DPO``): teacher argmax chosen,
    student argmax rejected, per position, on the gold response."""
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference_free: bool = False
    kd_ratio: float = 0.5
    lm_coef: float = 0.5
    needs: ClassVar = Needs()

    def validate(self):
        check("dpkd_token", "beta", self.beta > 0, "must be > 0", self.beta)
        check_mix("dpkd_token", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        value = ctx.divergence(tw.dpkd_token, Response.GOLD, beta=self.beta, label_smoothing=self.label_smoothing,
                               reference_free=self.reference_free)
        return mixed(ctx, "dpkd_token", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {}


@dataclasses.dataclass(frozen=True)
class GKD(Objective):
    """On-policy GKD (arXiv 2306.13649, as TRL's): with probability ``lmbda`` a step trains on
    the student's own samples (at ``temperature``), otherwise on the gold responses (or the
    teacher's samples when ``seq_kd``); the loss is JSD(beta) per token, temperature 1.
    beta = 0 is forward KL(p||q), beta = 1 reverse KL(q||p) (TRL's convention; EasyDeL's
    docstring has them the other way). TRL pools tokens over the batch; we keep per-example
    token means."""
    lmbda: float = 0.5
    beta: float = 0.5
    seq_kd: bool = False
    temperature: float = 0.9
    kd_ratio: float = 1.0
    lm_coef: float = 0.0

    @property
    def needs(self):
        if self.lmbda == 0.0:  # off-policy only: no student samples to draw
            return Needs(teacher_samples=self.seq_kd)
        return Needs(teacher_samples=self.seq_kd, student_samples=True, on_policy=self.lmbda,
                     fallback=Response.TEACHER if self.seq_kd else Response.GOLD,
                     student_temperature=self.temperature)

    @property
    def topk(self):
        """The top-k cache holds the teacher on the gold responses: off-policy GKD on gold only."""
        return self.lmbda == 0.0 and not self.seq_kd

    def validate(self):
        check("gkd", "lmbda", 0.0 <= self.lmbda <= 1.0, "must be in [0, 1]", self.lmbda)
        check("gkd", "beta", 0.0 <= self.beta <= 1.0, "must be in [0, 1]", self.beta)
        check("gkd", "temperature", self.temperature > 0, "must be > 0", self.temperature)
        check_mix("gkd", self.kd_ratio, self.lm_coef)

    def loss(self, ctx):
        r = Response.STUDENT if self.lmbda > 0 else Response.TEACHER if self.seq_kd else Response.GOLD
        if ctx.batch.teacher_topk_ids is not None:
            value = ctx.sparse_divergence(tw.sparse_generalized_jsd, beta=self.beta)
        else:
            value = ctx.divergence(tw.generalized_jsd, r, beta=self.beta)
        return mixed(ctx, "gkd", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {}
