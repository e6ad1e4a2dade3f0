"""The train step (pure, compiled once per method over the mesh), generic over objectives.

``make_step`` returns ``step(state, batch, rng) -> (state, metrics)`` on a typed
:class:`batch.Batch`: sample ``y_t`` (online, or read from the batch when precomputed
offline) and ``y_s`` with the current student (no gradient), run the objective on the
models' hidden states (token-level terms chunked over the vocabulary), one optax update.
An objective that declares ``own_update`` (MiniLLM) supplies its rollout and inner loss.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from . import losses, objectives, sampling
from . import sharding as sharding_lib
from .errors import InputError
from .objectives import Model, Response
from .optim import apply_update, global_norm

def split_trainable(student, params):
    """(trainable, frozen) parts of the student's flat params: a LoRA student trains its
    adapters only (``student.trainable()``, from the variables' types)."""
    names = set(student.trainable())
    return ({k: v for k, v in params.items() if k in names}, {k: v for k, v in params.items() if k not in names})


def init_state(student, params, tx, objective=None, feature=None):
    """Params (all of them: frozen base weights ride along unchanged), optimizer state for
    the trainable ones only (and the feature term's projection), the step count, the
    objective's own state (TAID's λ; empty for most) and the feature projection (``specs.Feature``;
    empty without one), so all of it is checkpointed and resumes exactly."""
    extra = {} if feature is None else {k: jnp.asarray(v) for k, v in feature.init_params().items()}
    return {"params": params, "opt_state": tx.init({**split_trainable(student, params)[0], **extra}),
            "step": jnp.zeros((), jnp.int32), "objective": {} if objective is None else objective.init_state(),
            "feature": extra}


def step_shardings(placement, student, teacher, tx, student_params, objective=None, feature=None):
    """Shardings of everything the step takes, from the run's :class:`sharding.Placement`
    and the models' metadata (the objective's own state, the feature projection and a few
    scalars, replicated)."""
    mesh = placement.mesh
    p_sh = placement.params(student.info, "student")
    extra = {} if feature is None else feature.init_params()
    trainable = {**split_trainable(student, student_params)[0], **extra}
    opt = sharding_lib.like_params(jax.eval_shape(tx.init, trainable), trainable, p_sh, mesh)
    rep = sharding_lib.replicated(mesh)
    own = jax.tree.map(lambda _: rep, {} if objective is None else objective.init_state())
    state = {"params": p_sh, "opt_state": opt, "step": rep, "objective": own,
             "feature": jax.tree.map(lambda _: rep, extra)}
    return {"params": p_sh, "state": state,
            "teacher": placement.params(teacher.info, "teacher"), "ref": p_sh,
            "batch": sharding_lib.batch_sharding(mesh), "replicated": rep}


def place_state(student, params, tx, shardings, objective=None, feature=None):
    """A fresh train state (a copy of ``params``, so donation leaves the caller's arrays
    valid) on the step's shardings."""
    params = sharding_lib.copy_to(params, shardings["params"])
    return _state_initializer(student, tx, _Frozen(shardings["state"]), objective, feature)(params)


@functools.lru_cache(maxsize=4)
def _state_initializer(student, tx, state_shardings, objective, feature):
    """One compiled initializer per (model, optimizer, shardings): every seed of a method reuses it."""
    return jax.jit(functools.partial(init_state, student, tx=tx, objective=objective, feature=feature),
                   out_shardings=state_shardings.tree)


def update(tx, student, loss_fn, params, opt_state, extra=None, micro=None):
    """One optax update of the trainable params and ``extra`` (the feature projection; the
    gradient is taken w.r.t. them only). ``loss_fn`` sees one dict of all of them:
    ``(new params, new extra, opt state, total, aux, grads)``. With ``micro`` (a :class:`Micro`),
    ``loss_fn(params, part)`` runs on each micro-batch ``part`` in turn and the loss, its aux and
    the gradients are their means: one update, equal to the whole batch's."""
    extra = extra or {}
    trainable, frozen = split_trainable(student, params)
    train = {**trainable, **extra}
    if micro is None:
        (total, aux), grads = jax.value_and_grad(lambda t: loss_fn({**frozen, **t}), has_aux=True)(train)
    else:
        (total, aux), grads = micro.value_and_grad(lambda t, part: loss_fn({**frozen, **t}, part), train)
    new, opt_state = apply_update(tx, train, opt_state, grads, total)
    return {**frozen, **{k: new[k] for k in trainable}}, {k: new[k] for k in extra}, opt_state, total, aux, grads


@jax.tree_util.register_pytree_node_class
class _Keyed:
    """A dict as a pytree node that keeps its keys' order (its keys need not sort)."""

    def __init__(self, keys, values):
        self.keys, self.values = tuple(keys), list(values)

    def tree_flatten(self):
        return self.values, self.keys

    @classmethod
    def tree_unflatten(cls, keys, values):
        return cls(keys, values)


def _keyed(tree):
    if isinstance(tree, dict):
        return _Keyed(tree.keys(), [_keyed(v) for v in tree.values()])
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(_keyed(v) for v in tree)
    return tree


def _unkeyed(tree):
    if isinstance(tree, _Keyed):
        return dict(zip(tree.keys, (_unkeyed(v) for v in tree.values)))
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(_unkeyed(v) for v in tree)
    return tree


class Micro:
    """Micro-batches inside one step: ``parts`` (a pytree of ``[B, ...]`` row arrays) as ``n`` equal
    micro-batches, each replica's rows split in order (``replicas`` data-parallel shards), run by a
    ``lax.scan`` that sums the loss, aux and gradients. Every objective's loss is a mean over rows of
    per-example terms, so with equal micro-batches the full batch's loss and gradients are the means of
    the micro-batches'. Aux ``(metrics, per-row outputs)``: metrics averaged, per-row outputs put back
    in row order."""

    def __init__(self, parts, n: int, replicas: int):
        self.n, self.replicas = n, replicas
        # dicts keyed by Model/Response (unsortable, so not pytree dicts) travel as their values
        leaves, self.treedef = jax.tree_util.tree_flatten(_keyed(parts))
        rows = {x.shape[0] for x in leaves}
        if len(rows) != 1:
            raise InputError(f"train.micro_batch: the batch's arrays have different row counts {sorted(rows)}")
        self.rows = rows.pop()
        self.parts = [self._split(x) for x in leaves]

    def part(self, leaves):
        """One micro-batch's ``parts`` from its leaves."""
        return _unkeyed(jax.tree_util.tree_unflatten(self.treedef, leaves))

    def _split(self, x):
        r, n = self.replicas, self.n
        x = x.reshape(r, n, self.rows // (r * n), *x.shape[1:])
        return jnp.swapaxes(x, 0, 1).reshape(n, self.rows // n, *x.shape[3:])

    def _merge(self, x):  # [n, B/n, ...] -> [B, ...] in the batch's row order
        r, n = self.replicas, self.n
        x = x.reshape(n, r, self.rows // (r * n), *x.shape[2:])
        return jnp.swapaxes(x, 0, 1).reshape(self.rows, *x.shape[3:])

    def value_and_grad(self, loss_fn, train):
        grad_fn = jax.value_and_grad(lambda t, leaves: loss_fn(t, self.part(leaves)), has_aux=True)
        first = [x[0] for x in self.parts]
        (total, (metrics, _)), grads = jax.eval_shape(grad_fn, train, first)
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (total, metrics, grads))

        def body(acc, part):
            (total, (metrics, rows)), grads = grad_fn(train, part)
            return jax.tree.map(jnp.add, acc, (total, metrics, grads)), rows
        (total, metrics, grads), rows = jax.lax.scan(body, zeros, self.parts)
        mean = lambda t: jax.tree.map(lambda a: a / self.n, t)
        return (mean(total), (mean(metrics), jax.tree.map(self._merge, rows))), mean(grads)


def _pad_to(ids, mask, length, pad_token_id):
    extra = length - ids.shape[1]
    return (jnp.pad(ids, ((0, 0), (0, extra)), constant_values=pad_token_id), jnp.pad(mask, ((0, 0), (0, extra))))


# ---------------------------------------------------------------- samples ---

def _student_samples(spec, student, batch, params, rng, samples):
    needs, g = spec.objective.needs, spec.sampling
    if batch.student_ids is not None:  # given by the caller (bench/train_step.py times the step without generation)
        return batch.student_ids, batch.student_mask
    opts = g.replace(temperature=needs.student_temperature or g.temperature)
    own = lambda: sampling.sample(student, jax.lax.stop_gradient(params), *batch.prompts, rng, opts)
    if needs.on_policy >= 1.0:
        return own()
    # GKD: the student's own samples with probability on_policy, else the fallback responses.
    fallback = samples[Response.TEACHER] if needs.fallback is Response.TEACHER else batch.gold
    L = max(g.max_new_tokens, fallback[0].shape[1])
    coin = jax.random.uniform(jax.random.fold_in(rng, 1)) < needs.on_policy
    return jax.lax.cond(coin, lambda: _pad_to(*own(), L, g.pad_token_id), lambda: _pad_to(*fallback, L, g.pad_token_id))


def _samples(spec, student, teacher, batch, params, teacher_params, rng):
    """The responses the objective needs: ``{Response: (ids, mask)}``."""
    needs, samples = spec.objective.needs, {}
    rng_t, rng_s = jax.random.split(rng)
    if needs.teacher_samples:
        if batch.teacher_ids is not None:  # offline: precomputed once per prompt
            samples[Response.TEACHER] = (batch.teacher_ids, batch.teacher_mask)
        else:
            samples[Response.TEACHER] = sampling.sample(teacher, teacher_params, *batch.prompts, rng_t,
                                                        spec.sampling)
    if needs.student_samples:
        samples[Response.STUDENT] = _student_samples(spec, student, batch, params, rng_s, samples)
    return samples


def _views(batch, samples):
    """Across tokenizers the teacher reads its own tokens of the prompt and each response."""
    v = batch.teacher_view
    if v is None:
        return {}
    own = {Response.TEACHER: (v.yt_ids, v.yt_mask), Response.STUDENT: (v.ys_ids, v.ys_mask)}
    return {Model.TEACHER: ((v.prompt_ids, v.prompt_mask), {r: own[r] for r in samples})}


# ------------------------------------------------------------------- bodies ---

def _total(terms):
    return sum(w * v.mean() for w, v in terms.values())


def _generic_body(spec, student, teacher, tx, state, batch, rng, teacher_params, ref_params):
    """Samples, the objective's weighted terms on hidden states (chunked), one optax update."""
    params = state["params"]
    samples = _samples(spec, student, teacher, batch, params, teacher_params, rng)
    progress = state["step"].astype(jnp.float32) / spec.steps
    views = _views(batch, samples)

    f = spec.feature
    layers = {} if f is None else {Model.STUDENT: f.student_layers, Model.TEACHER: f.teacher_layers}

    def context_args(p, part):
        rows, responses, own_views = part
        return ({Model.STUDENT: (student, p), Model.TEACHER: (teacher, teacher_params),
                 Model.REFERENCE: (student, ref_params)}, rows, responses, progress, own_views,
                objectives.Layout(spec.chunk_tokens, spec.gold_length), state["objective"], layers)
    wanted = () if f is None else ((Model.STUDENT, f.response), (Model.TEACHER, f.response))
    whole = (batch, samples, views)   # the batch's rows, the samples and the teacher's views: split together
    scored = objectives.scored_responses(spec.objective, *context_args(params, whole), also=wanted)
    micro = Micro(whole, spec.micro_batches, spec.replicas) if spec.micro_batches > 1 else None

    def loss_fn(p, part=whole):
        ctx = objectives.Context(*context_args(p, part), scored=scored)
        terms, metrics = spec.objective.loss(ctx)
        if f is not None:
            terms["feature"] = (f.weight_at(progress), _feature_term(ctx, f, p.get("feature/projection")))
            metrics["feature/weight"] = jnp.asarray(f.weight_at(progress), jnp.float32)
        metrics = {k: v.mean() for k, v in {**metrics, **objectives.reward_hacking(ctx)}.items()}
        metrics.update({f"loss/{k}": v.mean() for k, (_, v) in terms.items()})
        total = _total(terms)
        return total, (dict(metrics, **{"loss/total": total}), objectives.first_positions(ctx))

    new_params, feature, opt_state, _, (metrics, firsts), grads = update(tx, student, loss_fn, params,
                                                                        state["opt_state"], state["feature"], micro)
    metrics["grad_norm"] = global_norm(grads)
    for r, (_, m) in samples.items():
        metrics[f"length/{r.value}_response"] = m.sum(1).mean()
    own, own_metrics = spec.objective.next_state(state["objective"], metrics, progress)
    kls = _first_token_kls(spec, student, teacher, state, batch, teacher_params, firsts)
    new_state = _finish(spec, state, new_params, opt_state, {**metrics, **own_metrics}, batch, kls)
    return {**new_state[0], "objective": own, "feature": feature}, new_state[1]


def _feature_term(ctx, f, projection):
    """``loss.feature``: the distance between the chosen layers' outputs on ``f.response``, from the
    forwards the objective already ran (or runs, memoised, for the method's own terms)."""
    _, mask = ctx.response(f.response)
    return losses.feature_distance(ctx.features(Model.STUDENT, f.response), ctx.features(Model.TEACHER, f.response),
                                   mask, projection=projection, distance=f.distance)


def _own_update_body(spec, student, teacher, tx, state, batch, rng, teacher_params, ref_params):
    """An objective with its own update (MiniLLM): one rollout, then ``ppo_epochs`` passes over
    it in ``minibatches``, each an optimizer update."""
    obj = spec.objective
    roll = obj.rollout(student, state["params"], teacher, teacher_params, batch, rng, spec.sampling,
                       spec.chunk_tokens)
    mb = batch.rows // obj.minibatches
    part = lambda a, i: None if a is None else jax.lax.dynamic_slice_in_dim(a, i * mb, mb)

    def inner(carry, i):
        params, opt_state = carry
        sub = jax.tree.map(lambda a: part(a, i), roll)
        prompts = (part(batch.prompt_ids, i), part(batch.prompt_mask, i))

        def loss_fn(p):
            terms = obj.inner_loss(student, p, teacher, teacher_params, prompts, sub, part(batch.lm_ids, i),
                                   spec.chunk_tokens)
            return _total(terms), {f"loss/{k}": v.mean() for k, (_, v) in terms.items()}
        params, _, opt_state, total, ms, grads = update(tx, student, loss_fn, params, opt_state)
        return (params, opt_state), dict(ms, **{"loss/total": total, "grad_norm": global_norm(grads)})

    order = jnp.tile(jnp.arange(obj.minibatches), obj.ppo_epochs)
    (params, opt_state), ms = jax.lax.scan(inner, (state["params"], state["opt_state"]), order)
    metrics = {k: v.mean() for k, v in ms.items()}
    metrics.update({"minillm/reward": losses.masked_mean(roll["rewards"], roll["mask"]).mean(),
                    "minillm/importance_weight": losses.masked_mean(roll["weights"], roll["mask"]).mean(),
                    "length/mixture_response": roll["mask"].sum(1).mean()})
    return _finish(spec, state, params, opt_state, metrics, batch,
                   _first_token_kls(spec, student, teacher, state, batch, teacher_params))


def _first_token_kls(spec, student, teacher, state, batch, teacher_params, firsts=(None, None)):
    """The first-token KLs ``([B], [B])``: from the last prompt position of the objective's own
    forwards (``firsts``, from ``objectives.first_positions``) when it ran both models; else with the
    missing prompt forward(s), only on the steps the loop logs; zeros without the teacher's weights
    (a top-k cache run) or across vocabularies (a teacher view)."""
    params, (hs, ht) = state["params"], firsts

    def logits(decoder, p, h):  # the head on the given position, else one prompt forward
        return decoder.head(p, h) if h is not None else objectives.first_token_logits(decoder, p, *batch.prompts)
    from_logits = lambda: objectives.first_token_kls_of_logits(logits(student, params, hs),
                                                               logits(teacher, teacher_params, ht))
    if hs is not None and ht is not None:
        return from_logits()
    zeros = jnp.zeros((batch.rows,), jnp.float32)
    if teacher_params is None or batch.teacher_view is not None:
        return zeros, zeros
    done = state["step"] + 1
    log_step = (done % spec.log_every == 0) | (done == spec.steps)
    return jax.lax.cond(log_step, from_logits, lambda: (zeros, zeros))


def _finish(spec, state, new_params, opt_state, metrics, batch, kls):
    """The metrics every step logs (``kls``: the first-token forward and reverse KLs), and the new state."""
    metrics["nonfinite/streak"] = opt_state.notfinite_count
    metrics["nonfinite/skipped"] = opt_state.total_notfinite
    metrics.update({"kl/first_token_forward": kls[0].mean(), "kl/first_token_reverse": kls[1].mean(),
                    "lr": jnp.asarray(spec.schedule(state["step"] * spec.objective.updates_per_step), jnp.float32),
                    "length/gold": batch.response_mask.sum(1).mean(),
                    "padding/prompt_width": jnp.asarray(batch.prompt_ids.shape[1], jnp.float32)})
    if batch.packing is not None:
        metrics["packing/efficiency"] = (batch.packing.segments > 0).mean()
    return {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1, "objective": state["objective"],
            "feature": state["feature"]}, metrics


# -------------------------------------------------------------- compiling ---

class _Frozen:
    """A pytree of shardings as a hashable key."""

    def __init__(self, tree):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree)
        self.key = (tuple(leaves), treedef)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Frozen) and self.key == other.key


# Small caches: consecutive seeds of a method share an entry; keeping many compiled steps alive across a
# process (the test suite compiles hundreds) is what a long-lived cache would cost.
@functools.lru_cache(maxsize=4)
def _compiled(spec, student, teacher, tx, shardings, has_teacher, has_ref):
    """One jitted step per (spec, models, optimizer, shardings): every seed of a method reuses it."""
    body = _own_update_body if spec.objective.own_update else _generic_body
    fn = functools.partial(body, spec, student, teacher, tx)
    if shardings is None:
        return jax.jit(fn, donate_argnums=(0,))
    sh = shardings.tree
    return jax.jit(fn, donate_argnums=(0,),
                   in_shardings=(sh["state"], sh["batch"], sh["replicated"], sh["teacher"] if has_teacher else None,
                                 sh["ref"] if has_ref else None),
                   out_shardings=(sh["state"], sh["replicated"]))


def make_step(spec, student, teacher, tx, teacher_params, ref_params=None, shardings=None):
    """``step(state, batch, rng) -> (state, metrics)``, generic over objectives: it provides what
    ``spec.objective.needs`` asks for (samples, reference model), sums the objective's weighted
    terms (or runs its own update) and takes the optax update. ``spec``: :class:`specs.Step`;
    ``student``/``teacher``: decoders; ``shardings`` (from :func:`step_shardings`) compiles it
    over a mesh, traced inside JAX's mesh context so the models' activation constraints apply."""
    obj = spec.objective
    if obj.own_update and spec.batch_size % obj.minibatches:
        raise InputError(f"config.loss.minillm.minibatches: {obj.minibatches} does not divide "
                         f"train.batch_size={spec.batch_size}")
    jitted = _compiled(spec, student, teacher, tx, None if shardings is None else _Frozen(shardings),
                       teacher_params is not None, ref_params is not None)
    context = contextlib.nullcontext if shardings is None else functools.partial(
        sharding_lib.mesh_context, shardings["replicated"].mesh)

    def step(state, batch, rng):
        with context():
            return jitted(state, batch, rng, teacher_params, ref_params)

    def lower(*args):
        with context():
            return jitted.lower(*args)
    step.jitted, step.lower = jitted, lower
    return step
