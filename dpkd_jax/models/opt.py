"""OPT: learned positions offset by 2, ReLU, pre- or post-LayerNorm
(``do_layer_norm_before``; OPT-350m is post-LN with no final norm), and optionally
embeddings of width ``word_embed_proj_dim`` projected in and out. Torch ``nn.Linear``
weights are ``[out, in]``: transposed on the way in."""

from __future__ import annotations

from .config import Attention, Config, Mlp, Norm
from .hfconfig import refuse
from .weights import Row, proj

MODEL_TYPES = ("opt",)

_D = "model.decoder."
_L = _D + "layers.{i}."
WEIGHTS = [
    Row(_D + "embed_tokens.weight", "embed/tokens"),
    Row(_D + "embed_positions.weight", "embed/positions"),
    Row(_D + "project_in.weight", "embed/proj_in", transpose=True),
    Row(_D + "project_out.weight", "embed/proj_out", transpose=True),
    Row(_D + "final_layer_norm.weight", "final_norm/scale"),
    Row(_D + "final_layer_norm.bias", "final_norm/bias"),
    Row(_L + "self_attn_layer_norm.weight", "blocks/attn_norm/scale"),
    Row(_L + "self_attn_layer_norm.bias", "blocks/attn_norm/bias"),
    *[Row(_L + f"self_attn.{n}_proj.weight", proj(n, "w"), transpose=True) for n in "qkv"],
    *[Row(_L + f"self_attn.{n}_proj.bias", proj(n, "b")) for n in "qkv"],
    Row(_L + "self_attn.out_proj.weight", "blocks/attn/o/w", transpose=True, in_axes=2),   # [D, D] -> [H, K, D]
    Row(_L + "self_attn.out_proj.bias", "blocks/attn/o/b"),
    Row(_L + "final_layer_norm.weight", "blocks/mlp_norm/scale"),
    Row(_L + "final_layer_norm.bias", "blocks/mlp_norm/bias"),
    Row(_L + "fc1.weight", "blocks/mlp/up/w", transpose=True),
    Row(_L + "fc1.bias", "blocks/mlp/up/b"),
    Row(_L + "fc2.weight", "blocks/mlp/down/w", transpose=True),
    Row(_L + "fc2.bias", "blocks/mlp/down/b"),
]
IGNORED = ("lm_head.weight",)


def weights(cfg: Config):
    return WEIGHTS


def config_from_hf(hf: dict, **numerics) -> Config:
    refuse(hf, "OPT", {"layer_norm_elementwise_affine": (True, True), "tie_word_embeddings": (True, True)})
    pre = hf.get("do_layer_norm_before", True)
    d = hf["hidden_size"]
    bias = hf.get("enable_bias", True)
    return Config(model_type="opt", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                  n_heads=hf["num_attention_heads"], d_ff=hf["ffn_dim"],
                  max_positions=hf["max_position_embeddings"], norm=Norm("layernorm"),
                  attention=Attention(qkv_bias=bias, out_bias=bias),
                  mlp=Mlp(hf.get("activation_function", "relu"), bias=bias),
                  pre_norm=pre, final_norm=pre and not hf.get("_remove_final_layer_norm", False),
                  embed_dim=hf.get("word_embed_proj_dim") or d, position_offset=2, **numerics)


def config_to_hf(cfg: Config) -> dict:
    return dict({
        "model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "ffn_dim": cfg.d_ff, "max_position_embeddings": cfg.max_positions,
        "activation_function": cfg.mlp.activation, "do_layer_norm_before": cfg.pre_norm,
        "_remove_final_layer_norm": cfg.pre_norm and not cfg.final_norm,
        "word_embed_proj_dim": cfg.word_dim, "enable_bias": cfg.attention.qkv_bias, "tie_word_embeddings": True,
        "dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0})
