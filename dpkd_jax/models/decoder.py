"""A model as (static decode call, flat state): what every compiled path works on.

``nnx.split(model)`` gives a graph definition and a State. :func:`split` keeps the graph
definition and the State's tree structure in a hashable :class:`Decoder` (the static
argument of every ``jax.jit``) and the State's arrays as a flat dict
``{"blocks/attn/q/w": array, ...}`` (names are the State's paths joined by ``/``), which
optimizers, checkpoints, shardings and the weight tables read by name. Inside a trace
:meth:`Decoder.module` merges them back into the module: a trace-time cost, none per step.

:func:`param_info` reads each variable's metadata (logical axes, kind, whether it
trains): the one source of truth for shapes, axes, kinds and shardings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
from flax import nnx

from .. import sampling
from ..sharding import DEFAULT_RULES
from .config import Config
from .transformer import CausalLM


class ParamInfo(NamedTuple):
    shape: tuple
    axes: tuple          # logical axes, one per dimension
    dtype: object
    kind: str            # components.KINDS
    trainable: bool      # LoRA students: adapters only; frozen int8 weights never


def _axes(var) -> tuple:
    meta = var.get_metadata()
    # flax >= 0.12 calls it out_sharding; earlier releases sharding_names / sharding
    for key in ("out_sharding", "sharding_names", "sharding"):
        if meta.get(key) is not None:
            return tuple(meta[key])
    return (None,) * len(var.shape)


def _name(path) -> str:
    return "/".join(str(p) for p in path)


def state_info(state, lora: bool) -> dict[str, ParamInfo]:
    """Name -> :class:`ParamInfo` for every variable of an (abstract or concrete) State."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        kind = var.get_metadata().get("kind", "weight")
        trainable = isinstance(var, nnx.LoRAParam) if lora else kind != "quant_scale" and var.dtype != "int8"
        out[_name(path)] = ParamInfo(tuple(var.shape), _axes(var), var.dtype, kind, bool(trainable))
    return out


def param_info(model: CausalLM) -> dict[str, ParamInfo]:
    return state_info(nnx.state(model), bool(model.config.lora.rank))


@functools.lru_cache(maxsize=64)
def abstract(config: Config, rules: tuple = DEFAULT_RULES, source: str = "") -> CausalLM:
    """The model with ShapeDtypeStructs for arrays: shapes and metadata without memory."""
    return nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0), rules=rules, source=source))


def param_table(config: Config, rules: tuple = DEFAULT_RULES) -> dict[str, ParamInfo]:
    """Every variable of a ``config``'s model, from its metadata (no arrays are made)."""
    return param_info(abstract(config, tuple(rules)))


@dataclasses.dataclass(frozen=True, eq=False)
class Decoder:
    """The hashable decode call ``sampling`` and the step use:
    ``decoder(params, tokens, positions, attention_mask, cache, cache_index, logits_range)``
    -> ``(logits, cache)``, plus :meth:`hidden` / :meth:`head` and :meth:`init_cache`."""
    graphdef: object
    treedef: object
    names: tuple
    info: dict = dataclasses.field(compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "_key", (self.graphdef, self.treedef, self.names))
        object.__setattr__(self, "_hash", hash(self._key))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Decoder) and (self is other or self._key == other._key)

    @property
    def config(self) -> Config:
        return self.abstract_module().config

    @functools.cached_property
    def _abstract(self):
        leaves = [jax.ShapeDtypeStruct(i.shape, i.dtype) for i in (self.info[n] for n in self.names)]
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))

    def abstract_module(self) -> CausalLM:
        return self._abstract

    @property
    def rules(self) -> tuple:
        return self.abstract_module().rules

    def module(self, params: dict) -> CausalLM:
        """The NNX module over ``params`` (arrays or tracers)."""
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, [params[n] for n in self.names]))

    def __call__(self, params, tokens, positions, attention_mask, cache=None, cache_index=0, logits_range=None):
        return self.module(params).forward(tokens, positions, attention_mask, cache, cache_index, logits_range)

    def hidden(self, params, tokens, positions, attention_mask, segment_ids=None):
        return self.module(params).hidden(tokens, positions, attention_mask, segment_ids=segment_ids)[0]

    def hidden_cached(self, params, tokens, positions, attention_mask, cache, cache_index):
        """(final hidden states ``[B, T, D]``, the cache with these tokens' keys and values written
        from slot ``cache_index``): a teacher-forced forward that reads what an earlier one wrote."""
        return self.module(params).hidden(tokens, positions, attention_mask, cache, cache_index)

    def features(self, params, tokens, positions, attention_mask, layers, segment_ids=None):
        """(final hidden, per-layer residual streams ``[K, B, T, D]`` of ``layers``), one forward."""
        return self.module(params).hidden_and_features(tokens, positions, attention_mask, layers, segment_ids)

    def head(self, params, x):
        return self.module(params).head_logits(x)

    def init_cache(self, batch, length):
        return self.abstract_module().init_cache(batch, length)

    def trainable(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if self.info[n].trainable)



_INTERNED: dict = {}  # one Decoder object per structure, so jit's static-argument lookups hit by identity


def split(model: CausalLM) -> tuple[Decoder, dict]:
    """(:class:`Decoder`, flat params) of an NNX model; models of one structure share one
    Decoder object (a jit cache lookup is then an identity check, not a graph comparison)."""
    gdef, state = nnx.split(model)
    pairs, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = tuple("/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)) for path, _ in pairs)
    info = state_info(state, bool(model.config.lora.rank))
    decoder = Decoder(gdef, treedef, names, info)
    decoder = _INTERNED.setdefault(decoder, decoder)
    return decoder, dict(zip(names, (leaf for _, leaf in pairs)))


def generate(model, prompt_ids, prompt_mask, opts: sampling.Sampling, rng=None):
    """:func:`sampling.generate` for an NNX model (split once here) or a ``(decode, params)`` pair: ``(tokens
    [B, N], mask [B, N])`` after left-padded prompts ``[B, P]``."""
    return sampling.generate(model if isinstance(model, tuple) else split(model), prompt_ids, prompt_mask, opts, rng)


def merge(decoder: Decoder, params: dict) -> CausalLM:
    return decoder.module(params)


def decoder_for(config: Config, rules: tuple = DEFAULT_RULES, source: str = "") -> Decoder:
    """The decode call of a ``config``'s model (no arrays are made)."""
    return split(abstract(config, tuple(rules), source))[0]


def init(config: Config, seed: int = 0, rules: tuple = DEFAULT_RULES, source: str = "") -> tuple[Decoder, dict]:
    """A freshly initialised model as (decode call, flat params)."""
    return split(CausalLM(config, rngs=nnx.Rngs(seed), rules=tuple(rules), source=source))


def with_config(model: CausalLM, **changes) -> CausalLM:
    """The same weights under a config with ``changes`` (execution fields: ``scan_layers``,
    ``remat``, ``decode_kernel``, ``attention_kernel``, ``output_vocab``)."""
    decoder, params = split(model)
    return decoder_for(model.config.replace(**changes), model.rules, model.source).module(params)
