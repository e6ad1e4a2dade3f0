"""Distillation methods: each a small function ``(ctx, c) -> (loss [B], metrics)``.

``ctx`` gives the step's arrays and memoised model calls; ``c`` is the ``loss``
config. The train step mixes the method loss ``L`` as method.md says:
``(1 − kd_ratio)·CE(gold) + kd_ratio·L + lm_coef·CE(pre-training)``
(SFT is ``CE(gold) + lm_coef·CE(pre-training)``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import losses, sampling


class Context:
    """What a method may look at. Model calls are memoised so a method and the
    shared CE/metrics never run the same forward twice in one trace."""

    def __init__(self, student, params, teacher, teacher_params, batch, samples, ref_params=None):
        self.student, self.params = student, params
        self.teacher, self.teacher_params = teacher, teacher_params
        self.ref_params = ref_params
        self.batch, self.samples = batch, samples
        self._memo = {}

    def response(self, which):
        """(ids, mask) of 'gold', 'teacher' (y_t) or 'student' (y_s)."""
        if which == "gold":
            return self.batch["response_ids"], self.batch["response_mask"]
        return self.samples[which]

    def logits(self, model, which):
        key = ("logits", model, which)
        if key not in self._memo:
            cfg, params = {"student": (self.student, self.params),
                           "teacher": (self.teacher, self.teacher_params),
                           "reference": (self.student, self.ref_params)}[model]
            # y_t and y_s have the same shape: score both in one forward of 2B rows (bigger
            # matmuls, one pass over the weights) and memoise each half.
            whiches = [w for w in ("teacher", "student") if w in self.samples] if which in self.samples else [which]
            if len(whiches) == 2 and self.samples["teacher"][0].shape != self.samples["student"][0].shape:
                whiches = [which]
            ids, mask = (jnp.concatenate(parts, axis=0) for parts in zip(*(self.response(w) for w in whiches)))
            k = len(whiches)
            prompt_ids = jnp.concatenate([self.batch["prompt_ids"]] * k, axis=0)
            prompt_mask = jnp.concatenate([self.batch["prompt_mask"]] * k, axis=0)
            out = sampling.response_logits(cfg, params, prompt_ids, prompt_mask, ids, mask)
            out = out if model == "student" else jax.lax.stop_gradient(out)
            for w, part in zip(whiches, jnp.split(out, k, axis=0)):
                self._memo[("logits", model, w)] = part
        return self._memo[key]

    def logps(self, model, which):
        """(summed log-prob [B], length [B]) of a response under a model."""
        ids, mask = self.response(which)
        return losses.sequence_logprobs(self.logits(model, which), ids, mask)

    def ce(self, which):
        ids, mask = self.response(which)
        return losses.cross_entropy(self.logits("student", which), ids, mask)


@dataclasses.dataclass(frozen=True)
class Method:
    fn: callable
    teacher_samples: bool = False
    student_samples: bool = False
    needs_reference: bool = False


def _sft(ctx, c):
    return ctx.ce("gold"), {}


def _kd(ctx, c):
    return losses.forward_kl(ctx.logits("student", "gold"), ctx.logits("teacher", "gold"),
                             ctx.batch["response_mask"], temperature=c.temperature), {}


def _seqkd(ctx, c):
    return ctx.ce("teacher"), {}


def _preference_metrics(c, sc, sr, tc, tr, nc, nr):
    r_t = losses.implicit_reward(sc, tc, nc if c.length_normalize else None, beta=c.beta)
    r_s = losses.implicit_reward(sr, tr, nr if c.length_normalize else None, beta=c.beta)
    return {"reward/teacher_response": r_t, "reward/student_response": r_s,
            "reward/margin": losses.reward_margin(r_t, r_s), "reward/accuracy": losses.preference_accuracy(r_t, r_s)}


def _dpkd(ctx, c):
    (sc, nc), (sr, nr) = ctx.logps("student", "teacher"), ctx.logps("student", "student")
    (tc, _), (tr, _) = ctx.logps("teacher", "teacher"), ctx.logps("teacher", "student")
    loss = losses.dpkd_loss(sc, sr, tc, tr, nc, nr, beta=c.beta, form=c.form, length_normalize=c.length_normalize,
                            label_smoothing=c.label_smoothing, reference_free=c.reference_free,
                            simpo_gamma=c.simpo_gamma, dpop_lambda=c.dpop_lambda, cpo_alpha=c.cpo_alpha)
    return loss, _preference_metrics(c, sc, sr, tc, tr, nc, nr)


def _dpkd_token(ctx, c):
    return losses.dpkd_token_loss(ctx.logits("student", "gold"), ctx.logits("teacher", "gold"),
                                  ctx.batch["response_mask"], beta=c.beta, label_smoothing=c.label_smoothing,
                                  reference_free=c.reference_free), {}


def _divergence(fn, **kw_from_config):
    def method(ctx, c):
        kw = {k: getattr(c, v) for k, v in kw_from_config.items()}
        return fn(ctx.logits("student", "gold"), ctx.logits("teacher", "gold"), ctx.batch["response_mask"],
                  temperature=c.temperature, **kw), {}
    return method


def _plad(ctx, c):
    (sc, nc), (sr, nr) = ctx.logps("student", "teacher"), ctx.logps("student", "student")
    loss = losses.plad_loss(sc, sr, nc, nr, margin=c.plad_margin, smooth=c.plad_smooth)
    return loss + c.plad_alpha * ctx.ce("teacher"), {}


def _dadpo(ctx, c):
    (sc, nc), (sr, nr) = ctx.logps("student", "teacher"), ctx.logps("student", "student")
    (rc, _), (rr, _) = ctx.logps("reference", "teacher"), ctx.logps("reference", "student")
    kl = losses.forward_kl(ctx.logits("student", "teacher"), ctx.logits("teacher", "teacher"),
                           ctx.samples["teacher"][1], temperature=c.temperature)
    loss = losses.dadpo_loss(sc, sr, rc, rr, kl, beta=c.beta, alpha=c.dadpo_alpha)
    return loss, {"dadpo/distribution_kl": kl}


METHODS = {
    "sft": Method(_sft),
    "kd": Method(_kd),
    "seqkd": Method(_seqkd, teacher_samples=True),
    "dpkd": Method(_dpkd, teacher_samples=True, student_samples=True),
    "dpkd_token": Method(_dpkd_token),
    "rkl": Method(_divergence(losses.reverse_kl)),
    "jsd": Method(_divergence(losses.generalized_jsd, beta="jsd_beta")),
    "akl": Method(_divergence(losses.adaptive_kl, mu="akl_mu")),
    "skew_kl": Method(_divergence(losses.skew_kl, alpha="skew_alpha")),
    "skew_rkl": Method(_divergence(losses.skew_reverse_kl, alpha="skew_alpha")),
    "plad": Method(_plad, teacher_samples=True, student_samples=True),
    "dadpo": Method(_dadpo, teacher_samples=True, student_samples=True, needs_reference=True),
}


def first_token_kls(student, params, teacher, teacher_params, prompt_ids, prompt_mask):
    """Forward and reverse KL between teacher and student on the first response token ``[B]``."""
    P = prompt_ids.shape[1]
    pos = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    s, _ = student(params, prompt_ids, pos, prompt_mask, logits_range=(P - 1, P))
    t, _ = teacher(teacher_params, prompt_ids, pos, prompt_mask, logits_range=(P - 1, P))
    s, t = jax.lax.stop_gradient(s), jax.lax.stop_gradient(t)
    ones = jnp.ones(s.shape[:2])
    return losses.forward_kl(s, t, ones), losses.reverse_kl(s, t, ones)
