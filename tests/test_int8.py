"""Weight-only int8 teachers: per-output-channel symmetric quantization against numpy, logits
within a documented tolerance of the float model on the tiny families, the dequantized
export, and the parameter bytes of a real-sized teacher about halved."""

import numpy as np
import pytest
import torch

from dpkd_jax import models
from dpkd_jax.models.components import quantize_int8
from dpkd_jax.models.lora import dequantize_int8
from dpkd_jax.planner import KNOWN


def test_quantization_against_numpy(rng):
    w = rng.normal(size=(3, 8, 2, 5)).astype(np.float32)  # [L, D, H, K]: stacked, one input axis
    q, scale = quantize_int8(w, n_in=1, stacked=True)
    assert q.dtype == np.int8 and scale.shape == (3, 2, 5) and np.abs(q).max() == 127
    want_scale = np.abs(w).max(axis=1) / 127.0
    np.testing.assert_allclose(scale, want_scale, rtol=1e-6)
    np.testing.assert_array_equal(q, np.clip(np.rint(w / want_scale[:, None]), -127, 127))
    back = dequantize_int8(q, scale, stacked=True)
    assert np.all(np.abs(back - w) <= want_scale[:, None] / 2 + 1e-7)
    flat = w[0].reshape(8, 10).T  # unstacked [in=10, out=8]: one scale per output column
    q2, s2 = quantize_int8(flat, n_in=1)
    assert s2.shape == (8,) and np.all(np.abs(dequantize_int8(q2, s2, False) - flat) <= s2 / 2 + 1e-7)


# Documented tolerance: int8 logits within 10% of the float logits' spread (std) at every position.
INT8_TOL = 0.1


@pytest.mark.parametrize("kind", ["gpt2", "opt_proj", "llama3_gqa4_bias", "qwen3_gqa8_headdim", "gemma2"])
def test_int8_logits_within_tolerance_and_export_dequantizes(checkpoints, kind, rng, tmp_path):
    from transformers import AutoModelForCausalLM
    path, _ = checkpoints[kind]
    full = models.from_pretrained(path)
    q = models.from_pretrained(path, quantize="int8")
    info = models.param_info(q)
    assert info["blocks/attn/q/w"].dtype == np.int8 and info["blocks/mlp/down/scale"].kind == "quant_scale"
    assert info["embed/tokens"].dtype == np.float32  # embeddings and norms stay as they are
    assert not any(i.trainable for n, i in info.items() if i.dtype == np.int8)
    ids = rng.integers(1, 96, (2, 10))
    a, b = np.asarray(full(ids)), np.asarray(q(ids))
    err = np.abs(a - b).max() / a.std()
    print(f"int8 {kind}: max |logit error| / std = {err:.4f}")
    assert 0 < err < INT8_TOL, err
    models.save_pretrained(q, str(tmp_path))
    with torch.no_grad():
        back = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(back, b, atol=2e-5)


def test_int8_about_halves_a_7b_teachers_bytes():
    cfg = models.family("qwen2").config_from_hf(KNOWN["qwen2.5-7b-instruct"], param_dtype="bfloat16",
                                                compute_dtype="bfloat16")
    size = lambda c: sum(int(np.prod(i.shape)) * np.dtype(i.dtype).itemsize for i in models.param_table(c).values())
    bf16, int8 = size(cfg), size(cfg.replace(quantize="int8"))
    assert 14.5e9 < bf16 < 15.5e9
    assert 0.45 < int8 / bf16 < 0.6, int8 / bf16
