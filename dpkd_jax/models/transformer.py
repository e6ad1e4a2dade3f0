"""The decoder-only transformer every family is, as a Flax NNX module: embeddings, a
stack of blocks (attention + MLP with pre-, post- or sandwich norms), a final norm and
a head.

:class:`CausalLM` is an ``nnx.Module``: ``model(input_ids, attention_mask)`` gives logits
``[B, T, V]``; :meth:`CausalLM.hidden` and :meth:`CausalLM.head` are the two halves (final
hidden states, then the vocabulary projection), for losses computed from hidden states.

Block parameters are one stacked :class:`Block` (a leading ``layers`` axis on every
variable); :meth:`CausalLM.hidden` splits it once and runs ``lax.scan`` over its state,
merging one layer's view per step, so compile time does not grow with depth. Per-layer
differences (Gemma's sliding-window layers) ride along as scanned data. The KV cache is
explicit arrays in and out, so sampling stays a pure function: stacked ``[L, B, G, S, K]`` for a
scanned model (the scan's carry), one ``[B, G, S, K]`` array per layer for an unrolled one (a layer
then attends over its own buffer, where slicing it out of a stacked one copies every layer's cache
at every decode step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..sharding import DEFAULT_RULES, constrain
from . import attention as A
from . import components as C
from .config import DTYPES, Config

# Logical axes of activations (mapped to the mesh by the model's rules inside a mesh context).
ACT = ("batch", "length", None)                             # hidden states [B, T, D]
CACHE = ("layers", "batch", "kv_heads", None, "head_dim")   # KV cache [L, B, G, S, K] (per layer: [B, G, S, K])
_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Pass(NamedTuple):
    """What every layer of one forward pass shares: ``ropes`` (global, local) tables, the valid key
    slots ``key_mask [B, S]``, the cache slot of the first new token, the activation rules and
    optional segment ids (``[B, T]``: packed examples attend only within their own); ``context > 1``: the
    sequence is in ``attention.balanced_order`` over that many devices of the mesh's context axis."""
    cfg: Config
    ropes: tuple | None
    key_mask: jax.Array
    cache_index: object
    rules: tuple
    segment_ids: jax.Array | None = None
    context: int = 1


class Block(nnx.Module):
    """One decoder layer (built stacked: ``mk.layers`` copies on a leading axis)."""

    def __init__(self, cfg: Config, mk: C.Stack):
        norm = lambda: C.NormLayer(cfg.norm, cfg.d_model, mk)
        self.pre_norm = cfg.pre_norm
        self.attn_norm = norm()
        self.attn = C.AttentionLayer(cfg, mk)
        self.mlp_norm = norm()
        self.mlp = C.MlpLayer(cfg, mk)
        self.post_attn_norm = norm() if cfg.sandwich_norm else None
        self.post_mlp_norm = norm() if cfg.sandwich_norm else None

    def __call__(self, x, window, layer, cache, p: Pass):
        """``x [B, T, D]``; ``window`` (0: full attention) and ``layer`` index of this layer. With
        ``cache=(k, v)`` this layer's keys and values are written in place at slot ``cache_index``
        and attention reads its first ``S`` slots: of the stacked ``[L, B, G, S, K]`` at ``layer``,
        or of this layer's own ``[B, G, S, K]`` when ``layer`` is None."""
        cfg, key_mask = p.cfg, p.key_mask
        rope_cs = None
        if p.ropes is not None:
            rope_cs = tuple(jnp.where(window > 0, l, g) for g, l in zip(*p.ropes))
        h = self.attn_norm(x) if self.pre_norm else x
        q, k, v = self.attn.qkv(h, rope_cs)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, G, T, K]: the cache's layout
        if cache is not None:
            cache = tuple(_write(c, new, layer, p.cache_index) for c, new in zip(cache, (k, v)))
            k, v = (_read(c, layer, key_mask.shape[1]).astype(x.dtype) for c in cache)
        segs = (p.segment_ids, p.segment_ids) if p.segment_ids is not None else (None, None)
        attn = A.attend(cfg, q, k, v, A.Mask(key_mask, p.cache_index, window, *segs, p.context))
        h = self.attn.out(attn)
        x = x + (self.post_attn_norm(h) if self.post_attn_norm is not None else h)
        if not self.pre_norm:
            x = self.attn_norm(x)
        h = self.mlp(self.mlp_norm(x) if self.pre_norm else x)
        x = x + (self.post_mlp_norm(h) if self.post_mlp_norm is not None else h)
        if not self.pre_norm:
            x = self.mlp_norm(x)
        return constrain(x, ACT, p.rules), cache


def _kv_of(cache):
    """The layers' (k, v) from a cache dict; with an int8 cache each is ``(int8 values, scales)``."""
    if "k_scale" in cache:
        return (cache["k"], cache["k_scale"]), (cache["v"], cache["v_scale"])
    return cache["k"], cache["v"]


def _cache_of(kv, quantized: bool) -> dict:
    """The cache dict of the layers' (k, v), as :func:`_kv_of` read it."""
    k, v = kv
    if quantized:
        return {"k": k[0], "k_scale": k[1], "v": v[0], "v_scale": v[1]}
    return {"k": k, "v": v}


def _layer_of(part, i):
    """Layer ``i``'s cache of an unrolled model's part: a tuple of per-layer arrays, or (values, scales) of them."""
    return (part[0][i], part[1][i]) if isinstance(part[0], tuple) else part[i]


def _stacked(per_layer):
    """Per-layer caches back into the part's layout: a tuple of arrays, or (values, scales) tuples."""
    if isinstance(per_layer[0], tuple):
        return tuple(p[0] for p in per_layer), tuple(p[1] for p in per_layer)
    return per_layer


def quantize_kv(x):
    """int8 keys or values with one scale per head and slot: ``x [B, G, T, K]`` -> (``round(x / s)`` int8,
    ``s = max|x| / 127`` ``[B, G, T, 1]`` float32)."""
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    return jnp.clip(jnp.round(x.astype(jnp.float32) / scale), -127, 127).astype(jnp.int8), scale


def _write(c, new, layer, index):
    if isinstance(c, tuple):  # int8 values and their scales
        return tuple(_write(part, q, layer, index) for part, q in zip(c, quantize_kv(new)))
    if layer is None:
        return jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (0, 0, index, 0))
    return jax.lax.dynamic_update_slice(c, new[None].astype(c.dtype), (layer, 0, 0, index, 0))


def _read(c, layer, slots):
    if isinstance(c, tuple):
        return _read(c[0], layer, slots).astype(jnp.float32) * _read(c[1], layer, slots)
    if layer is None:
        return c if slots == c.shape[2] else c[:, :, :slots]
    return jax.lax.dynamic_slice(c, (layer, 0, 0, 0, 0), (1, *c.shape[1:3], slots, c.shape[4]))[0]


def positions_from_mask(attention_mask):
    """Left padding: a token's position is the number of real tokens before it.
    Padding slots get 0 (their outputs are masked anyway)."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)


class CausalLM(nnx.Module):
    """A causal LM as an NNX module, built from a :class:`Config` (random init like HF's:
    normal(0, 0.02) matrices, zero biases, unit norm scales).

    ``rules`` (logical axis -> mesh axes) constrain activations inside a mesh context;
    ``source`` is the original ``config.json`` as JSON text, written back over on export.
    """

    def __init__(self, config: Config, *, rngs: nnx.Rngs | None = None, rules: tuple = DEFAULT_RULES,
                 source: str = ""):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        dt = DTYPES[config.param_dtype]
        mk = C.Stack(rngs, dt)
        self.config, self.rules, self.source = config, tuple(rules), source
        self.embed = C.Embed(config, mk)
        self.blocks = Block(config, C.Stack(rngs, dt, layers=config.n_layers))
        self.final_norm = C.NormLayer(config.norm, config.d_model, mk) if config.final_norm else None
        self.head = None if config.tied_head else C.Linear(
            (config.word_dim,), (config.vocab_size,), ("embed",), ("vocab",), mk, quantize=config.quantize)

    # ---- the user's call ----
    def __call__(self, input_ids, attention_mask=None, positions=None, cache=None, cache_index=0):
        """Logits ``[B, T, V]`` (with ``cache``: ``(logits, new cache)``)."""
        input_ids = jnp.asarray(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        logits, new_cache = self.forward(input_ids, positions, attention_mask, cache, cache_index)
        return logits if cache is None else (logits, new_cache)

    def forward(self, tokens, positions, attention_mask, cache=None, cache_index=0, logits_range=None):
        """Logits and the updated cache (None without one). ``logits_range=(start, stop)``
        (static) projects only those positions to the vocabulary."""
        x, cache = self.hidden(tokens, positions, attention_mask, cache, cache_index)
        if logits_range is not None:
            x = x[:, logits_range[0]:logits_range[1]]
        return self.head_logits(x), cache

    # ---- the two halves ----
    def hidden(self, tokens, positions, attention_mask, cache=None, cache_index=0, segment_ids=None):
        """Final hidden states ``[B, T, D]`` (after the final norm) and the updated cache.

        tokens/positions ``[B, T]``; attention_mask ``[B, S]`` marks the valid key slots
        (``S = T`` without a cache; with one, attention reads its first ``S`` slots).
        ``cache_index`` is the slot of ``tokens[:, 0]``. Attention is causal over slots, and
        with ``segment_ids [B, T]`` (no cache) within each segment.
        """
        x, cache, _ = self._run(tokens, positions, attention_mask, cache, cache_index, (), segment_ids)
        return x, cache

    def hidden_and_features(self, tokens, positions, attention_mask, layers: tuple, segment_ids=None):
        """(final hidden ``[B, T, D]``, the residual stream after each block in ``layers``
        ``[K, B, T, D]``) from one forward: the intermediates come out of the layer scan as its
        per-layer output (what ``sow`` gives an unscanned module; feature distillation reads them)."""
        x, _, feats = self._run(tokens, positions, attention_mask, None, 0, tuple(layers), segment_ids)
        return x, feats

    def _run(self, tokens, positions, attention_mask, cache, cache_index, collect, segment_ids=None):
        cfg = self.config
        context = A.context_shards(tokens.shape[1], attention_mask.shape[1], cache)
        if context > 1:  # every per-token input in the balanced layout; the outputs go back at the end
            order = A.balanced_order(tokens.shape[1], context)
            tokens, positions, attention_mask = (a[:, order] for a in (tokens, positions, attention_mask))
            segment_ids = None if segment_ids is None else segment_ids[:, order]
        x = constrain(self.embed(tokens, positions, DTYPES[cfg.compute_dtype]), ACT, self.rules)
        shared = Pass(cfg, _ropes(cfg, positions), attention_mask, cache_index, self.rules, segment_ids, context)
        gdef, layers = nnx.split(self.blocks)
        windows = jnp.asarray(cfg.attention.layer_windows or (0,) * cfg.n_layers, jnp.int32)
        xs = (layers, windows, jnp.arange(cfg.n_layers))

        def block(x, kv, layer):
            state, window, index = layer
            return nnx.merge(gdef, state)(x, window, index, kv, shared)
        if cfg.remat != "none" and cache is None:
            block = jax.checkpoint(block, policy=_REMAT_POLICIES[cfg.remat])
        kv = None if cache is None else _kv_of(cache)
        if cfg.scan_layers:
            def body(carry, layer):
                x, kv = block(*carry, layer)
                return (x, kv), (x if collect else None)
            (x, kv), per_layer = jax.lax.scan(body, (x, kv), xs)
        else:
            x, kv, per_layer = self._unrolled(block, x, kv, xs, collect)
        feats = per_layer[jnp.asarray(collect)] if collect else None
        if self.final_norm is not None:
            x = self.final_norm(x)
        if context > 1:
            restore = A.restore_order(tokens.shape[1], context)
            x, feats = x[:, restore], None if feats is None else feats[:, :, restore]
        return x, None if kv is None else _cache_of(kv, "k_scale" in cache), feats

    def _unrolled(self, block, x, kv, xs, collect):
        """The layers one after another, each on its own cache arrays (``kv``: per-layer tuples)."""
        outs, new = [], []
        L = self.config.n_layers
        # split, not a[i]: the gradient of a split is one concatenate, of L slices L pads summed into [L, ...]
        layers = jax.tree.map(lambda a: [p[0] for p in jnp.split(a, L)], xs[:2])
        for i in range(L):
            state, window = jax.tree.map(lambda parts: parts[i], layers, is_leaf=lambda v: isinstance(v, list))
            x, kv_i = block(x, None if kv is None else tuple(_layer_of(part, i) for part in kv), (state, window, None))
            outs.append(x)
            new.append(kv_i)
        per_layer = jnp.stack(outs) if collect else None
        return x, None if kv is None else tuple(_stacked(tuple(n[j] for n in new)) for j in range(2)), per_layer

    def head_logits(self, x):
        """Hidden ``[..., D]`` -> logits ``[..., V']`` over the first ``config.logits_vocab`` rows,
        tied or untied, with optional final soft-capping."""
        cfg = self.config
        dt = DTYPES[cfg.compute_dtype]
        x = x.astype(dt)
        if self.embed.proj_out is not None:
            x = x @ self.embed.proj_out[...].astype(dt)
        n = cfg.logits_vocab
        if self.head is None:
            logits = x @ self.embed.tokens[...][:n].T.astype(dt)
        else:
            logits = self.head(x)[..., :n]
        if cfg.final_softcap:
            cap = cfg.final_softcap
            logits = (jnp.tanh(logits.astype(jnp.float32) / cap) * cap).astype(dt)
        # [B, T, V] splits its slots over the context axis; a loss's chunk of tokens [N, V] keeps its batch rule
        return constrain(logits, ("batch", "length" if logits.ndim == 3 else None, "vocab"), self.rules)

    def init_cache(self, batch: int, length: int):
        return init_cache(self.config, batch, length, self.rules)

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(self, nnx.Param))))

    def flops_per_token(self, seq_len: int) -> float:
        return flops_per_token(self.config, seq_len)


def _ropes(cfg: Config, positions):
    a = cfg.attention
    if a.rope is None:
        return None
    glob = C.rope_tables(a.rope, positions, cfg.head_size)
    loc = C.rope_tables(a.local_rope, positions, cfg.head_size) if a.local_rope else glob
    return glob, loc


def init_cache(cfg: Config, batch: int, length: int, rules=DEFAULT_RULES):
    """Empty KV cache: k and v ``[layers, B, kv_heads, S, head_dim]`` in the compute dtype (heads
    before slots, so attention reads a layer's keys without a transpose); for an unrolled model, a
    tuple of ``layers`` arrays ``[B, kv_heads, S, head_dim]`` each."""
    shape = (batch, cfg.kv_heads, length, cfg.head_size)

    def empty(dt, last):
        if cfg.scan_layers:
            return constrain(jnp.zeros((cfg.n_layers, *shape[:-1], last), dt), CACHE, rules)
        return tuple(constrain(jnp.zeros((*shape[:-1], last), dt), CACHE[1:], rules) for _ in range(cfg.n_layers))
    if cfg.kv_cache == "int8":  # half the bytes of bfloat16 plus one float32 scale per head and slot
        return {"k": empty(jnp.int8, cfg.head_size), "k_scale": empty(jnp.float32, 1),
                "v": empty(jnp.int8, cfg.head_size), "v_scale": empty(jnp.float32, 1)}
    dt = DTYPES[cfg.compute_dtype]
    return {"k": empty(dt, cfg.head_size), "v": empty(dt, cfg.head_size)}


def forward_flops_per_token(cfg: Config, seq_len: int) -> float:
    """Inference FLOPs per token, Kaplan-style: 2 x matmul parameters (counting KV heads
    and gating) plus attention over ``seq_len``."""
    per_layer = C.attention_flops(cfg, seq_len) + C.mlp_flops(cfg)
    head = 2 * cfg.word_dim * cfg.logits_vocab + (4 * cfg.d_model * cfg.word_dim if cfg.projected else 0)
    return float(cfg.n_layers * per_layer + head)


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
