"""A GGUF file as a Hugging Face folder (config.json, safetensors, tokenizer files with the chat template) that
transformers loads with the same logits; ``assets.py`` and ``tools/convert.py`` call it."""

from __future__ import annotations

import os

import jax.numpy as jnp

from ..errors import InputError
from .hf import from_pretrained, is_gguf, save_pretrained
from .tokenizers import load_tokenizer


def gguf_to_hf(gguf_path: str, out_dir: str, dtype: str = "float32") -> str:
    if not is_gguf(gguf_path) or not os.path.isfile(gguf_path):
        raise InputError(f"{gguf_path}: not a .gguf file")
    model = from_pretrained(gguf_path, dtype=jnp.dtype(dtype))
    tok = load_tokenizer(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    save_pretrained(model, out_dir)
    tok.save_pretrained(out_dir)  # tokenizer.json + tokenizer_config.json with the chat template
    return out_dir
