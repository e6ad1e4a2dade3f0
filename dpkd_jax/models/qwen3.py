"""Qwen3: Llama's shape with RMSNorm on q and k per head (before RoPE), an explicit
``head_dim`` and optional biases on all four attention projections."""

from __future__ import annotations

from .config import Config
from .llama import IGNORED, llama_like, llama_like_to_hf, weights  # noqa: F401  (the shared table)

MODEL_TYPES = ("qwen3",)


def config_from_hf(hf: dict, **numerics) -> Config:
    bias = bool(hf.get("attention_bias", False))
    return llama_like(hf, "qwen3", qkv_bias=bias, out_bias=bias, qk_norm=True, **numerics)


def config_to_hf(cfg: Config) -> dict:
    out = llama_like_to_hf(cfg, "Qwen3ForCausalLM")
    out.update(attention_bias=cfg.attention.qkv_bias, use_sliding_window=bool(cfg.attention.layer_windows))
    return out
