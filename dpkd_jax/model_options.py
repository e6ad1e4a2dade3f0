"""The models' load options a run spec implies (``models.load_config`` / ``from_pretrained`` keywords): the run,
the preflight, the planner and the demo build their models with these, so each compiles the same program."""

from __future__ import annotations

import jax.numpy as jnp

from .runspec import ModelSpec, RunSpec


def model_options(cfg: RunSpec, role: str, vocab: int) -> dict:
    """``models.load_config`` / ``from_pretrained`` options of a run's teacher or student."""
    spec = cfg.teacher if role == "teacher" else cfg.student
    kw = dict(dtype=jnp.dtype(spec.dtype), compute_dtype=jnp.dtype(spec.dtype if role == "teacher" else
                                                                    spec.compute_dtype),
              output_vocab=vocab, remat=cfg.model.remat, scan_layers=cfg.model.scan_layers,
              decode_kernel=cfg.model.decode_kernel, kv_cache=cfg.model.kv_cache, **attention_options(cfg.model))
    if role == "teacher":
        kw["quantize"] = cfg.teacher.quantize
    else:
        kw["lora"] = cfg.student.lora.model()
    return kw


def attention_options(model: ModelSpec) -> dict:
    """The attention kernel and its block sizes from ``config.model`` (a ``runspec.ModelSpec``; models.Config
    fields)."""
    return dict(attention_kernel=model.attention_kernel, attention_block_q=model.attention_block_q,
                attention_block_k=model.attention_block_k)
