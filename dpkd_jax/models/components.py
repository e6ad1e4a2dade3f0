"""Shared building blocks as Flax NNX modules: norms, linear maps (with LoRA and
weight-only int8), embeddings, attention projections with KV heads, MLPs, plus the pure
helpers they use (RoPE, the Pallas decode kernel's call). Attention itself, every kernel
of it, is in :mod:`attention`.

Every parameter is an ``nnx.Param`` made by :func:`param`, whose metadata carries its
logical axes (``out_sharding``) and its kind (``weight``, ``embedding``, ``position``,
``bias``, ``scale``, ``lora_a``, ``lora_b``, ``quant_scale``). Those two fields are the one
source of truth that init (:func:`init_value`), weight decay (:data:`DECAYED`), export
(:data:`VECTOR_KINDS`) and sharding all read.

A :class:`Stack` with ``layers=L`` gives every parameter a leading ``layers`` axis: the
decoder builds one stacked :class:`~dpkd_jax.models.transformer.Block` and scans over it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import Config, LoRA, Norm, Rope

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
NEG = float(np.finfo(np.float32).min)

# Parameter kinds. Init by kind (std for normal draws; a norm scale is 1 - offset), and the
# kinds that get weight decay. Export and the loaders read the same kinds.
KINDS = ("weight", "embedding", "position", "bias", "scale", "lora_a", "lora_b", "quant_scale")
DECAYED = frozenset({"weight", "embedding", "lora_a", "lora_b"})
VECTOR_KINDS = frozenset({"bias", "scale"})


class Stack:
    """Where a component's parameters come from: rngs, dtype, and the optional leading layer axis."""

    def __init__(self, rngs: nnx.Rngs, dtype, layers: int | None = None, std: float = 0.02):
        self.rngs, self.dtype, self.layers, self.std = rngs, dtype, layers, std

    def shape(self, shape, axes):
        if self.layers is None:
            return tuple(shape), tuple(axes)
        return (self.layers, *shape), ("layers", *axes)


def init_value(kind: str, shape, dtype, key, *, std: float = 0.02, offset: float = 0.0):
    """A parameter's initial value by kind: normal(0, std) for matrices and LoRA A, zeros for
    biases, LoRA B and int8 values, ``1 - offset`` for norm scales, ones for int8 scales."""
    if kind == "scale":
        return jnp.full(shape, 1.0 - offset, dtype)
    if kind == "quant_scale":
        return jnp.ones(shape, dtype)
    if kind in ("bias", "lora_b") or jnp.dtype(dtype) == jnp.int8:
        return jnp.zeros(shape, dtype)
    return normal(key, shape, std).astype(dtype)


_FLAT_MAX = 1 << 24


@functools.partial(jax.jit, static_argnums=1)
def _flat_normal(key, n):
    return jax.random.normal(key, (n,))


def normal(key, shape, std):
    """``std * jax.random.normal(key, shape)``, float32, bit for bit, with one compiled sampler
    per power-of-two size instead of one per shape (each ~0.8 s to compile on a 2-core CPU: most
    of a small model's init). Partitionable threefry draws element ``i`` from ``(key, i)``
    alone, so a longer flat draw begins with the same numbers."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    # without partitionable threefry the bits depend on the total size; a large matrix draws at its own
    # shape (its compile is small beside its work, and the flat draw would hold up to twice its memory)
    if not jax.config.jax_threefry_partitionable or n > _FLAT_MAX:
        return std * jax.random.normal(key, shape)
    return _scaled_head(_flat_normal(key, 1 << max(n - 1, 0).bit_length()), shape, jnp.float32(std))


@functools.partial(jax.jit, static_argnums=1)
def _scaled_head(flat, shape, std):
    # a program apart from the sampler's: fused into it, XLA rounds the product differently
    return std * flat[:math.prod(shape)].reshape(shape)


def param(mk: Stack, kind: str, shape, axes, *, offset: float = 0.0, variable=nnx.Param, dtype=None):
    """One parameter with its logical axes and kind in its metadata, initialised by kind."""
    shape, axes = mk.shape(shape, axes)
    value = init_value(kind, shape, dtype or mk.dtype, mk.rngs.params(), std=mk.std, offset=offset)
    return variable(value, out_sharding=axes, kind=kind, eager_sharding=False)


# ------------------------------------------------------------------- norms

class NormLayer(nnx.Module):
    """LayerNorm (with or without bias) or RMSNorm over the last axis, in float32; the scale
    is ``w`` or Gemma's ``(1 + w)``."""

    def __init__(self, spec: Norm, dim: int, mk: Stack, axis: str | None = "embed"):
        self.spec = spec
        self.scale = param(mk, "scale", (dim,), (axis,), offset=spec.offset)
        self.bias = param(mk, "bias", (dim,), (axis,)) if spec.kind == "layernorm" and spec.bias else None

    def __call__(self, x):
        s = self.spec
        x32 = x.astype(jnp.float32)
        if s.kind == "layernorm":
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + s.eps)
        y = y * (self.scale[...].astype(jnp.float32) + s.offset)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


# ----------------------------------------------------------------- linear

class Linear(nnx.Module):
    """``y = x ⋅ w (+ b)``, contracting the last ``len(in_shape)`` axes of ``x`` with the first
    of ``w [*in, *out]``.

    ``lora`` (rank > 0): ``+ (alpha / r) · (x ⋅ A) ⋅ B`` with ``A [*in, r]``, ``B [r, *out]`` as
    ``nnx.LoRAParam`` (B starts at zero, so the adapted model starts equal to the base).
    ``quantize="int8"``: ``w`` holds int8 values and ``scale`` one float per output channel;
    ``(x ⋅ q) · scale`` equals ``x ⋅ (q · scale)``, so the weight is dequantized inside the matmul.
    """

    def __init__(self, in_shape, out_shape, in_axes, out_axes, mk: Stack, *, bias=False, lora: LoRA | None = None,
                 quantize: str = "none"):
        self.n_in = len(in_shape)
        self.w = param(mk, "weight", (*in_shape, *out_shape), (*in_axes, *out_axes),
                       dtype=jnp.int8 if quantize == "int8" else None)
        self.scale = param(mk, "quant_scale", out_shape, out_axes, dtype=jnp.float32) if quantize == "int8" else None
        self.b = param(mk, "bias", out_shape, out_axes) if bias else None
        self.lora_scale = lora.alpha / lora.rank if lora is not None and lora.rank else 0.0
        if self.lora_scale:
            self.lora_a = param(mk, "lora_a", (*in_shape, lora.rank), (*in_axes, None), variable=nnx.LoRAParam)
            self.lora_b = param(mk, "lora_b", (lora.rank, *out_shape), (None, *out_axes), variable=nnx.LoRAParam)
        else:
            self.lora_a = self.lora_b = None

    def __call__(self, x):
        dt = x.dtype
        y = contract(x, self.w[...].astype(dt), self.n_in)
        if self.scale is not None:
            y = y * self.scale[...].astype(dt)
        if self.lora_a is not None:
            low = contract(x, self.lora_a[...].astype(dt), self.n_in)
            y = y + contract(low, self.lora_b[...].astype(dt), 1) * jnp.asarray(self.lora_scale, dt)
        return y + self.b[...].astype(dt) if self.b is not None else y


def target() -> tuple[str, str]:
    """(platform, device kind) this trace compiles for: the context mesh's devices (a deviceless
    TPU plan compiles for TPU on a CPU host), else the default backend's."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    if device is not None and device.platform:
        return device.platform, device.device_kind or ""
    return jax.default_backend(), jax.devices()[0].device_kind


def contract(x, w, n_in: int, flat: bool | None = None):
    """``x ⋅ w``: x's last ``n_in`` axes against w's first ``n_in``; ``[*lead, *in] x [*in, *out] -> [*lead, *out]``.

    ``flat`` merges the leading axes and the contracted ones first, a 2-D matmul. By default it does so when the
    trace compiles for XLA:CPU (:func:`target`). There a weight gradient that contracts the two token axes
    ``[B, T]`` is laid out through a transposed, strided copy of its ``[B, T, F]`` operand; a 2-D one is not, and
    a 4-layer MLP's forward and backward runs 2.4x (scanned) and 1.8x (unrolled) as fast
    (``bench/flat_matmul.py``). GPU and TPU dots take either layout. Under a ``context`` axis it contracts as is:
    merging a data-sharded ``B`` with a context-sharded ``T`` would reshard the activations.
    """
    if flat is None:
        mesh = jax.sharding.get_abstract_mesh()
        split = not mesh.empty and "context" in mesh.axis_names and mesh.shape["context"] > 1
        flat = target()[0] == "cpu" and not split
    if not flat:
        return jnp.tensordot(x, w, axes=n_in)
    lead, size = x.shape[:x.ndim - n_in], math.prod(x.shape[x.ndim - n_in:])
    y = x.reshape(math.prod(lead), size) @ w.reshape(size, -1)
    return y.reshape(*lead, *w.shape[n_in:])


def quantize_int8(w, n_in: int, stacked: bool = False):
    """Per-output-channel symmetric int8: ``(q int8, scale float32)`` with ``w ≈ q · scale``,
    ``|q| <= 127``; the absmax runs over the ``n_in`` input axes (after the leading layer
    axis when ``stacked``)."""
    w = np.asarray(w, np.float32)
    axes = tuple(range(1, 1 + n_in)) if stacked else tuple(range(n_in))
    amax = np.max(np.abs(w), axis=axes, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, np.squeeze(scale, axis=axes)


# ---------------------------------------------------------------- positions

def rope_frequencies(spec: Rope, dim: int) -> np.ndarray:
    """Inverse frequencies ``[dim/2]`` for the HF rope types default, linear and llama3."""
    inv = 1.0 / (spec.theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if spec.type == "linear":
        inv = inv / spec.factor
    elif spec.type == "llama3":
        old = spec.original_max_positions
        low_wavelen, high_wavelen = old / spec.low_freq_factor, old / spec.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / spec.factor, inv)
        smooth = (old / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
        smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_tables(spec: Rope, positions, dim: int):
    """(cos, sin) ``[B, T, dim]`` for integer positions ``[B, T]`` (HF's half-split layout)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_frequencies(spec, dim))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """Rotate ``x [B, T, heads, K]`` by (cos, sin) ``[B, T, K]`` (rotate-half form), in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


class Embed(nnx.Module):
    """Token embeddings (``[V, E]``, also the tied head), learned positions (GPT-2/OPT) and
    OPT's projections between the embedding width ``E`` and the model width ``D``."""

    def __init__(self, cfg: Config, mk: Stack):
        D, E = cfg.d_model, cfg.word_dim
        self.tokens = param(mk, "embedding", (cfg.vocab_size, E), ("vocab", "embed"))
        self.positions = param(mk, "position", (cfg.max_positions + cfg.position_offset, D), (None, "embed")) \
            if cfg.attention.rope is None else None
        self.proj_in = param(mk, "weight", (E, D), (None, "embed")) if cfg.projected else None
        self.proj_out = param(mk, "weight", (D, E), ("embed", None)) if cfg.projected else None
        self.offset = cfg.position_offset
        self.scale = cfg.d_model ** 0.5 if cfg.embed_scale else 0.0

    def __call__(self, tokens, positions, dt):
        x = self.tokens[...][tokens].astype(dt)
        if self.proj_in is not None:
            x = x @ self.proj_in[...].astype(dt)
        if self.scale:
            x = x * jnp.asarray(self.scale, dt)
        if self.positions is not None:
            x = x + self.positions[...][positions + self.offset].astype(dt)
        return x


# ---------------------------------------------------------------- attention

def pallas_decode_ok(cfg: Config, T: int, S: int) -> bool:
    """Whether a decode step can use the Pallas kernel: one new token, no soft-capping or
    sliding window (the kernel has neither), and the attended slots in whole 16-wide blocks."""
    a = cfg.attention
    return cfg.decode_kernel == "pallas" and T == 1 and not a.softcap and not a.layer_windows and S % 16 == 0


def attend_decode_pallas(cfg: Config, q, k, v, key_mask, kv_len, interpret=None):
    """One decode step through ``jax.experimental.pallas.ops.gpu.decode_attention.gqa``:
    q ``[B, 1, H, K]`` over k, v ``[B, G, S, K]``; ``start_idx`` = each row's left padding,
    ``kv_seq_len`` = the slots filled so far. Interpreted (slowly) off GPU, for tests."""
    from jax.experimental.pallas.ops.gpu import decode_attention as da
    B, _, H, K = q.shape
    S = k.shape[2]
    block_k = next(b for b in (128, 64, 32, 16) if S % b == 0)
    start = jnp.argmax(key_mask.astype(jnp.int32), axis=1)
    lens = jnp.broadcast_to(jnp.asarray(kv_len, jnp.int32), (B,))
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    out = da.gqa(q[:, 0], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), start, lens,
                 sm_scale=cfg.attention.query_scale or K ** -0.5, block_h=min(16, H // k.shape[1]) or 1,
                 block_k=block_k, k_splits=1, interpret=interpret)
    return out[:, None].astype(q.dtype)


def _targets(cfg: Config, name: str) -> LoRA | None:
    return cfg.lora if cfg.lora.rank and name in cfg.lora.targets else None


class AttentionLayer(nnx.Module):
    """q, k, v and o projections (KV heads, optional biases), optional q/k RMSNorm over
    ``head_dim``; :meth:`qkv` projects, normalises and rotates, :meth:`out` mixes heads back."""

    def __init__(self, cfg: Config, mk: Stack):
        a, D, H, G, K = cfg.attention, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
        lin = lambda name, i, o, ia, oa, bias: Linear(i, o, ia, oa, mk, bias=bias, lora=_targets(cfg, name),
                                                      quantize=cfg.quantize)
        self.q = lin("q", (D,), (H, K), ("embed",), ("heads", "head_dim"), a.qkv_bias)
        self.k = lin("k", (D,), (G, K), ("embed",), ("kv_heads", "head_dim"), a.qkv_bias)
        self.v = lin("v", (D,), (G, K), ("embed",), ("kv_heads", "head_dim"), a.qkv_bias)
        self.o = lin("o", (H, K), (D,), ("heads", "head_dim"), ("embed",), a.out_bias)
        qk = Norm("rmsnorm", eps=cfg.norm.eps, offset=cfg.norm.offset)
        self.q_norm = NormLayer(qk, K, mk, "head_dim") if a.qk_norm else None
        self.k_norm = NormLayer(qk, K, mk, "head_dim") if a.qk_norm else None

    def qkv(self, h, rope_cs):
        """q ``[B, T, H, K]``, k and v ``[B, T, G, K]`` (G = KV heads), normed and rotated."""
        q, k, v = self.q(h), self.k(h), self.v(h)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope_cs is not None:
            q, k = apply_rope(q, *rope_cs), apply_rope(k, *rope_cs)
        return q, k, v

    def out(self, attn):
        return self.o(attn)


def attention_flops(cfg: Config, seq_len: int) -> float:
    """Forward FLOPs per token: q/k/v/o projections (with KV heads) plus scores and mixing."""
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
    return 2 * D * K * (H + 2 * G) + 2 * H * K * D + 2 * 2 * seq_len * H * K


# ---------------------------------------------------------------------- MLP

class MlpLayer(nnx.Module):
    """Plain ``down(act(up(h)))`` or gated ``down(act(gate(h)) * up(h))``."""

    def __init__(self, cfg: Config, mk: Stack):
        m, D, F = cfg.mlp, cfg.d_model, cfg.d_ff
        lin = lambda name, i, o, ia, oa: Linear((i,), (o,), (ia,), (oa,), mk, bias=m.bias, lora=_targets(cfg, name),
                                                quantize=cfg.quantize)
        self.activation = m.activation
        self.up = lin("up", D, F, "embed", "mlp")
        self.gate = lin("gate", D, F, "embed", "mlp") if m.gated else None
        self.down = lin("down", F, D, "mlp", "embed")

    def __call__(self, h):
        act = ACTIVATIONS[self.activation]
        u = self.up(h)
        u = act(self.gate(h)) * u if self.gate is not None else act(u)
        return self.down(u)


def mlp_flops(cfg: Config) -> float:
    return 2 * cfg.d_model * cfg.d_ff * (3 if cfg.mlp.gated else 2)


__all__ = ["ACTIVATIONS", "KINDS", "DECAYED", "VECTOR_KINDS", "Stack", "param", "NormLayer", "Linear", "Embed",
           "AttentionLayer", "MlpLayer", "rope_frequencies", "rope_tables", "apply_rope",
           "attention_flops", "mlp_flops", "quantize_int8"]
