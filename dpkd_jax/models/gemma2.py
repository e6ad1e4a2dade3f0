"""Gemma 2: embeddings scaled by sqrt(d), RMSNorm with a (1 + w) scale, a norm before
and after both attention and MLP (sandwich), tanh-GELU gated MLP (GeGLU), attention
scaled by ``query_pre_attn_scalar``, tanh soft-capping of attention scores and final
logits, and alternating sliding-window layers (``layer_types``)."""

from __future__ import annotations

from .config import Attention, Config, Mlp, Norm, Rope
from .hfconfig import layer_windows, refuse, rms_decoder_fields, rope_from_hf, rope_to_hf
from .llama import ATTENTION_AND_MLP, EMBED_AND_HEAD
from .weights import Row

MODEL_TYPES = ("gemma2",)

_L = "model.layers.{i}."
WEIGHTS = [
    *EMBED_AND_HEAD,
    # Gemma's post_attention_layernorm follows attention (Llama's precedes the MLP)
    Row(_L + "input_layernorm.weight", "blocks/attn_norm/scale"),
    Row(_L + "post_attention_layernorm.weight", "blocks/post_attn_norm/scale"),
    Row(_L + "pre_feedforward_layernorm.weight", "blocks/mlp_norm/scale"),
    Row(_L + "post_feedforward_layernorm.weight", "blocks/post_mlp_norm/scale"),
    *ATTENTION_AND_MLP,
]
IGNORED = ()


def weights(cfg: Config):
    return WEIGHTS


def gemma_like(hf: dict, family: str, *, rope: Rope, local_rope: Rope | None, qk_norm: bool, **numerics) -> Config:
    refuse(hf, family, {"use_bidirectional_attention": (False, False)})
    D, H, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    head_dim = hf.get("head_dim") or D // H
    bias = bool(hf.get("attention_bias", False))
    return Config(
        model_type=hf["model_type"], vocab_size=hf["vocab_size"], d_model=D, n_layers=L, n_heads=H,
        n_kv_heads=hf.get("num_key_value_heads") or H, head_dim=head_dim, d_ff=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 8192),
        norm=Norm("rmsnorm", eps=hf.get("rms_norm_eps", 1e-6), offset=1.0),
        attention=Attention(qkv_bias=bias, out_bias=bias, qk_norm=qk_norm,
                            query_scale=float(hf.get("query_pre_attn_scalar") or head_dim) ** -0.5,
                            softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                            layer_windows=layer_windows(hf, L), rope=rope, local_rope=local_rope),
        mlp=Mlp(hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh", gated=True, bias=False),
        sandwich_norm=True, embed_scale=True, tied_head=bool(hf.get("tie_word_embeddings", True)),
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
        **numerics)


def gemma_like_to_hf(cfg: Config, architecture: str) -> dict:
    a = cfg.attention
    return dict({
        **rms_decoder_fields(cfg, architecture), "hidden_activation": cfg.mlp.activation,
        "query_pre_attn_scalar": _number(a.query_scale ** -2.0), "attention_bias": a.qkv_bias,
        "attn_logit_softcapping": a.softcap or None, "final_logit_softcapping": cfg.final_softcap or None})


def _number(x: float):
    """HF's config validators want an int where the value is one (query_pre_attn_scalar: 256)."""
    return int(round(x)) if abs(x - round(x)) < 1e-4 else x


def config_from_hf(hf: dict, **numerics) -> Config:
    return gemma_like(hf, "gemma2", rope=rope_from_hf(hf, "gemma2"), local_rope=None, qk_norm=False, **numerics)


def config_to_hf(cfg: Config) -> dict:
    out = gemma_like_to_hf(cfg, "Gemma2ForCausalLM")
    out["rope_parameters"] = rope_to_hf(cfg.attention.rope)
    return out
