"""Token-level objectives: SFT, word-level KD and the other teacher-forced divergences
(reverse KL, generalised JSD, AKL, DistiLLM's skew KLs), the reference code's token-level
DPKD, and on-policy GKD. All compare next-token distributions over one vocabulary."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

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


def _divergence(name, per_token, doc, sparse, kd_ratio=0.5, temperature=1.0, **extra):
    """A teacher-forced divergence on the gold response (a ``losses.tokenwise`` function, computed
    in chunks), mixed with CE as the reference code does. ``sparse``: its form against the
    teacher's top-k cache (``teacher.topk``), used when the batch carries the cache: the step
    then needs no teacher weights; None when the formula needs the teacher's whole distribution."""
    fields = [("kd_ratio", float, kd_ratio), ("lm_coef", float, 0.5), ("temperature", float, temperature)]
    fields += [(k, float, v) for k, v in extra.items()]

    def validate(self):
        check_mix(name, self.kd_ratio, self.lm_coef)
        check(name, "temperature", self.temperature > 0, "must be > 0", self.temperature)

    def loss(self, ctx):
        kw = {k: getattr(self, k) for k in extra}
        b = ctx.batch
        if b.teacher_sampled_ids is not None:  # only forward KL has an unbiased sampled form (RS-KD)
            value = ctx.sparse_divergence(tw.sampled_forward_kl, (b.teacher_sampled_ids, b.teacher_sampled_counts))
        elif b.teacher_topk_ids is not None:
            value = ctx.sparse_divergence(sparse, **kw)
        else:
            value = ctx.divergence(per_token, Response.GOLD, temperature=self.temperature, **kw)
        return mixed(ctx, name, value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {}
    return dataclasses.make_dataclass(name.upper(), fields, bases=(Objective,), frozen=True,
                                      namespace={"validate": validate, "loss": loss, "__doc__": doc,
                                                 "topk": sparse is not None,
                                                 "sampled_cache": per_token is tw.forward_kl,
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
# Their formulas need the teacher's whole distribution (every p_v enters a power or a weight), so no top-k form.
ABKD = _divergence("abkd", tw.abkd, "ABKD (arXiv 2505.04560): the alpha-beta divergence on the gold response.",
                   sparse=None, kd_ratio=1.0, alpha=0.2, beta=0.7)
ToDi = _divergence("todi", tw.todi, "ToDi (arXiv 2505.16297): token-wise FKL/RKL mix, w = sg(sigmoid(log p - log q)).",
                   sparse=None, temperature=2.0)


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


@dataclasses.dataclass(frozen=True)
class TAID(Objective):
    """TAID (arXiv 2501.16937): cross-entropy to ``softmax((1−λ)·sg(z_s) + λ·z_t)`` on the gold
    response, λ adapted once per step (method.md §6): ``δ = (J_prev − J)/(J_prev + 1e-15)``,
    ``m ← βm + (1−β)δ``, ``λ ← min(t_end, max(λ_lin, λ + α·σ(m)·(1 − λ)))`` with ``λ_lin`` the
    linear ramp from ``t_start`` to ``t_end`` over the run; the first step only records ``J``.
    λ lives in the train state (checkpointed, so a resumed run continues it exactly) and is
    logged as ``taid/lambda``. Needs the teacher's whole distribution: no top-k form."""
    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    adaptive: bool = True
    kd_ratio: float = 1.0
    lm_coef: float = 0.0

    def validate(self):
        check("taid", "t_start", 0.0 <= self.t_start <= self.t_end, "must be in [0, t_end]", self.t_start)
        check("taid", "t_end", self.t_end <= 1.0, "must be <= 1", self.t_end)
        check("taid", "beta", 0.0 <= self.beta < 1.0, "must be in [0, 1)", self.beta)
        check("taid", "alpha", self.alpha >= 0, "must be >= 0", self.alpha)
        check_mix("taid", self.kd_ratio, self.lm_coef)

    def init_state(self):
        return {"lam": jnp.float32(self.t_start), "prev": jnp.float32(0.0), "momentum": jnp.float32(0.0),
                "seen": jnp.bool_(False)}

    def loss(self, ctx):
        value = ctx.divergence(tw.taid, Response.GOLD, lam=ctx.state["lam"])
        return mixed(ctx, "taid", value, kd_ratio=self.kd_ratio, lm_coef=self.lm_coef), {"taid/lambda": ctx.state["lam"]}

    def next_state(self, state, metrics, progress):
        j = jax.lax.stop_gradient(metrics["loss/taid"])
        linear = self.t_start + (self.t_end - self.t_start) * progress
        delta = (state["prev"] - j) / (state["prev"] + 1e-15)
        momentum = self.beta * state["momentum"] + (1.0 - self.beta) * delta
        step = self.alpha * jax.nn.sigmoid(momentum) * (1.0 - state["lam"])
        lam = jnp.minimum(self.t_end, jnp.maximum(linear, state["lam"] + step)) if self.adaptive else \
            jnp.minimum(self.t_end, linear)
        seen = state["seen"]
        new = {"lam": jnp.where(seen, lam, state["lam"]).astype(jnp.float32), "prev": j.astype(jnp.float32),
               "momentum": jnp.where(seen, momentum, 0.0).astype(jnp.float32), "seen": jnp.bool_(True)}
        return new, {"taid/delta": jnp.where(seen, step, 0.0)}
