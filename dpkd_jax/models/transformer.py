"""The decoder-only transformer that GPT-2 and OPT both are, as a Flax NNX module.

GPT-2 and OPT differ only in switches (pre/post LayerNorm, activation, position
offset, projected embeddings, final LayerNorm), so one forward serves both;
`gpt2.py` and `opt.py` hold what is theirs: config translation, the table of
HF weight names, FLOPs.

Parameters are stacked over layers (leading axis ``layers``) and the blocks
run under ``lax.scan`` (``Config.scan_layers``), so compile time does not grow
with depth. Every parameter carries logical axis names (``PARAM_AXES``) that
``sharding.py`` maps to mesh axes.

The forward is a pure function of (config, params, arrays), which is what
``sampling`` and the trainer jit; the NNX module holds the parameters as
``nnx.Param`` and calls it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..sharding import constrain

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Logical axes of activations (mapped to the mesh by sharding.RULES under a train step).
ACT = ("batch", None, None)                          # hidden states [B, T, D]
HEADS = ("batch", None, "heads", None)               # q, k, v [B, T, H, K]
CACHE = ("layers", "batch", None, "heads", None)     # KV cache [L, B, S, H, K]


@dataclasses.dataclass(frozen=True)
class Config:
    """Architecture plus numerics. Hashable: it is the static part of every jit."""
    model_type: str                 # "gpt2" or "opt": picks the HF weight table
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_positions: int
    activation: str = "gelu_new"
    pre_layer_norm: bool = True     # OPT-350m is post-LN
    final_layer_norm: bool = True
    embed_dim: int | None = None    # OPT word_embed_proj_dim when != d_model
    position_offset: int = 0        # OPT: 2
    layer_norm_eps: float = 1e-5
    bias: bool = True
    hf_config: str = ""             # the original config.json (JSON text), kept for export
    # numerics and execution
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    scan_layers: bool = True

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; known: {sorted(ACTIVATIONS)}")
        for f in ("param_dtype", "compute_dtype"):
            if getattr(self, f) not in DTYPES:
                raise ValueError(f"{f} must be one of {sorted(DTYPES)}, got {getattr(self, f)!r}")

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    @property
    def word_dim(self):
        return self.embed_dim or self.d_model

    @property
    def projected(self):
        return self.word_dim != self.d_model

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    # ---- the decoding protocol `sampling` uses: a hashable pure call ----
    def __call__(self, params, tokens, positions, attention_mask, cache=None, cache_index=0, logits_range=None):
        return forward(self, params, tokens, positions, attention_mask, cache, cache_index, logits_range)

    def init_cache(self, batch, length):
        return init_cache(self, batch, length)


def param_shapes(cfg: Config) -> dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]]:
    """Our parameter table: name -> (shape, logical axes). One place for init,
    loading checks and sharding."""
    L, D, H, K, F, E = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.word_dim
    t = {
        "embed/tokens": ((cfg.vocab_size, E), ("vocab", "embed")),
        "embed/positions": ((cfg.max_positions + cfg.position_offset, D), (None, "embed")),
        "blocks/ln1_scale": ((L, D), ("layers", "embed")),
        "blocks/ln1_bias": ((L, D), ("layers", "embed")),
        "blocks/qkv_w": ((L, D, 3, H, K), ("layers", "embed", None, "heads", "head_dim")),
        "blocks/out_w": ((L, H, K, D), ("layers", "heads", "head_dim", "embed")),
        "blocks/ln2_scale": ((L, D), ("layers", "embed")),
        "blocks/ln2_bias": ((L, D), ("layers", "embed")),
        "blocks/fc_w": ((L, D, F), ("layers", "embed", "mlp")),
        "blocks/proj_w": ((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.bias:
        t.update({
            "blocks/qkv_b": ((L, 3, H, K), ("layers", None, "heads", "head_dim")),
            "blocks/out_b": ((L, D), ("layers", "embed")),
            "blocks/fc_b": ((L, F), ("layers", "mlp")),
            "blocks/proj_b": ((L, D), ("layers", "embed")),
        })
    if cfg.final_layer_norm:
        t["final_ln/scale"] = ((D,), ("embed",))
        t["final_ln/bias"] = ((D,), ("embed",))
    if cfg.projected:
        t["embed/proj_in"] = ((E, D), (None, "embed"))
        t["embed/proj_out"] = ((D, E), ("embed", None))
    return t


def init_params(cfg: Config, rng, std=0.02) -> dict[str, jax.Array]:
    """Random init like HF's (normal(0, std) weights, zero biases, unit LN scales)."""
    out = {}
    keys = jax.random.split(rng, len(param_shapes(cfg)))
    for key, (name, (shape, _)) in zip(keys, sorted(param_shapes(cfg).items())):
        if name.endswith("_scale") or name.endswith("/scale"):
            v = jnp.ones(shape)
        elif name.endswith("_b") or name.endswith("/bias") or name.endswith("_bias"):
            v = jnp.zeros(shape)
        else:
            v = std * jax.random.normal(key, shape)
        out[name] = v.astype(DTYPES[cfg.param_dtype])
    return out


# ------------------------------------------------------------------ forward

def _layer_norm(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def positions_from_mask(attention_mask):
    """Left padding: a token's position is the number of real tokens before it.
    Padding slots get 0 (their outputs are masked anyway)."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)


def init_cache(cfg: Config, batch: int, length: int):
    """Empty KV cache: k and v ``[layers, B, S, heads, head_dim]`` in the compute dtype."""
    shape = (cfg.n_layers, batch, length, cfg.n_heads, cfg.head_dim)
    dt = DTYPES[cfg.compute_dtype]
    return {"k": constrain(jnp.zeros(shape, dt), CACHE), "v": constrain(jnp.zeros(shape, dt), CACHE)}


def _block(cfg: Config, p, x, key_mask, q_slots, cache=None, cache_index=0):
    """One transformer block. ``x`` [B, T, D]; ``key_mask`` [B, S]; ``q_slots`` [T]
    the cache slots of x. With ``cache=(k, v, layer)`` (k, v ``[L, B, S, H, K]``,
    all layers) the new keys and values are written in place at
    ``[layer, :, cache_index]`` and attention reads that layer's slots; without it
    (training, scoring) it attends over x itself (S = T)."""
    dt = x.dtype
    act = ACTIVATIONS[cfg.activation]
    ln = lambda y, s, b: _layer_norm(y, p[s], p[b], cfg.layer_norm_eps)
    bias = (lambda n: p[n].astype(dt)) if cfg.bias else (lambda n: 0)

    h = ln(x, "ln1_scale", "ln1_bias") if cfg.pre_layer_norm else x
    qkv = jnp.einsum("btd,dchk->btchk", h, p["qkv_w"].astype(dt)) + bias("qkv_b")
    q, k, v = (constrain(qkv[:, :, i], HEADS) for i in range(3))
    if cache is not None:
        # Write only the new slots into the whole cache (in place in the scan carry),
        # then read this layer's keys/values: no per-layer copy of the cache in and out.
        kc, vc, layer = cache
        start = (layer, 0, cache_index, 0, 0)
        kc = jax.lax.dynamic_update_slice(kc, k[None].astype(kc.dtype), start)
        vc = jax.lax.dynamic_update_slice(vc, v[None].astype(vc.dtype), start)
        k = jax.lax.dynamic_index_in_dim(kc, layer, keepdims=False).astype(dt)
        v = jax.lax.dynamic_index_in_dim(vc, layer, keepdims=False).astype(dt)
        cache = (kc, vc, layer)
    scores = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32)
    scores = scores / math.sqrt(cfg.head_dim)
    k_slots = jnp.arange(k.shape[1])
    allowed = (k_slots[None, :] <= q_slots[:, None])[None, None] & key_mask[:, None, None, :].astype(bool)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    attn = jnp.einsum("bhts,bshk->bthk", probs, v)
    attn = jnp.einsum("bthk,hkd->btd", attn, p["out_w"].astype(dt)) + bias("out_b")
    x = x + attn
    if not cfg.pre_layer_norm:
        x = ln(x, "ln1_scale", "ln1_bias")

    h = ln(x, "ln2_scale", "ln2_bias") if cfg.pre_layer_norm else x
    h = act(jnp.einsum("btd,df->btf", h, p["fc_w"].astype(dt)) + bias("fc_b"))
    x = x + jnp.einsum("btf,fd->btd", h, p["proj_w"].astype(dt)) + bias("proj_b")
    if not cfg.pre_layer_norm:
        x = ln(x, "ln2_scale", "ln2_bias")
    return x, cache


def hidden_states(cfg: Config, params, tokens, positions, attention_mask, cache=None, cache_index=0):
    """Final hidden states ``[B, T, D]`` (before the vocabulary projection) and the cache.

    tokens/positions ``[B, T]``; attention_mask ``[B, S]`` marks the valid key
    slots of the whole cache (``S = T`` without a cache); ``cache_index`` is the
    slot of ``tokens[:, 0]``. Attention is causal over slots and masked by it.
    """
    dt = DTYPES[cfg.compute_dtype]
    B, T = tokens.shape
    x = params["embed/tokens"][tokens].astype(dt)
    if cfg.projected:
        x = x @ params["embed/proj_in"].astype(dt)
    x = x + params["embed/positions"][positions + cfg.position_offset].astype(dt)
    x = constrain(x, ACT)

    q_slots = cache_index + jnp.arange(T)
    blocks = {k.split("/", 1)[1]: v for k, v in params.items() if k.startswith("blocks/")}

    if cache is None:
        def body(x, p):
            return constrain(_block(cfg, p, x, attention_mask, q_slots)[0], ACT), None
        carry = x
    else:
        # The cache rides in the carry and is updated in place, layer by layer.
        def body(carry, layer):
            x, kc, vc = carry
            p, i = layer
            x, (kc, vc, _) = _block(cfg, p, x, attention_mask, q_slots, (kc, vc, i), cache_index)
            return (constrain(x, ACT), kc, vc), None
        carry = (x, cache["k"], cache["v"])
        blocks = (blocks, jnp.arange(cfg.n_layers))

    if cfg.scan_layers:
        carry, _ = jax.lax.scan(body, carry, blocks)
    else:
        for i in range(cfg.n_layers):
            carry, _ = body(carry, jax.tree.map(lambda a: a[i], blocks))
    if cache is None:
        x, new_cache = carry, None
    else:
        x, kc, vc = carry
        new_cache = {"k": kc, "v": vc}
    if cfg.final_layer_norm:
        x = _layer_norm(x, params["final_ln/scale"], params["final_ln/bias"], cfg.layer_norm_eps)
    return x, new_cache


def lm_head(cfg: Config, params, x):
    """Tied vocabulary projection: hidden ``[..., D]`` -> logits ``[..., V]`` (compute dtype)."""
    dt = DTYPES[cfg.compute_dtype]
    x = x.astype(dt)
    if cfg.projected:
        x = x @ params["embed/proj_out"].astype(dt)
    return constrain(x @ params["embed/tokens"].astype(dt).T, ("batch", None, "vocab"))


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


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3× forward), Kaplan-style:
    2·(matmul params) per token forward plus 2·2·T·D per layer for attention."""
    D, F, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    per_layer = 2 * (3 * D * D + D * D + 2 * D * F) + 2 * 2 * seq_len * D
    head = 2 * cfg.word_dim * cfg.vocab_size + (4 * D * cfg.word_dim if cfg.projected else 0)
    return 3.0 * (L * per_layer + head)


def forward_flops_per_token(cfg: Config, seq_len: int) -> float:
    """Inference (forward-only) FLOPs per token."""
    return flops_per_token(cfg, seq_len) / 3.0


# --------------------------------------------------------------- the module

class CausalLM(nnx.Module):
    """A GPT-2 or OPT causal LM. Parameters are ``nnx.Param`` in ``self.params``
    (flat names from :func:`param_shapes`), each tagged with its logical axes.

    ``model(input_ids, attention_mask=mask)`` -> logits ``[B, T, V]``; with
    ``cache=``/``cache_index=`` it decodes incrementally and also returns the cache.
    """

    def __init__(self, config: Config, params: dict[str, Any] | None = None, *, rngs: nnx.Rngs | None = None):
        self.config = config
        if params is None:
            params = init_params(config, (rngs or nnx.Rngs(0)).params())
        table = param_shapes(config)
        if set(params) != set(table):
            raise ValueError(f"parameter names differ from the {config.model_type} table: "
                             f"missing {sorted(set(table) - set(params))}, unexpected {sorted(set(params) - set(table))}")
        self.params = nnx.Dict({
            name: nnx.Param(jnp.asarray(params[name]), logical_axes=table[name][1]) for name in sorted(table)})

    def arrays(self) -> dict[str, jax.Array]:
        """The parameters as a plain dict of arrays (what pure functions take)."""
        return {k: v[...] for k, v in self.params.items()}

    def decoder(self):
        """(hashable pure call, params) for `sampling`."""
        return self.config, self.arrays()

    def __call__(self, input_ids, attention_mask=None, positions=None, cache=None, cache_index=0):
        input_ids = jnp.asarray(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        logits, new_cache = forward(self.config, self.arrays(), input_ids, positions, attention_mask,
                                    cache, cache_index)
        return logits if cache is None else (logits, new_cache)

    def flops_per_token(self, seq_len: int) -> float:
        return flops_per_token(self.config, seq_len)

    def num_params(self) -> int:
        return int(sum(np.prod(s) for s, _ in param_shapes(self.config).values()))
