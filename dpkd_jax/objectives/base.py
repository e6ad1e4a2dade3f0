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
import functools

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


class Objective:
    """What every objective declares, read by the step, the loop and the preflight (no probes).

    * ``needs``: the samples and models a step must provide (:class:`Needs`);
    * ``topk``: it can train from the teacher's top-k cache instead of the teacher's weights;
    * ``sampled_cache``: it can train from the sampled (RS-KD) cache instead (forward KL only);
    * ``cross_tokenizer``: it works when teacher and student tokenizers differ;
    * ``own_update``: it supplies its own update (``rollout`` + ``inner_loss``, MiniLLM) and
      ``updates_per_step`` optimizer updates per train step; otherwise ``loss(ctx)``;
    * ``init_state()`` / ``next_state(state, metrics, progress)``: its own state in the train
      state (TAID's adaptive λ), read in ``loss`` as ``ctx.state``, advanced once per step from
      the step's metrics, checkpointed with the rest; empty for most objectives.
    """
    needs: Needs = Needs()
    topk: bool = False
    sampled_cache: bool = False     # it can train from the sampled (RS-KD) cache: an unbiased forward KL
    cross_tokenizer: bool = False
    own_update: bool = False
    updates_per_step: int = 1
    loss_temperature: float = 1.0   # the distillation temperature of its token-level terms
    lm_coef: float = 0.0            # > 0: it reads pre-training rows (``Batch.lm_ids``)

    def validate(self):
        pass

    def loss(self, ctx: "Context"):
        raise NotImplementedError(type(self).__name__)

    def init_state(self) -> dict:
        return {}

    def next_state(self, state: dict, metrics: dict, progress):
        """(the state for the next step, metrics to log); ``metrics`` are this step's (no gradient)."""
        return state, {}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a :class:`Context` lays out its forwards: ``chunk_tokens`` tokens per vocabulary chunk
    (method.md §11); ``gold_length``: each gold-response forward on rows of this many slots with the
    padding between prompt and response squeezed out (``sampling.squeezed_rows``; the longest
    prompt + response of the training data), None for the full ``P + R`` slots."""
    chunk_tokens: int = 128
    gold_length: int | None = None


class Context:
    """The step's arrays and memoised model calls: a method and the metrics never run the
    same forward twice in one trace. The responses a model scores on the batch's prompts
    (``scored``: what :func:`scored_responses` recorded of the objective; without it, y_t and y_s of
    one shape) run on one prompt forward whose cache all of them read
    (``sampling.shared_prompt_hidden``, each padded to the longest); a gold response scored alone
    runs on rows of ``layout.gold_length`` slots when it is set (``sampling.squeezed_rows``).

    Objectives see **hidden states and heads, never logits**: every token-level quantity
    goes through ``losses.token_map`` in chunks of ``chunk_tokens`` tokens, with the head
    recomputed in the backward pass (method.md §11); no ``[B, N, V]`` array is alive.

    ``views``: a model with its own tokenizer (cross-tokenizer runs) maps to its own prompt
    ``(ids, mask)`` and its own tokenization of each response ``{Response: (ids, mask)}``;
    every other model reads the batch's prompts and ``samples``."""

    def __init__(self, models: dict, batch, samples: dict, progress=0.0, views=None, layout=Layout(), state=None,
                 feature_layers=None, scored=None):
        self.models, self.batch, self.samples = models, batch, samples
        self.scored = scored    # {Model: responses} the step will ask of each model, or None
        # {Model: layers}: those models' forwards also return the residual streams after these blocks
        self.feature_layers = feature_layers or {}
        self._features = {}
        self.state = state if state is not None else {}   # the objective's own (``Objective.init_state``)
        self.progress = progress        # step / total steps (a traced scalar)
        self.views = views or {}
        self.layout = layout
        self._hidden, self._logps = {}, {}

    def response(self, r: Response, m: Model = Model.STUDENT):
        """(ids, mask) of a response, in model ``m``'s tokenization."""
        if m in self.views:
            return self.views[m][1][r]
        if r is Response.GOLD:
            return self.batch.gold
        return self.samples[r]

    def prompt(self, m: Model):
        return self.views[m][0] if m in self.views else self.batch.prompts

    def _together(self, m: Model, r: Response) -> list:
        """The responses model ``m`` scores on one forward with ``r`` (``r`` alone, or several
        sharing the batch's prompt)."""
        if self.scored is not None and m not in self.views and r in self.scored.get(m, ()):
            return [x for x in Response if x in self.scored[m]]
        pair = [x for x in (Response.TEACHER, Response.STUDENT) if x in self.samples]
        same = len(pair) == 2 and self.response(pair[0], m)[0].shape == self.response(pair[1], m)[0].shape
        fresh = not any((m, x) in self._hidden for x in pair)
        return pair if r in pair and same and fresh else [r]

    def hidden(self, m: Model, r: Response):
        """Final hidden states ``[B, N, D]`` of model ``m`` at response ``r``'s positions."""
        key = (m, r)
        if key not in self._hidden:
            decoder, params = self.models[m]
            rs = self._together(m, r)
            lengths = [self.response(x, m)[0].shape[1] for x in rs]
            pad = lambda a: jnp.pad(a, ((0, 0), (0, max(lengths) - a.shape[1])))  # right padding: masked
            ids, mask = (jnp.concatenate([pad(a) for a in p], axis=0) for p in zip(*(self.response(x, m) for x in rs)))
            k = len(rs)
            tile = lambda a: jnp.concatenate([a] * k, axis=0)
            prompt_ids, prompt_mask = self.prompt(m)
            args = (decoder, params, tile(prompt_ids), tile(prompt_mask), ids, mask)
            # gold rows in the batch's own tokens have a known longest row: fewer slots, the same outputs
            own_gold = rs == [Response.GOLD] and m not in self.views
            length = self.layout.gold_length if own_gold else None
            if own_gold and self.batch.packing is not None:  # packed rows: the same outputs, less padding
                out, feats = self._packed(m, decoder, params)
                if feats is not None:
                    self._features[(m, r)] = feats if m is Model.STUDENT else jax.lax.stop_gradient(feats)
            elif m in self.feature_layers:  # the same forward also gives the chosen layers' outputs
                out, feats = sampling.response_features(*args, self.feature_layers[m], length=length)
                feats = feats if m is Model.STUDENT else jax.lax.stop_gradient(feats)
                for x, n, part in zip(rs, lengths, jnp.split(feats, k, axis=1)):
                    self._features[(m, x)] = part[:, :, :n]
            elif k > 1:  # several responses to one prompt: the prompt's forward once, its cache read by all
                out = sampling.shared_prompt_hidden(decoder, params, prompt_ids, prompt_mask, ids, mask)
            else:
                out = sampling.response_hidden(*args, length=length)
            out = out if m is Model.STUDENT else jax.lax.stop_gradient(out)
            for x, n, part in zip(rs, lengths, jnp.split(out, k, axis=0)):
                self._hidden[(m, x)] = part[:, :n]
        return self._hidden[key]

    def _packed(self, m: Model, decoder, params):
        """(hidden ``[B, R, D]``, features or None) of the gold response from the batch's packed rows."""
        b, layers = self.batch, self.feature_layers.get(m)
        out = sampling.packed_hidden(decoder, params, b.prompt_ids, b.response_ids, b.packing, layers)
        return out if layers is not None else (out, None)

    def first_position(self, m: Model):
        """Model ``m``'s final hidden state at the last prompt position ``[B, 1, D]`` (it predicts a
        response's first token and, by causal attention, is the same for every response), from a
        forward this step already ran on the batch's prompts; None if none ran."""
        if m in self.views:
            return None
        return next((h[:, :1] for (model, _), h in self._hidden.items() if model is m), None)

    def features(self, m: Model, r: Response):
        """The residual streams after ``feature_layers[m]`` ``[K, B, N, D]`` at response ``r``'s positions,
        from the same forward as :meth:`hidden`."""
        self.hidden(m, r)
        return self._features[(m, r)]

    def head(self, m: Model):
        """Model ``m``'s head: hidden ``[B, C, D]`` -> logits ``[B, C, V]`` (for ``losses.token_map``)."""
        decoder, params = self.models[m]
        return functools.partial(decoder.head, params)

    def token_logps(self, m: Model, r: Response):
        """``log π_m(y_i | ·)`` ``[B, N]`` of response ``r`` in model ``m``'s tokens (chunked)."""
        if (m, r) not in self._logps:
            ids, _ = self.response(r, m)
            self._logps[(m, r)] = losses.chunked_token_logprobs(self.hidden(m, r), self.head(m), ids,
                                                                chunk_size=self.layout.chunk_tokens)
        return self._logps[(m, r)]

    def has(self, m: Model, r: Response) -> bool:
        return (m, r) in self._logps

    def logps(self, m: Model, r: Response):
        """(summed log-prob [B], length [B]) of a response under a model, in its own tokens."""
        _, mask = self.response(r, m)
        mask = mask.astype(jnp.float32)
        return jnp.sum(self.token_logps(m, r) * mask, -1), mask.sum(-1)

    def ce(self, r: Response = Response.GOLD):
        _, mask = self.response(r)
        return -losses.masked_mean(self.token_logps(Model.STUDENT, r), mask)

    def divergence(self, per_token, r: Response, **kw):
        """Token mean ``[B]`` of ``per_token(student_logits, teacher_logits, **kw)`` (a ``losses.tokenwise``
        function) on response ``r``, chunked; the same pass gives the student's token log-probs of ``r``."""
        ids, mask = self.response(r)
        fn = lambda lg, y: (per_token(lg[0], jax.lax.stop_gradient(lg[1]), **kw), losses.tokenwise.logprob(lg[0], y))
        values, logps = losses.token_map(fn, (self.hidden(Model.STUDENT, r), self.hidden(Model.TEACHER, r)),
                                         (self.head(Model.STUDENT), self.head(Model.TEACHER)), ids,
                                         chunk_size=self.layout.chunk_tokens)
        self._logps.setdefault((Model.STUDENT, r), logps)
        return losses.masked_mean(values, mask)

    def sparse_divergence(self, per_token, cache=None, **kw):
        """As :meth:`divergence` against a teacher cache on the gold responses: ``cache`` = its two
        ``[B, R, k]`` arrays, by default the batch's top-k (ids, log-probs)."""
        ids, mask = self.response(Response.GOLD)
        b = self.batch
        first, second = cache if cache is not None else (b.teacher_topk_ids, b.teacher_topk_logps)
        fn = lambda lg, x: (per_token(lg[0], x[1], x[2], **kw), losses.tokenwise.logprob(lg[0], x[0]))
        values, logps = losses.token_map(fn, (self.hidden(Model.STUDENT, Response.GOLD),), (self.head(Model.STUDENT),),
                                         (ids, first, second), chunk_size=self.layout.chunk_tokens)
        self._logps.setdefault((Model.STUDENT, Response.GOLD), logps)
        return losses.masked_mean(values, mask)

    def lm(self):
        """Token-mean CE of the student on the batch's pre-training rows ``[B]`` (None without)."""
        if self.batch.lm_ids is None:
            return None
        if "lm" not in self._logps:
            decoder, params = self.models[Model.STUDENT]
            x, y, ones = lm_rows(self.batch.lm_ids)
            h = decoder.hidden(params, x, positions_of(x), ones)
            self._logps["lm"] = losses.chunked_cross_entropy(h, self.head(Model.STUDENT), y, ones,
                                                             chunk_size=self.layout.chunk_tokens)
        return self._logps["lm"]


def lm_rows(lm_ids):
    """(inputs, targets, mask) of pre-training rows: next-token prediction over each whole row."""
    x = lm_ids[:, :-1]
    return x, lm_ids[:, 1:], jnp.ones_like(x)


def positions_of(tokens):
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


class _Recorder(Context):
    """A :class:`Context` that runs no model: it records which (model, response) hidden states are
    asked for and answers zeros of their shape."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.asked = set()

    def _zeros(self, m: Model, r: Response, *lead):
        decoder = self.models[m][0]
        ids, _ = self.response(r, m)
        return jnp.zeros((*lead, *ids.shape, decoder.config.d_model), jnp.float32)

    def hidden(self, m: Model, r: Response):
        self.asked.add((m, r))
        return self._zeros(m, r)

    def features(self, m: Model, r: Response):
        self.asked.add((m, r))
        return self._zeros(m, r, len(self.feature_layers[m]))


def scored_responses(objective, *context_args, also=(), **context_kw) -> dict:
    """``{Model: frozenset of Response}``: what ``objective.loss`` asks of each model in a step with
    these :class:`Context` arguments (and the pairs in ``also``), from an abstract trace of the loss
    on zeros (``jax.eval_shape``: nothing runs, no model is traced). The step's Context then scores
    each model's responses to the batch's prompts on one prompt forward."""
    rec = _Recorder(*context_args, **context_kw)

    def run():
        objective.loss(rec)
    jax.eval_shape(run)
    out = {}
    for m, r in {*rec.asked, *also}:
        out.setdefault(m, set()).add(r)
    return {m: frozenset(rs) for m, rs in out.items()}


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
