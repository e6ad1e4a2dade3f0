"""LoRA students and int8 teachers after training: the arithmetic that merges adapters into full
weights and dequantizes int8 projections (the PEFT adapter folder is written by ``peft.py``).
"""

from __future__ import annotations

import numpy as np

from .config import LoRA


def lora_delta(a: np.ndarray, b: np.ndarray, lora: LoRA, stacked: bool) -> np.ndarray:
    """``(alpha / r) · A B`` in our layout ``[L?, *in, *out]`` (float32)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if stacked:
        delta = np.stack([np.tensordot(a[i], b[i], axes=1) for i in range(a.shape[0])])
    else:
        delta = np.tensordot(a, b, axes=1)
    return (lora.alpha / lora.rank) * delta


def dequantize_int8(q: np.ndarray, scale: np.ndarray, stacked: bool) -> np.ndarray:
    """``q · scale``: ``q [L?, *in, *out]``, the per-output-channel ``scale [L?, *out]``."""
    q, scale = np.asarray(q, np.float32), np.asarray(scale, np.float32)
    if stacked:
        n_in = q.ndim - scale.ndim
        scale = scale.reshape(scale.shape[0], *(1,) * n_in, *scale.shape[1:])
    return q * scale
