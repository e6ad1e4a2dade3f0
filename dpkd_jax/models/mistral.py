"""Mistral: Llama's shape with a sliding window over every layer (``sliding_window``)."""

from __future__ import annotations

from .config import Config
from .llama import IGNORED, llama_like, llama_like_to_hf, weights  # noqa: F401  (the shared table)

MODEL_TYPES = ("mistral",)


def config_from_hf(hf: dict, **numerics) -> Config:
    return llama_like(hf, "mistral", qkv_bias=False, out_bias=False, all_sliding=True, **numerics)


def config_to_hf(cfg: Config) -> dict:
    out = llama_like_to_hf(cfg, "MistralForCausalLM")
    out.pop("layer_types")  # Mistral's window is one number for all layers
    return out
