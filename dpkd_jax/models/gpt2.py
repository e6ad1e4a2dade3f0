"""GPT-2: config translation, the HF weight table, FLOPs.

HF GPT-2 uses Conv1D, whose weights are already ``[in, out]``: no transposes,
only the fused ``c_attn`` split into (q, k, v) × heads. Embeddings are tied.
"""

from __future__ import annotations

import json

from .params import Row
from .transformer import Config

_H = "transformer.h.{i}."
WEIGHTS = [
    Row("transformer.wte.weight", "embed/tokens"),
    Row("transformer.wpe.weight", "embed/positions"),
    Row(_H + "ln_1.weight", "blocks/ln1_scale"),
    Row(_H + "ln_1.bias", "blocks/ln1_bias"),
    Row(_H + "attn.c_attn.weight", "blocks/qkv_w"),      # [D, 3D] -> [D, 3, H, K]
    Row(_H + "attn.c_attn.bias", "blocks/qkv_b"),        # [3D] -> [3, H, K]
    Row(_H + "attn.c_proj.weight", "blocks/out_w", in_axes=2),      # [D, D] -> [H, K, D]
    Row(_H + "attn.c_proj.bias", "blocks/out_b"),
    Row(_H + "ln_2.weight", "blocks/ln2_scale"),
    Row(_H + "ln_2.bias", "blocks/ln2_bias"),
    Row(_H + "mlp.c_fc.weight", "blocks/fc_w"),
    Row(_H + "mlp.c_fc.bias", "blocks/fc_b"),
    Row(_H + "mlp.c_proj.weight", "blocks/proj_w"),
    Row(_H + "mlp.c_proj.bias", "blocks/proj_b"),
    Row("transformer.ln_f.weight", "final_ln/scale"),
    Row("transformer.ln_f.bias", "final_ln/bias"),
]
# Present in some checkpoints, never needed: the tied head and old causal-mask buffers.
IGNORED = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")

# HF options we do not implement; a checkpoint setting them is refused by name.
_UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "scale_attn_weights": True, "add_cross_attention": False}


def config_from_hf(hf: dict, **numerics) -> Config:
    for key, default in _UNSUPPORTED.items():
        if hf.get(key, default) != default:
            raise ValueError(f"config.json: GPT-2 option {key}={hf[key]} is not supported")
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("config.json: tie_word_embeddings=false is not supported for GPT-2")
    d = hf["n_embd"]
    return Config(model_type="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
                  n_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d, max_positions=hf["n_positions"],
                  activation=hf.get("activation_function", "gelu_new"),
                  layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), hf_config=json.dumps(hf, sort_keys=True),
                  **numerics)


def config_to_hf(cfg: Config) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
            "n_positions": cfg.max_positions, "activation_function": cfg.activation,
            "layer_norm_epsilon": cfg.layer_norm_eps, "tie_word_embeddings": True,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def tiny_config(**kw) -> Config:
    """A small GPT-2 for tests and the demo."""
    base = dict(model_type="gpt2", vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_positions=256)
    base.update(kw)
    return Config(**base)
