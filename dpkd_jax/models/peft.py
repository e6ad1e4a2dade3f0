"""A LoRA student's adapters as a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) that
``peft`` loads over the base model.

The adapters are ``nnx.LoRAParam`` variables of :class:`components.Linear` (``A [*in, r]``, ``B [r, *out]``);
the HF module each one adapts comes from the family's weight table, so there is no second list of names.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from . import decoder as split_lib
from .hf import write_safetensors
from .registry import family
from .weights import proj


def _hf_module(rows, target: str) -> str | None:
    """The HF module path (``model.layers.{i}.self_attn.q_proj``) our projection ``target``
    loads from, or None when it cannot carry its own adapter (GPT-2's fused c_attn)."""
    for r in rows:
        if r.ours == proj(target, "w"):
            if r.part or not r.transpose:  # a fused or Conv1D tensor: not one nn.Linear of its own
                return None
            return r.hf[:-len(".weight")]
    return None


def save_peft_adapter(model, path: str, base_model: str = "") -> bool:
    """Write a PEFT LoRA adapter for a LoRA student; False (with a log line) when its family
    stores a target in a form PEFT's LoRA cannot address separately (GPT-2's fused c_attn)."""
    cfg = model.config
    rows = family(cfg.model_type).weights(cfg)
    modules = {t: _hf_module(rows, t) for t in cfg.lora.targets}
    if any(m is None for m in modules.values()):
        logging.warning("PEFT adapter not written: %s stores %s as fused or Conv1D tensors; the merged export "
                        "holds the adapted weights", cfg.model_type, sorted(t for t, m in modules.items() if m is None))
        return False
    _, params = split_lib.split(model)
    tensors = []
    for t, module in modules.items():
        a = np.asarray(jax.device_get(params[proj(t, "lora_a")]), np.float32)
        b = np.asarray(jax.device_get(params[proj(t, "lora_b")]), np.float32)
        for i in range(cfg.n_layers):
            prefix = "base_model.model." + module.format(i=i)
            tensors.append((prefix + ".lora_A.weight", np.ascontiguousarray(a[i].reshape(-1, a.shape[-1]).T)))
            tensors.append((prefix + ".lora_B.weight", np.ascontiguousarray(b[i].reshape(b.shape[1], -1).T)))
    os.makedirs(path, exist_ok=True)
    write_safetensors(iter(tensors), path, 2**62, name="adapter_model")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha,
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "target_modules": sorted({m.rsplit(".", 1)[1] for m in modules.values()}),
              "base_model_name_or_path": base_model, "inference_mode": True}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    return True
