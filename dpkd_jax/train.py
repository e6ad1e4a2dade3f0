"""The train step (pure, compiled once) and the loop around it.

``make_step`` returns ``step(state, batch, rng) -> (state, metrics)``: sample
``y_t`` (online, or read from the batch when precomputed offline) and ``y_s``
with the current student (no gradient), score, mix the losses, one optax update.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import losses, sampling
from .methods import METHODS, Context, first_token_kls

# Peak dense bf16 FLOP/s per device, for MFU. Unknown devices (CPU) report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device=None):
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def _decay_mask(params):
    # No weight decay on biases, LayerNorm parameters and position embeddings.
    return {k: not k.endswith(("_b", "_bias", "_scale", "/scale", "/bias", "positions")) for k in params}


def make_schedule(t):
    if t.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, t.lr, max(t.warmup_steps, 1)),
                                     optax.constant_schedule(t.lr)], [t.warmup_steps]) if t.warmup_steps else t.lr
    if t.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if t.warmup_steps else t.lr, t.lr, t.warmup_steps,
                                                  max(t.steps, t.warmup_steps + 1), end_value=t.lr * t.min_lr_ratio)
    raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {t.schedule!r}")


def make_optimizer(t):
    """AdamW (decay masked off biases/norms), global-norm clipping, gradient accumulation."""
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
                     optax.adamw(make_schedule(t), b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                                 weight_decay=t.weight_decay, mask=_decay_mask))
    return optax.MultiSteps(tx, t.grad_accum) if t.grad_accum > 1 else tx


def init_state(params, tx):
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_step(cfg, student, teacher, tx, teacher_params, ref_params=None):
    """The compiled step. ``student``/``teacher`` are model Configs (hashable decode calls)."""
    method = METHODS[cfg.method]
    c, g = cfg.loss, cfg.gen
    gen_kw = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                  eos_token_id=g.eos_token_id, pad_token_id=g.pad_token_id)
    schedule = make_schedule(cfg.train)

    def _step(state, batch, rng, teacher_params, ref_params):
        params = state["params"]
        rng_t, rng_s = jax.random.split(rng)
        samples = {}
        if method.teacher_samples:
            if "teacher_ids" in batch:  # offline: precomputed once per prompt
                samples["teacher"] = (batch["teacher_ids"], batch["teacher_mask"])
            else:
                samples["teacher"] = sampling.sample(teacher, teacher_params, batch["prompt_ids"],
                                                     batch["prompt_mask"], rng_t, **gen_kw)
        if method.student_samples:
            samples["student"] = sampling.sample(student, jax.lax.stop_gradient(params), batch["prompt_ids"],
                                                 batch["prompt_mask"], rng_s, **gen_kw)

        def loss_fn(p):
            ctx = Context(student, p, teacher, teacher_params, batch, samples, ref_params)
            ce_gold = ctx.ce("gold")
            if cfg.method == "sft":
                method_loss, metrics = ce_gold, {}
                total = ce_gold.mean()
            else:
                method_loss, metrics = method.fn(ctx, c)
                total = (1 - c.kd_ratio) * ce_gold.mean() + c.kd_ratio * method_loss.mean()
            metrics = {k: v.mean() for k, v in metrics.items()}
            metrics.update({"loss/ce_gold": ce_gold.mean(), f"loss/{cfg.method}": method_loss.mean()})
            if "lm_ids" in batch and c.lm_coef > 0:
                lm = batch["lm_ids"]
                pos = jnp.broadcast_to(jnp.arange(lm.shape[1]), lm.shape)
                logits, _ = student(p, lm[:, :-1], pos[:, :-1], jnp.ones_like(lm[:, :-1]))
                lm_loss = losses.cross_entropy(logits, lm[:, 1:], jnp.ones_like(lm[:, 1:])).mean()
                total = total + c.lm_coef * lm_loss
                metrics["loss/lm"] = lm_loss
            metrics["loss/total"] = total
            return total, metrics

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        fkl, rkl = first_token_kls(student, params, teacher, teacher_params, batch["prompt_ids"],
                                   batch["prompt_mask"])
        metrics.update({"kl/first_token_forward": fkl.mean(), "kl/first_token_reverse": rkl.mean(),
                        "grad_norm": optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads), "lr": jnp.asarray(schedule(state["step"])
                                                                               if callable(schedule) else schedule),
                        "length/gold": batch["response_mask"].sum(1).mean()})
        for name, (_, m) in samples.items():
            metrics[f"length/{name}_response"] = m.sum(1).mean()
        return {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    jitted = jax.jit(_step, donate_argnums=(0,))

    def step(state, batch, rng):
        return jitted(state, batch, rng, teacher_params, ref_params)
    step.jitted = jitted
    return step


def step_flops(cfg, student, teacher, batch_size):
    """Model FLOPs of one step (for MFU): student train on scored tokens, teacher
    forward scoring, generation forwards of both."""
    method = METHODS[cfg.method]
    from .models.transformer import flops_per_token, forward_flops_per_token
    P, R, N = cfg.data.max_prompt_length, cfg.data.max_length - cfg.data.max_prompt_length, cfg.gen.max_new_tokens
    S = P + max(R, N)
    n_resp = 1 + method.teacher_samples + method.student_samples
    f = batch_size * (P + R) * flops_per_token(student, S) * n_resp
    f += batch_size * (P + R) * forward_flops_per_token(teacher, S) * (n_resp if cfg.method != "sft" else 0)
    if method.teacher_samples:
        f += batch_size * (P + N) * forward_flops_per_token(teacher, P + N)
    if method.student_samples:
        f += batch_size * (P + N) * forward_flops_per_token(student, P + N)
    return f


def precompute_teacher_samples(cfg, teacher, teacher_params, data, path=None):
    """Offline mode: y_t for every training prompt, once, cached as .npz at ``path``."""
    import os
    if path and os.path.isfile(path):
        z = np.load(path)
        if z["ids"].shape[0] == len(data):
            logging.info("teacher samples: reusing %s", path)
            return {"teacher_ids": z["ids"], "teacher_mask": z["mask"]}
    g = cfg.gen
    bs = cfg.train.batch_size
    kw = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
              eos_token_id=g.eos_token_id, pad_token_id=g.pad_token_id)
    ids, mask = [], []
    n = len(data)
    for i in range(0, n, bs):
        sl = np.arange(i, min(i + bs, n))
        pad = np.concatenate([sl, np.zeros(bs - len(sl), int)])  # static batch shape
        t, m = sampling.sample_jit(teacher, teacher_params, data.prompt_ids[pad], data.prompt_mask[pad],
                                   jax.random.PRNGKey(cfg.seed + i), **kw)
        ids.append(np.asarray(t)[: len(sl)])
        mask.append(np.asarray(m)[: len(sl)])
    out = {"teacher_ids": np.concatenate(ids), "teacher_mask": np.concatenate(mask)}
    if path:
        np.savez(path, ids=out["teacher_ids"], mask=out["teacher_mask"])
    return out


class Throughput:
    """Tokens/s, step time and MFU from wall time between logged steps."""

    def __init__(self, flops_per_step, tokens_per_step):
        self.flops, self.tokens = flops_per_step, tokens_per_step
        self.peak = peak_flops()
        self.t = time.perf_counter()

    def __call__(self, steps):
        now = time.perf_counter()
        dt = (now - self.t) / max(steps, 1)
        self.t = now
        out = {"perf/step_time_s": dt, "perf/tokens_per_s": self.tokens / dt}
        if self.peak:
            out["perf/mfu"] = self.flops / dt / (self.peak * jax.device_count())
        return out
