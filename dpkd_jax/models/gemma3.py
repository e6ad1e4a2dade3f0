"""Gemma 3 text models (``gemma3_text``): Gemma 2's block with RMSNorm on q and k, no
soft-capping by default, and two RoPEs: sliding-window layers use the local base
frequency, full-attention layers the global one (possibly scaled)."""

from __future__ import annotations

from .config import Config
from .gemma2 import IGNORED, gemma_like, gemma_like_to_hf, weights  # noqa: F401  (the shared table)
from .hfconfig import rope_from_hf, rope_to_hf

MODEL_TYPES = ("gemma3_text",)


def config_from_hf(hf: dict, **numerics) -> Config:
    rp = hf.get("rope_parameters") or {}
    if "full_attention" in rp:  # transformers 5: one set per layer type
        glob = rope_from_hf(hf, "gemma3", rp["full_attention"])
        loc = rope_from_hf(hf, "gemma3", rp.get("sliding_attention", {"rope_theta": 10000.0}))
    else:  # older config.json: rope_theta (+ rope_scaling) global, rope_local_base_freq local
        glob = rope_from_hf({k: v for k, v in hf.items() if k != "rope_parameters"}, "gemma3")
        loc = rope_from_hf(hf, "gemma3", {"rope_theta": hf.get("rope_local_base_freq", 10000.0)})
    return gemma_like(hf, "gemma3", rope=glob, local_rope=loc, qk_norm=True, **numerics)


def config_to_hf(cfg: Config) -> dict:
    out = gemma_like_to_hf(cfg, "Gemma3ForCausalLM")
    out["rope_parameters"] = {"full_attention": rope_to_hf(cfg.attention.rope),
                              "sliding_attention": rope_to_hf(cfg.attention.local_rope)}
    return out
