"""The decoder-only transformer every family is: embeddings, a stack of blocks
(attention + MLP with pre-, post- or sandwich norms), a final norm and a head.

Models are pure functions of ``(Config, params, arrays)`` behind a small typed
interface (:class:`CausalLM`): params are a flat dict ``name -> array`` whose
shapes and logical axes come from :func:`param_table`, the one table that init,
loading checks and ``sharding.param_shardings`` all read. (No NNX module: nothing
read its metadata; the table is the metadata.)

Block parameters are stacked over a leading ``layers`` axis and run under
``lax.scan`` (``Config.scan_layers``), so compile time does not grow with depth;
per-layer differences (Gemma's sliding-window layers) ride along as scanned data.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..sharding import constrain
from . import components as C
from .config import DTYPES, Config

# Logical axes of activations (mapped to the mesh by Config.rules inside a mesh context).
ACT = ("batch", None, None)                                 # hidden states [B, T, D]
CACHE = ("layers", "batch", "kv_heads", None, "head_dim")   # KV cache [L, B, G, S, K]


def block_table(cfg: Config) -> dict:
    """One layer's parameters: name -> (shape, logical axes)."""
    t = {}
    t.update(C.norm_table("attn_norm", cfg.norm, cfg.d_model))
    t.update(C.attention_table(cfg))
    t.update(C.norm_table("mlp_norm", cfg.norm, cfg.d_model))
    t.update(C.mlp_table(cfg))
    if cfg.sandwich_norm:
        t.update(C.norm_table("post_attn_norm", cfg.norm, cfg.d_model))
        t.update(C.norm_table("post_mlp_norm", cfg.norm, cfg.d_model))
    return t


def param_table(cfg: Config) -> dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]]:
    """Every parameter: name -> (shape, logical axes). Block parameters are stacked."""
    D, E = cfg.d_model, cfg.word_dim
    t = {"embed/tokens": ((cfg.vocab_size, E), ("vocab", "embed"))}
    if cfg.attention.rope is None:
        t["embed/positions"] = ((cfg.max_positions + cfg.position_offset, D), (None, "embed"))
    if cfg.projected:
        t["embed/proj_in"] = ((E, D), (None, "embed"))
        t["embed/proj_out"] = ((D, E), ("embed", None))
    for name, (shape, axes) in block_table(cfg).items():
        t[f"blocks/{name}"] = ((cfg.n_layers, *shape), ("layers", *axes))
    if cfg.final_norm:
        t.update(C.norm_table("final_norm", cfg.norm, D))
    if not cfg.tied_head:
        t["head/w"] = ((E, cfg.vocab_size), ("embed", "vocab"))
    return t


def _is_norm_scale(name):
    return name.endswith("/scale")


def init_params(cfg: Config, rng, std=0.02) -> dict[str, jax.Array]:
    """Random init like HF's: normal(0, std) weights, zero biases, unit norm scales
    (zero for Gemma's (1 + w) form)."""
    out = {}
    table = param_table(cfg)
    keys = jax.random.split(rng, len(table))
    for key, (name, (shape, _)) in zip(keys, sorted(table.items())):
        if _is_norm_scale(name):
            v = jnp.full(shape, 1.0 - cfg.norm.offset)
        elif name.endswith(("_b", "/bias")):
            v = jnp.zeros(shape)
        else:
            v = std * jax.random.normal(key, shape)
        out[name] = v.astype(DTYPES[cfg.param_dtype])
    return out


def positions_from_mask(attention_mask):
    """Left padding: a token's position is the number of real tokens before it.
    Padding slots get 0 (their outputs are masked anyway)."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)


def init_cache(cfg: Config, batch: int, length: int):
    """Empty KV cache: k and v ``[layers, B, kv_heads, S, head_dim]`` in the compute dtype
    (heads before slots, so attention reads a layer's keys without a transpose)."""
    shape = (cfg.n_layers, batch, cfg.kv_heads, length, cfg.head_size)
    dt = DTYPES[cfg.compute_dtype]
    return {"k": constrain(jnp.zeros(shape, dt), CACHE, cfg.rules),
            "v": constrain(jnp.zeros(shape, dt), CACHE, cfg.rules)}


def _layer_meta(cfg: Config):
    """Per-layer scanned data: sliding window (0 = full) and layer index."""
    windows = cfg.attention.layer_windows or (0,) * cfg.n_layers
    return {"window": jnp.asarray(windows, jnp.int32), "index": jnp.arange(cfg.n_layers)}


def _rope(cfg: Config, positions):
    a = cfg.attention
    if a.rope is None:
        return None
    glob = C.rope_tables(a.rope, positions, cfg.head_size)
    loc = C.rope_tables(a.local_rope, positions, cfg.head_size) if a.local_rope else glob
    return glob, loc


def _block(cfg: Config, p, meta, x, ropes, key_mask, q_slots, cache, cache_index):
    """One block. ``x [B, T, D]``; ``key_mask [B, S]``; ``q_slots [T]``. With
    ``cache=(k, v)`` (``[L, B, S, G, K]``, all layers) the new keys and values are
    written in place at ``[layer, :, cache_index]`` and attention reads that layer."""
    dt = x.dtype
    n = lambda name, y: C.norm(cfg.norm, p, name, y)
    rope_cs = None
    if ropes is not None:
        local = meta["window"] > 0
        rope_cs = tuple(jnp.where(local, l, g) for g, l in zip(*ropes))
    h = n("attn_norm", x) if cfg.pre_norm else x
    q, k, v = C.project_qkv(cfg, p, h, rope_cs)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, G, T, K]: the cache's layout
    if cache is not None:
        kc, vc = cache
        start = (meta["index"], 0, 0, cache_index, 0)
        kc = jax.lax.dynamic_update_slice(kc, k[None].astype(kc.dtype), start)
        vc = jax.lax.dynamic_update_slice(vc, v[None].astype(vc.dtype), start)
        # Attend over the slots key_mask covers only (static): the filled part, as decoding sets it.
        read = lambda c: jax.lax.dynamic_slice(c, (meta["index"], 0, 0, 0, 0),
                                               (1, *c.shape[1:3], key_mask.shape[1], c.shape[4]))[0].astype(dt)
        k, v = read(kc), read(vc)
        cache = (kc, vc)
    if cache is not None and C.pallas_decode_ok(cfg, q.shape[1], k.shape[2]):
        attn = C.attend_decode_pallas(cfg, q, k, v, key_mask, q_slots[0] + 1)
    else:
        attn = C.attend(cfg, q, k, v, C.attention_mask(q_slots, k.shape[2], key_mask, meta["window"]))
    h = C.attention_out(p, attn)
    if cfg.sandwich_norm:
        h = n("post_attn_norm", h)
    x = x + h
    if not cfg.pre_norm:
        x = n("attn_norm", x)
    h = n("mlp_norm", x) if cfg.pre_norm else x
    h = C.mlp(cfg.mlp, p, h)
    if cfg.sandwich_norm:
        h = n("post_mlp_norm", h)
    x = x + h
    if not cfg.pre_norm:
        x = n("mlp_norm", x)
    return constrain(x, ACT, cfg.rules), cache


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def embed(cfg: Config, params, tokens, positions):
    dt = DTYPES[cfg.compute_dtype]
    x = params["embed/tokens"][tokens].astype(dt)
    if cfg.projected:
        x = x @ params["embed/proj_in"].astype(dt)
    if cfg.embed_scale:
        x = x * jnp.asarray(cfg.d_model ** 0.5, dt)
    if "embed/positions" in params:
        x = x + params["embed/positions"][positions + cfg.position_offset].astype(dt)
    return constrain(x, ACT, cfg.rules)


def hidden_states(cfg: Config, params, tokens, positions, attention_mask, cache=None, cache_index=0):
    """Final hidden states ``[B, T, D]`` (before the head) and the updated cache.

    tokens/positions ``[B, T]``; attention_mask ``[B, S]`` marks the valid key
    slots (``S = T`` without a cache); with a cache, attention reads its first ``S``
    slots only, so a caller decoding early in a long cache passes a short mask.
    ``cache_index`` is the slot of ``tokens[:, 0]``. Attention is causal over slots.
    """
    x = embed(cfg, params, tokens, positions)
    ropes = _rope(cfg, positions)
    q_slots = cache_index + jnp.arange(tokens.shape[1])
    blocks = {k.split("/", 1)[1]: v for k, v in params.items() if k.startswith("blocks/")}
    xs = (blocks, _layer_meta(cfg))

    if cache is None:
        def body(x, layer):
            return _block(cfg, *layer, x, ropes, attention_mask, q_slots, None, 0)[0], None
        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat])
        carry = x
    else:
        # The cache rides in the carry and is updated in place, layer by layer.
        def body(carry, layer):
            x, kv = carry[0], carry[1:]
            x, kv = _block(cfg, *layer, x, ropes, attention_mask, q_slots, kv, cache_index)
            return (x, *kv), None
        carry = (x, cache["k"], cache["v"])

    if cfg.scan_layers:
        carry, _ = jax.lax.scan(body, carry, xs)
    else:
        for i in range(cfg.n_layers):
            carry, _ = body(carry, jax.tree.map(lambda a: a[i], xs))
    x, new_cache = (carry, None) if cache is None else (carry[0], {"k": carry[1], "v": carry[2]})
    if cfg.final_norm:
        x = C.norm(cfg.norm, params, "final_norm", x)
    return x, new_cache


def lm_head(cfg: Config, params, x):
    """Hidden ``[..., D]`` -> logits ``[..., V']`` over the first ``cfg.logits_vocab`` rows,
    tied or untied, with optional final soft-capping."""
    dt = DTYPES[cfg.compute_dtype]
    x = x.astype(dt)
    if cfg.projected:
        x = x @ params["embed/proj_out"].astype(dt)
    n = cfg.logits_vocab
    w = params["embed/tokens"][:n].T if cfg.tied_head else params["head/w"][:, :n]
    logits = x @ w.astype(dt)
    if cfg.final_softcap:
        cap = cfg.final_softcap
        logits = (jnp.tanh(logits.astype(jnp.float32) / cap) * cap).astype(dt)
    return constrain(logits, ("batch", None, "vocab"), cfg.rules)


def forward(cfg: Config, params, tokens, positions, attention_mask, cache=None, cache_index=0, logits_range=None):
    """Logits ``[B, T, V]`` and the updated cache (None without one).

    ``logits_range=(start, stop)`` (static) projects only those positions to the
    vocabulary: scoring a response needs its positions only, and the ``[B, T, V]``
    projection is the largest tensor of the forward.
    """
    x, cache = hidden_states(cfg, params, tokens, positions, attention_mask, cache, cache_index)
    if logits_range is not None:
        x = x[:, logits_range[0]:logits_range[1]]
    return lm_head(cfg, params, x), cache


def forward_flops_per_token(cfg: Config, seq_len: int) -> float:
    """Inference FLOPs per token, Kaplan-style: 2 x matmul parameters (counting KV heads
    and gating) plus attention over ``seq_len``."""
    per_layer = C.attention_flops(cfg, seq_len) + C.mlp_flops(cfg)
    head = 2 * cfg.word_dim * cfg.logits_vocab + (4 * cfg.d_model * cfg.word_dim if cfg.projected else 0)
    return float(cfg.n_layers * per_layer + head)


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)


class CausalLM:
    """A causal LM: its :class:`Config` and a flat dict of parameter arrays.

    ``model(input_ids, attention_mask=mask)`` -> logits ``[B, T, V]``; with
    ``cache=``/``cache_index=`` it decodes incrementally and also returns the cache.
    """

    def __init__(self, config: Config, params: dict[str, Any] | None = None, *, rng=None):
        self.config = config
        if params is None:
            params = init_params(config, rng if rng is not None else jax.random.PRNGKey(0))
        table = param_table(config)
        if set(params) != set(table):
            raise ValueError(f"parameter names differ from the {config.model_type} table: "
                             f"missing {sorted(set(table) - set(params))}, unexpected {sorted(set(params) - set(table))}")
        self.params = {name: jnp.asarray(params[name]) for name in sorted(table)}

    def arrays(self) -> dict[str, jax.Array]:
        return dict(self.params)

    def decoder(self):
        """(hashable pure call, params) for `sampling`."""
        return self.config, self.arrays()

    def __call__(self, input_ids, attention_mask=None, positions=None, cache=None, cache_index=0):
        input_ids = jnp.asarray(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        logits, new_cache = forward(self.config, self.params, input_ids, positions, attention_mask, cache,
                                    cache_index)
        return logits if cache is None else (logits, new_cache)

    def flops_per_token(self, seq_len: int) -> float:
        return flops_per_token(self.config, seq_len)

    def num_params(self) -> int:
        return int(sum(np.prod(s) for s, _ in param_table(self.config).values()))
