"""What an objective sees and declares: the two enums naming models and responses,
``Needs`` (which samples and models a step must provide), and ``Context`` (the step's
arrays with memoised model calls), plus the standard composition of terms.

An objective is a small frozen dataclass: its fields are its typed hyperparameters
(``config.loss.<name>.<field>``), ``needs`` says what it requires, ``validate()`` names a
bad field, and ``loss(ctx)`` returns its terms ``{name: (weight, per-example [B])}``
and metrics. The step sums ``weight * mean(term)``; nothing about a method lives there.
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp

from .. import losses, sampling
from ..errors import InputError


class Model(enum.Enum):
    STUDENT = "student"
    TEACHER = "teacher"
    REFERENCE = "reference"     # the frozen initial student (daDPO)


class Response(enum.Enum):
    GOLD = "gold"               # the dataset's response
    TEACHER = "teacher"         # y_t: sampled from the teacher (online, or the offline cache)
    STUDENT = "student"         # y_s: sampled from the current student (or its on-policy mix, GKD)


@dataclasses.dataclass(frozen=True)
class Needs:
    teacher_samples: bool = False
    student_samples: bool = False
    reference: bool = False
    teacher_logits: bool = True     # token-level objectives read the teacher's distribution
    on_policy: float = 1.0          # P(y_s is the student's own sample) per step; else ``fallback``
    fallback: Response = Response.GOLD
    student_temperature: float = 0.0  # sampling temperature of y_s (0: gen.temperature)


class Context:
    """The step's arrays and memoised model calls: a method and the metrics never run
    the same forward twice in one trace. y_t and y_s of one shape are scored by a model
    in one forward of 2B rows.

    ``views``: a model with its own tokenizer (cross-tokenizer runs) maps to its own prompt
    ``(ids, mask)`` and its own tokenization of each response ``{Response: (ids, mask)}``;
    every other model reads the batch's prompts and ``samples``."""

    def __init__(self, models: dict, batch: dict, samples: dict, progress=0.0, views=None):
        self.models, self.batch, self.samples = models, batch, samples
        self.progress = progress        # step / total steps (a traced scalar)
        self.views = views or {}
        self._memo = {}

    def response(self, r: Response, m: Model = Model.STUDENT):
        """(ids, mask) of a response, in model ``m``'s tokenization."""
        if m in self.views:
            return self.views[m][1][r]
        if r is Response.GOLD:
            return self.batch["response_ids"], self.batch["response_mask"]
        return self.samples[r]

    def prompt(self, m: Model):
        return self.views[m][0] if m in self.views else (self.batch["prompt_ids"], self.batch["prompt_mask"])

    def logits(self, m: Model, r: Response):
        key = (m, r)
        if key not in self._memo:
            cfg, params = self.models[m]
            pair = [x for x in (Response.TEACHER, Response.STUDENT) if x in self.samples]
            same = len(pair) == 2 and self.response(pair[0], m)[0].shape == self.response(pair[1], m)[0].shape
            rs = pair if r in pair and same else [r]
            ids, mask = (jnp.concatenate(p, axis=0) for p in zip(*(self.response(x, m) for x in rs)))
            k = len(rs)
            tile = lambda a: jnp.concatenate([a] * k, axis=0)
            prompt_ids, prompt_mask = self.prompt(m)
            out = sampling.response_logits(cfg, params, tile(prompt_ids), tile(prompt_mask), ids, mask)
            out = out if m is Model.STUDENT else jax.lax.stop_gradient(out)
            for x, part in zip(rs, jnp.split(out, k, axis=0)):
                self._memo[(m, x)] = part
        return self._memo[key]

    def has(self, m: Model, r: Response) -> bool:
        return (m, r) in self._memo

    def logps(self, m: Model, r: Response):
        """(summed log-prob [B], length [B]) of a response under a model, in its own tokens."""
        ids, mask = self.response(r, m)
        return losses.sequence_logprobs(self.logits(m, r), ids, mask)

    def ce(self, r: Response = Response.GOLD):
        ids, mask = self.response(r)
        return losses.cross_entropy(self.logits(Model.STUDENT, r), ids, mask)

    def lm(self):
        """Token-mean CE of the student on the batch's pre-training rows ``[B]`` (None without)."""
        if "lm_ids" not in self.batch:
            return None
        if "lm" not in self._memo:
            cfg, params = self.models[Model.STUDENT]
            lm = self.batch["lm_ids"]
            pos = jnp.broadcast_to(jnp.arange(lm.shape[1]), lm.shape)
            logits, _ = cfg(params, lm[:, :-1], pos[:, :-1], jnp.ones_like(lm[:, :-1]))
            self._memo["lm"] = losses.cross_entropy(logits, lm[:, 1:], jnp.ones_like(lm[:, 1:]))
        return self._memo["lm"]


def mixed(ctx: Context, name: str, value, *, kd_ratio: float, lm_coef: float) -> dict:
    """The reference code's mix (method.md): ``(1 − kd_ratio)·CE(gold) + kd_ratio·L + lm_coef·LM``;
    zero-weight terms are left out, so they cost nothing."""
    terms = {name: (kd_ratio, value)}
    if kd_ratio < 1.0:
        terms["ce_gold"] = (1.0 - kd_ratio, ctx.ce(Response.GOLD))
    lm = ctx.lm() if lm_coef > 0 else None
    if lm is not None:
        terms["lm"] = (lm_coef, lm)
    return terms


def check(name: str, field: str, ok: bool, why: str, value):
    if not ok:
        raise InputError(f"config.loss.{name}.{field}: {why}, got {value!r}")


def check_mix(name: str, kd_ratio: float, lm_coef: float):
    check(name, "kd_ratio", 0.0 <= kd_ratio <= 1.0, "must be in [0, 1]", kd_ratio)
    check(name, "lm_coef", lm_coef >= 0.0, "must be >= 0", lm_coef)
