"""Families by HF ``model_type``. A family module provides ``MODEL_TYPES``,
``config_from_hf(hf, **numerics)``, ``config_to_hf(cfg)``, ``weights(cfg)`` (its
table of :class:`~dpkd_jax.models.weights.Row`) and ``IGNORED`` (HF tensors it never needs)."""

from __future__ import annotations

from . import gemma2, gemma3, gpt2, llama, mistral, opt, qwen2, qwen3
from ..errors import InputError

FAMILIES = {t: fam for fam in (gpt2, opt, llama, mistral, qwen2, qwen3, gemma2, gemma3) for t in fam.MODEL_TYPES}


def family(model_type: str, where: str = "config.json"):
    if model_type not in FAMILIES:
        hint = " (Gemma 3 multimodal checkpoints: use the text model, model_type gemma3_text)" \
            if model_type == "gemma3" else ""
        raise InputError(f"{where}: model_type {model_type!r} is not supported (supported: {sorted(FAMILIES)})"
                         f"{hint}")
    return FAMILIES[model_type]
