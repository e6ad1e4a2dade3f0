"""MiniLLM (arXiv 2306.08543) as the released code (LMOps minillm/) runs it, per method.md:
responses sampled from the mixture ``(1−α)·q + α·p``; per-token rewards
``clip((log p − log q_old)/s)``; length-normalised discounted advantages whitened over the
batch; PPO-clip with the mixture importance weights; the single-step regulariser (exact
per-token reverse KL); and ``lm_coef`` x the pre-training loss ``(1−kd_ratio)·CE +
kd_ratio·(−Σ p log q)``. It supplies its own update: ``ppo_epochs`` passes over the
step's rollout in ``minibatches``. (The reference keeps a store of 256 rollouts; here the
rollout is the step's batch.)"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from .. import losses, sampling
from ..losses import tokenwise as tw
from .base import Needs, Objective, check, check_mix, lm_rows, positions_of


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A decode call (the protocol ``sampling`` uses) whose logits are the log of the
    mixture ``(1−α)·q + α·p`` of a student and a teacher decoded side by side."""
    student: object
    teacher: object
    alpha: float

    def __call__(self, params, tokens, positions, attention_mask, cache=None, cache_index=0, logits_range=None):
        (sp, tp), (sc, tc) = params, cache
        s, sc = self.student(sp, tokens, positions, attention_mask, sc, cache_index, logits_range)
        t, tc = self.teacher(tp, tokens, positions, attention_mask, tc, cache_index, logits_range)
        logq = jax.nn.log_softmax(s.astype(jnp.float32), axis=-1)
        logp = jax.nn.log_softmax(t.astype(jnp.float32), axis=-1)
        mix = jnp.logaddexp(jnp.log1p(-self.alpha) + logq, jnp.log(self.alpha) + logp) if self.alpha else logq
        return mix, (sc, tc)

    def init_cache(self, batch, length):
        return self.student.init_cache(batch, length), self.teacher.init_cache(batch, length)


@dataclasses.dataclass(frozen=True)
class MiniLLM(Objective):
    teacher_mix: float = 0.2        # α of the mixture sampler (teacher_mixed_alpha)
    reward_scale: float = 0.5
    reward_clip: float = 100.0
    gamma: float = 0.95
    clip_range: float = 0.2
    ppo_epochs: int = 4
    minibatches: int = 1
    reg_coef: float = 1.0           # single-step regulariser weight
    kd_ratio: float = 0.5           # inside the pre-training loss
    lm_coef: float = 1.0
    needs: ClassVar = Needs()       # samples come from its own mixture sampler
    own_update: ClassVar = True

    @property
    def updates_per_step(self):
        return self.ppo_epochs * self.minibatches

    def validate(self):
        check("minillm", "teacher_mix", 0.0 <= self.teacher_mix < 1.0, "must be in [0, 1)", self.teacher_mix)
        check("minillm", "ppo_epochs", self.ppo_epochs >= 1, "must be >= 1", self.ppo_epochs)
        check("minillm", "minibatches", self.minibatches >= 1, "must be >= 1", self.minibatches)
        check("minillm", "clip_range", self.clip_range > 0, "must be > 0", self.clip_range)
        check_mix("minillm", self.kd_ratio, self.lm_coef)

    # ---- the rollout (no gradient) ----
    def rollout(self, student, params, teacher, teacher_params, batch, rng, opts, chunk_tokens):
        mix = Mixture(student, teacher, self.teacher_mix)
        ids, mask = sampling.sample(mix, (jax.lax.stop_gradient(params), teacher_params), *batch.prompts, rng, opts)
        score = lambda dec, p: sampling.score(dec, p, *batch.prompts, ids, mask, chunk_tokens=chunk_tokens)[0]
        old = jax.lax.stop_gradient(score(student, params))
        tlp = score(teacher, teacher_params)
        a = self.teacher_mix
        # w_t = q(y_t) / ((1−α) q(y_t) + α p(y_t)), once at sampling time
        weights = jnp.exp(old - jnp.logaddexp(jnp.log1p(-a) + old, jnp.log(a) + tlp)) if a else jnp.ones_like(old)
        rewards = losses.minillm_rewards(tlp, old, mask, scale=self.reward_scale, clip=self.reward_clip)
        adv = losses.minillm_advantages(rewards, mask, gamma=self.gamma)
        return {"ids": ids, "mask": mask, "old": old, "weights": weights, "adv": adv, "rewards": rewards}

    # ---- one inner update's loss on a minibatch ----
    def inner_loss(self, student, p, teacher, teacher_params, prompts, roll, lm_ids, chunk_tokens):
        """PPO-clip + the single-step regulariser (exact reverse KL per token) on the rollout, and the
        pre-training term; every token-level quantity in chunks of ``chunk_tokens`` (one pass per model)."""
        hs = sampling.response_hidden(student, p, *prompts, roll["ids"], roll["mask"])
        ht = jax.lax.stop_gradient(sampling.response_hidden(teacher, teacher_params, *prompts, roll["ids"], roll["mask"]))
        fn = lambda lg, y: (tw.logprob(lg[0], y), tw.reverse_kl(lg[0], jax.lax.stop_gradient(lg[1])))
        heads = (functools.partial(student.head, p), functools.partial(teacher.head, teacher_params))
        logps, rkl = losses.token_map(fn, (hs, ht), heads, roll["ids"], chunk_size=chunk_tokens)
        pg = losses.ppo_clip_loss(logps, roll["old"], roll["adv"], roll["mask"],
                                  importance_weights=roll["weights"], clip_range=self.clip_range)
        terms = {"minillm": (1.0, pg), "minillm_reg": (self.reg_coef, losses.masked_mean(rkl, roll["mask"]))}
        if lm_ids is not None and self.lm_coef > 0:
            x, y, ones = lm_rows(lm_ids)
            s_h = student.hidden(p, x, positions_of(x), ones)
            t_h = jax.lax.stop_gradient(teacher.hidden(teacher_params, x, positions_of(x), ones))
            # −Σ p log q is KL(p‖q) up to p's entropy (same gradient)
            fn = lambda lg, y: (tw.logprob(lg[0], y), tw.forward_kl(lg[0], jax.lax.stop_gradient(lg[1])))
            lp, fkl = losses.token_map(fn, (s_h, t_h), heads, y, chunk_size=chunk_tokens)
            ce, kd = -losses.masked_mean(lp, ones), losses.masked_mean(fkl, ones)
            terms["lm"] = (self.lm_coef, (1 - self.kd_ratio) * ce + self.kd_ratio * kd)
        return terms
