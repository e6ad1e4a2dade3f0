"""Qwen2 and Qwen2.5: Llama's shape with biases on q, k and v (not on o), optional
sliding-window layers (``use_sliding_window``, via ``layer_types``)."""

from __future__ import annotations

from .config import Config
from .llama import IGNORED, llama_like, llama_like_to_hf, weights  # noqa: F401  (the shared table)

MODEL_TYPES = ("qwen2",)


def config_from_hf(hf: dict, **numerics) -> Config:
    return llama_like(hf, "qwen2", qkv_bias=True, out_bias=False, **numerics)


def config_to_hf(cfg: Config) -> dict:
    out = llama_like_to_hf(cfg, "Qwen2ForCausalLM")
    out["use_sliding_window"] = bool(cfg.attention.layer_windows)
    return out
