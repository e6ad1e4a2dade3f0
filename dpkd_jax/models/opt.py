"""OPT: config translation, the HF weight table, FLOPs.

OPT uses torch ``nn.Linear`` (``[out, in]``: transposed on the way in), separate
q/k/v projections, learned positions offset by 2, ReLU, pre- or post-LayerNorm
(``do_layer_norm_before``; OPT-350m is post-LN and has no final LayerNorm), and
optionally embeddings of width ``word_embed_proj_dim`` projected in and out.
"""

from __future__ import annotations

import json

from .params import Row
from .transformer import Config

_D = "model.decoder."
_L = _D + "layers.{i}."
WEIGHTS = [
    Row(_D + "embed_tokens.weight", "embed/tokens"),
    Row(_D + "embed_positions.weight", "embed/positions"),
    Row(_D + "project_in.weight", "embed/proj_in", transpose=True),
    Row(_D + "project_out.weight", "embed/proj_out", transpose=True),
    Row(_D + "final_layer_norm.weight", "final_ln/scale"),
    Row(_D + "final_layer_norm.bias", "final_ln/bias"),
    Row(_L + "self_attn_layer_norm.weight", "blocks/ln1_scale"),
    Row(_L + "self_attn_layer_norm.bias", "blocks/ln1_bias"),
    Row(_L + "self_attn.q_proj.weight", "blocks/qkv_w", transpose=True, sub=(slice(None), 0)),
    Row(_L + "self_attn.k_proj.weight", "blocks/qkv_w", transpose=True, sub=(slice(None), 1)),
    Row(_L + "self_attn.v_proj.weight", "blocks/qkv_w", transpose=True, sub=(slice(None), 2)),
    Row(_L + "self_attn.q_proj.bias", "blocks/qkv_b", sub=(0,)),
    Row(_L + "self_attn.k_proj.bias", "blocks/qkv_b", sub=(1,)),
    Row(_L + "self_attn.v_proj.bias", "blocks/qkv_b", sub=(2,)),
    Row(_L + "self_attn.out_proj.weight", "blocks/out_w", transpose=True, in_axes=2),   # [D, D] -> [H, K, D]
    Row(_L + "self_attn.out_proj.bias", "blocks/out_b"),
    Row(_L + "final_layer_norm.weight", "blocks/ln2_scale"),
    Row(_L + "final_layer_norm.bias", "blocks/ln2_bias"),
    Row(_L + "fc1.weight", "blocks/fc_w", transpose=True),
    Row(_L + "fc1.bias", "blocks/fc_b"),
    Row(_L + "fc2.weight", "blocks/proj_w", transpose=True),
    Row(_L + "fc2.bias", "blocks/proj_b"),
]
IGNORED = ("lm_head.weight",)


def config_from_hf(hf: dict, **numerics) -> Config:
    if not hf.get("layer_norm_elementwise_affine", True):
        raise ValueError("config.json: OPT option layer_norm_elementwise_affine=false is not supported")
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("config.json: tie_word_embeddings=false is not supported for OPT")
    pre = hf.get("do_layer_norm_before", True)
    d = hf["hidden_size"]
    return Config(model_type="opt", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                  n_heads=hf["num_attention_heads"], d_ff=hf["ffn_dim"],
                  max_positions=hf["max_position_embeddings"], activation=hf.get("activation_function", "relu"),
                  pre_layer_norm=pre, final_layer_norm=pre and not hf.get("_remove_final_layer_norm", False),
                  embed_dim=hf.get("word_embed_proj_dim") or d, position_offset=2,
                  bias=hf.get("enable_bias", True), hf_config=json.dumps(hf, sort_keys=True), **numerics)


def config_to_hf(cfg: Config) -> dict:
    return {"model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "ffn_dim": cfg.d_ff, "max_position_embeddings": cfg.max_positions,
            "activation_function": cfg.activation, "do_layer_norm_before": cfg.pre_layer_norm,
            "_remove_final_layer_norm": cfg.pre_layer_norm and not cfg.final_layer_norm,
            "word_embed_proj_dim": cfg.word_dim, "enable_bias": cfg.bias, "tie_word_embeddings": True,
            "dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0}
