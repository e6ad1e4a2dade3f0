"""Shared building blocks: norms, positions (learned or RoPE), attention with KV heads,
MLPs. Each component owns its parameter table (name -> shape, logical axes), its
forward and its FLOPs, so a family is a choice of components, not a set of switches
inside one forward.

Parameter tables here are per layer; ``transformer.param_table`` stacks them over
a leading ``layers`` axis. Logical axes are mapped to mesh axes by ``sharding``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .config import Attention, Config, Mlp, Norm, Rope

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


# ------------------------------------------------------------------- norms

def norm_table(name: str, spec: Norm, dim: int, axis: str | None = "embed") -> dict:
    t = {f"{name}/scale": ((dim,), (axis,))}
    if spec.kind == "layernorm" and spec.bias:
        t[f"{name}/bias"] = ((dim,), (axis,))
    return t


def norm(spec: Norm, p: dict, name: str, x):
    """LayerNorm (with or without bias) or RMSNorm over the last axis, in float32;
    the scale is ``w`` or Gemma's ``(1 + w)``."""
    x32 = x.astype(jnp.float32)
    if spec.kind == "layernorm":
        x32 = x32 - x32.mean(-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + spec.eps)
    y = y * (p[f"{name}/scale"].astype(jnp.float32) + spec.offset)
    if f"{name}/bias" in p:
        y = y + p[f"{name}/bias"].astype(jnp.float32)
    return y.astype(x.dtype)


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


# ---------------------------------------------------------------- attention

def attention_table(cfg: Config) -> dict:
    a, D, H, G, K = cfg.attention, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
    t = {"q_w": ((D, H, K), ("embed", "heads", "head_dim")),
         "k_w": ((D, G, K), ("embed", "kv_heads", "head_dim")),
         "v_w": ((D, G, K), ("embed", "kv_heads", "head_dim")),
         "o_w": ((H, K, D), ("heads", "head_dim", "embed"))}
    if a.qkv_bias:
        t.update({"q_b": ((H, K), ("heads", "head_dim")), "k_b": ((G, K), ("kv_heads", "head_dim")),
                  "v_b": ((G, K), ("kv_heads", "head_dim"))})
    if a.out_bias:
        t["o_b"] = ((D,), ("embed",))
    if a.qk_norm:
        qk = Norm("rmsnorm", eps=cfg.norm.eps, offset=cfg.norm.offset)
        t.update(norm_table("q_norm", qk, K, "head_dim"))
        t.update(norm_table("k_norm", qk, K, "head_dim"))
    return t


def attention_mask(q_slots, k_len, key_mask, window):
    """Allowed (query, key) pairs ``[B, 1, 1, T, S]``: causal over cache slots, valid keys,
    and within ``window`` slots when ``window > 0`` (HF: ``q − k < window``)."""
    k_slots = jnp.arange(k_len)
    dist = q_slots[:, None] - k_slots[None, :]
    ok = (dist >= 0) & ((window <= 0) | (dist < window))
    return ok[None, None, None] & key_mask[:, None, None, None, :].astype(bool)


def project_qkv(cfg: Config, p, h, rope_cs):
    """q ``[B, T, H, K]``, k and v ``[B, T, G, K]`` (G = KV heads), normed and rotated."""
    dt = h.dtype
    proj = lambda w, b: jnp.einsum("btd,dhk->bthk", h, p[w].astype(dt)) + (p[b].astype(dt) if b in p else 0)
    q, k, v = proj("q_w", "q_b"), proj("k_w", "k_b"), proj("v_w", "v_b")
    if cfg.attention.qk_norm:
        qk = Norm("rmsnorm", eps=cfg.norm.eps, offset=cfg.norm.offset)
        q, k = norm(qk, p, "q_norm", q), norm(qk, p, "k_norm", k)
    if rope_cs is not None:
        q, k = apply_rope(q, *rope_cs), apply_rope(k, *rope_cs)
    return q, k, v


def attend(cfg: Config, q, k, v, allowed):
    """Grouped-query attention: q ``[B, T, H, K]`` over k, v ``[B, G, S, K]`` (heads before
    slots: the KV cache's layout, read without a transpose) -> ``[B, T, H, K]``.
    Scores and softmax in float32; optional tanh soft-capping before the mask."""
    a = cfg.attention
    B, T, H, K = q.shape
    G = k.shape[1]
    qg = q.reshape(B, T, G, H // G, K)
    scores = jnp.einsum("btgrk,bgsk->bgrts", qg, k).astype(jnp.float32)
    scores = scores * (a.query_scale or K ** -0.5)
    if a.softcap:
        scores = jnp.tanh(scores / a.softcap) * a.softcap
    scores = jnp.where(allowed, scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bgrts,bgsk->btgrk", probs, v).reshape(B, T, H, K)


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


def attention_out(p, attn):
    dt = attn.dtype
    out = jnp.einsum("bthk,hkd->btd", attn, p["o_w"].astype(dt))
    return out + p["o_b"].astype(dt) if "o_b" in p else out


def attention_flops(cfg: Config, seq_len: int) -> float:
    """Forward FLOPs per token: q/k/v/o projections (with KV heads) plus scores and mixing."""
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
    return 2 * D * K * (H + 2 * G) + 2 * H * K * D + 2 * 2 * seq_len * H * K


# ---------------------------------------------------------------------- MLP

def mlp_table(cfg: Config) -> dict:
    m, D, F = cfg.mlp, cfg.d_model, cfg.d_ff
    t = {"up_w": ((D, F), ("embed", "mlp")), "down_w": ((F, D), ("mlp", "embed"))}
    if m.gated:
        t["gate_w"] = ((D, F), ("embed", "mlp"))
    if m.bias:
        t.update({"up_b": ((F,), ("mlp",)), "down_b": ((D,), ("embed",))})
        if m.gated:
            t["gate_b"] = ((F,), ("mlp",))
    return t


def mlp(spec: Mlp, p, h):
    """Plain ``down(act(up(h)))`` or gated ``down(act(gate(h)) * up(h))``."""
    dt = h.dtype
    act = ACTIVATIONS[spec.activation]
    lin = lambda w, b, x: jnp.einsum("...d,df->...f", x, p[w].astype(dt)) + (p[b].astype(dt) if b in p else 0)
    u = lin("up_w", "up_b", h)
    u = act(lin("gate_w", "gate_b", h)) * u if spec.gated else act(u)
    return lin("down_w", "down_b", u)


def mlp_flops(cfg: Config) -> float:
    return 2 * cfg.d_model * cfg.d_ff * (3 if cfg.mlp.gated else 2)


__all__ = ["Attention", "Mlp", "Norm", "Rope", "ACTIVATIONS", "norm_table", "norm", "rope_frequencies",
           "rope_tables", "apply_rope", "attention_table", "attention_mask", "project_qkv", "attend",
           "attention_out", "attention_flops", "mlp_table", "mlp", "mlp_flops"]
