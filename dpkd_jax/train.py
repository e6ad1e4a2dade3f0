"""The train step (pure, compiled once over the mesh), generic over objectives.

``make_step`` returns ``step(state, batch, rng) -> (state, metrics)``: sample
``y_t`` (online, or read from the batch when precomputed offline) and ``y_s``
with the current student (no gradient), score, mix the losses, one optax update.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from . import losses, sampling
from . import sharding as sharding_lib
from . import objectives
from .errors import InputError
from .optim import apply_update, global_norm, make_schedule

def split_trainable(student, params):
    """(trainable, frozen) parts of the student's flat params: a LoRA student trains its
    adapters only (``student.trainable()``, from the variables' types)."""
    names = set(student.trainable())
    return ({k: v for k, v in params.items() if k in names}, {k: v for k, v in params.items() if k not in names})


def init_state(student, params, tx):
    """Params (all of them: frozen base weights ride along unchanged), optimizer state for
    the trainable ones only, and the step count."""
    return {"params": params, "opt_state": tx.init(split_trainable(student, params)[0]),
            "step": jnp.zeros((), jnp.int32)}


def step_shardings(placement, student, teacher, tx, student_params):
    """Shardings of everything the step takes, from the run's :class:`sharding.Placement`
    and the models' metadata."""
    from . import sharding
    mesh = placement.mesh
    p_sh = placement.params(student.info, "student")
    trainable = split_trainable(student, student_params)[0]
    opt = sharding.like_params(jax.eval_shape(tx.init, trainable), trainable, p_sh, mesh)
    rep = sharding.replicated(mesh)
    return {"params": p_sh, "state": {"params": p_sh, "opt_state": opt, "step": rep},
            "teacher": placement.params(teacher.info, "teacher"), "ref": p_sh,
            "batch": sharding.batch_sharding(mesh), "replicated": rep}


def place_state(student, params, tx, shardings):
    """A fresh train state (a copy of ``params``, so donation leaves the caller's arrays
    valid) on the step's shardings."""
    from .sharding import copy_to
    params = copy_to(params, shardings["params"])
    return jax.jit(lambda p: init_state(student, p, tx), out_shardings=shardings["state"])(params)


def update(tx, student, loss_fn, params, opt_state):
    """One optax update of the trainable params (the gradient is taken w.r.t. them only):
    ``(new params, opt state, total, aux, grads)``."""
    trainable, frozen = split_trainable(student, params)
    (total, aux), grads = jax.value_and_grad(lambda t: loss_fn({**frozen, **t}), has_aux=True)(trainable)
    new, opt_state = apply_update(tx, trainable, opt_state, grads, total)
    return {**frozen, **new}, opt_state, total, aux, grads


def _pad_to(ids, mask, length, pad_token_id):
    extra = length - ids.shape[1]
    return (jnp.pad(ids, ((0, 0), (0, extra)), constant_values=pad_token_id), jnp.pad(mask, ((0, 0), (0, extra))))


def make_step(cfg, student, teacher, tx, teacher_params, ref_params=None, shardings=None):
    """The compiled step, generic over objectives: it provides what ``objective.needs`` asks
    for (samples, reference model), sums the objective's weighted terms and takes one optax
    update. ``student``/``teacher`` are model Configs (hashable decode calls).

    ``shardings`` (from :func:`step_shardings`) compiles it over a mesh: state, batch,
    teacher and reference parameters in and out on their rules' shardings."""
    objective = objectives.build(cfg.method, cfg.loss)
    needs = objective.needs
    g = cfg.gen
    gen_kw = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                  eos_token_id=g.eos_token_id, pad_token_id=g.pad_token_id)
    updates_per_step = objectives.updates_per_step(objective)
    schedule = make_schedule(cfg.train, updates_per_step)
    T, S = objectives.Response.TEACHER, objectives.Response.STUDENT

    def student_samples(batch, params, rng, samples):
        if "student_ids" in batch:  # given by the caller (bench/train_step.py times the step without generation)
            return batch["student_ids"], batch["student_mask"]
        kw = dict(gen_kw, temperature=needs.student_temperature or g.temperature)
        own = lambda: sampling.sample(student, jax.lax.stop_gradient(params), batch["prompt_ids"],
                                      batch["prompt_mask"], rng, **kw)
        if needs.on_policy >= 1.0:
            return own()
        # GKD: the student's own samples with probability on_policy, else the fallback responses.
        fallback = samples[T] if needs.fallback is T else (batch["response_ids"], batch["response_mask"])
        L = max(g.max_new_tokens, fallback[0].shape[1])
        coin = jax.random.uniform(jax.random.fold_in(rng, 1)) < needs.on_policy
        return jax.lax.cond(coin, lambda: _pad_to(*own(), L, g.pad_token_id),
                            lambda: _pad_to(*fallback, L, g.pad_token_id))

    def _body(state, batch, rng, teacher_params, ref_params):
        params = state["params"]
        rng_t, rng_s = jax.random.split(rng)
        samples = {}
        if needs.teacher_samples:
            if "teacher_ids" in batch:  # offline: precomputed once per prompt
                samples[T] = (batch["teacher_ids"], batch["teacher_mask"])
            else:
                samples[T] = sampling.sample(teacher, teacher_params, batch["prompt_ids"], batch["prompt_mask"],
                                             rng_t, **gen_kw)
        if needs.student_samples:
            samples[S] = student_samples(batch, params, rng_s, samples)
        progress = state["step"].astype(jnp.float32) / cfg.train.steps
        M = objectives.Model

        views = {}
        if "x_teacher_prompt_ids" in batch:  # cross-tokenizer: the teacher reads its own tokens
            v = lambda name: (batch[f"x_teacher_{name}_ids"], batch[f"x_teacher_{name}_mask"])
            views[M.TEACHER] = (v("prompt"), {r: v(n) for r, n in ((T, "yt"), (S, "ys")) if r in samples})

        def loss_fn(p):
            ctx = objectives.Context({M.STUDENT: (student, p), M.TEACHER: (teacher, teacher_params),
                                      M.REFERENCE: (student, ref_params)}, batch, samples, progress, views)
            terms, metrics = objective.loss(ctx)
            total = sum(w * v.mean() for w, v in terms.values())
            metrics = {k: v.mean() for k, v in {**metrics, **objectives.reward_hacking(ctx)}.items()}
            metrics.update({f"loss/{k}": v.mean() for k, (_, v) in terms.items()})
            metrics["loss/total"] = total
            return total, metrics

        new_params, opt_state, total, metrics, grads = update(tx, student, loss_fn, params, state["opt_state"])
        metrics["grad_norm"] = global_norm(grads)
        for r, (_, m) in samples.items():
            metrics[f"length/{r.value}_response"] = m.sum(1).mean()
        return finish(state, new_params, opt_state, metrics, batch, teacher_params)

    def finish(state, new_params, opt_state, metrics, batch, teacher_params):
        """The metrics every step logs, and the new state."""
        params = state["params"]
        # Two extra prompt forwards: only on the steps the loop logs.
        done = state["step"] + 1
        log_step = (done % cfg.train.log_every == 0) | (done == cfg.train.steps)
        zeros = jnp.zeros(batch["prompt_ids"].shape[:1], jnp.float32)
        # None: a top-k cache run; a teacher view: another vocabulary (no token-level KL)
        fkl, rkl = (zeros, zeros) if teacher_params is None or "x_teacher_prompt_ids" in batch else jax.lax.cond(
            log_step, lambda: objectives.first_token_kls(student, params, teacher, teacher_params,
                                                         batch["prompt_ids"], batch["prompt_mask"]),
            lambda: (zeros, zeros))
        lr = schedule(state["step"] * updates_per_step) if callable(schedule) else schedule
        metrics["nonfinite/streak"] = opt_state.notfinite_count
        metrics["nonfinite/skipped"] = opt_state.total_notfinite
        metrics.update({"kl/first_token_forward": fkl.mean(), "kl/first_token_reverse": rkl.mean(),
                        "lr": jnp.asarray(lr, jnp.float32), "length/gold": batch["response_mask"].sum(1).mean()})
        return {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    def _rollout_body(state, batch, rng, teacher_params, ref_params):
        """An objective with its own update (MiniLLM): one rollout, then ``ppo_epochs`` passes over
        it in ``minibatches``, each an optimizer update."""
        roll = objective.rollout(student, state["params"], teacher, teacher_params, batch, rng, gen_kw)
        n = objective.minibatches
        B = batch["prompt_ids"].shape[0]
        mb = B // n
        part = lambda a, i: jax.lax.dynamic_slice_in_dim(a, i * mb, mb)

        def inner(carry, i):
            params, opt_state = carry
            sub = jax.tree.map(lambda a: part(a, i), roll)
            prompts = (part(batch["prompt_ids"], i), part(batch["prompt_mask"], i))
            lm = part(batch["lm_ids"], i) if "lm_ids" in batch else None

            def loss_fn(p):
                terms = objective.inner_loss(student, p, teacher, teacher_params, prompts, sub, lm)
                total = sum(w * v.mean() for w, v in terms.values())
                return total, {f"loss/{k}": v.mean() for k, (_, v) in terms.items()}
            params, opt_state, total, ms, grads = update(tx, student, loss_fn, params, opt_state)
            return (params, opt_state), dict(ms, **{"loss/total": total, "grad_norm": global_norm(grads)})

        order = jnp.tile(jnp.arange(n), objective.ppo_epochs)
        (params, opt_state), ms = jax.lax.scan(inner, (state["params"], state["opt_state"]), order)
        metrics = {k: v.mean() for k, v in ms.items()}
        metrics.update({"minillm/reward": losses.masked_mean(roll["rewards"], roll["mask"]).mean(),
                        "minillm/importance_weight": losses.masked_mean(roll["weights"], roll["mask"]).mean(),
                        "length/mixture_response": roll["mask"].sum(1).mean()})
        return finish(state, params, opt_state, metrics, batch, teacher_params)

    if hasattr(objective, "rollout"):
        if cfg.train.batch_size % objective.minibatches:
            raise InputError(f"config.loss.{cfg.method}.minibatches: {objective.minibatches} does not divide "
                             f"train.batch_size={cfg.train.batch_size}")

    body = _rollout_body if hasattr(objective, "rollout") else _body  # MiniLLM supplies its own update
    if shardings is None:
        jitted = jax.jit(body, donate_argnums=(0,))
        context = contextlib.nullcontext
    else:
        sh = shardings
        jitted = jax.jit(body, donate_argnums=(0,),
                         in_shardings=(sh["state"], sh["batch"], sh["replicated"],
                                       sh["teacher"] if teacher_params is not None else None,
                                       sh["ref"] if ref_params is not None else None),
                         out_shardings=(sh["state"], sh["replicated"]))
        # Traced inside JAX's mesh context, so the models' activation constraints apply.
        context = functools.partial(sharding_lib.mesh_context, sh["replicated"].mesh)

    def step(state, batch, rng):
        with context():
            return jitted(state, batch, rng, teacher_params, ref_params)

    def lower(*args):
        with context():
            return jitted.lower(*args)
    step.jitted, step.lower = jitted, lower
    return step
