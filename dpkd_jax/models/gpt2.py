"""GPT-2: learned positions, pre-LayerNorm with bias, GELU MLP, tied head.

HF GPT-2 uses Conv1D, whose weights are already ``[in, out]``: no transposes;
the fused ``c_attn`` is split into q, k and v (``part``)."""

from __future__ import annotations

from .config import Attention, Config, Mlp, Norm
from .hfconfig import refuse
from .weights import Row, proj

MODEL_TYPES = ("gpt2",)

_H = "transformer.h.{i}."
WEIGHTS = [
    Row("transformer.wte.weight", "embed/tokens"),
    Row("transformer.wpe.weight", "embed/positions"),
    Row(_H + "ln_1.weight", "blocks/attn_norm/scale"),
    Row(_H + "ln_1.bias", "blocks/attn_norm/bias"),
    *[Row(_H + "attn.c_attn.weight", proj(n, "w"), part=(j, 3)) for j, n in enumerate("qkv")],
    *[Row(_H + "attn.c_attn.bias", proj(n, "b"), part=(j, 3)) for j, n in enumerate("qkv")],
    Row(_H + "attn.c_proj.weight", "blocks/attn/o/w", in_axes=2),      # [D, D] -> [H, K, D]
    Row(_H + "attn.c_proj.bias", "blocks/attn/o/b"),
    Row(_H + "ln_2.weight", "blocks/mlp_norm/scale"),
    Row(_H + "ln_2.bias", "blocks/mlp_norm/bias"),
    Row(_H + "mlp.c_fc.weight", "blocks/mlp/up/w"),
    Row(_H + "mlp.c_fc.bias", "blocks/mlp/up/b"),
    Row(_H + "mlp.c_proj.weight", "blocks/mlp/down/w"),
    Row(_H + "mlp.c_proj.bias", "blocks/mlp/down/b"),
    Row("transformer.ln_f.weight", "final_norm/scale"),
    Row("transformer.ln_f.bias", "final_norm/bias"),
]
# Present in some checkpoints, never needed: the tied head and old causal-mask buffers.
IGNORED = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")

_UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": (False, False), "reorder_and_upcast_attn": (False, False),
                "scale_attn_weights": (True, True), "add_cross_attention": (False, False),
                "tie_word_embeddings": (True, True)}


def weights(cfg: Config):
    return WEIGHTS


def config_from_hf(hf: dict, **numerics) -> Config:
    refuse(hf, "GPT-2", _UNSUPPORTED)
    d = hf["n_embd"]
    return Config(model_type="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
                  n_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d, max_positions=hf["n_positions"],
                  norm=Norm("layernorm", eps=hf.get("layer_norm_epsilon", 1e-5)),
                  attention=Attention(qkv_bias=True, out_bias=True),
                  mlp=Mlp(hf.get("activation_function", "gelu_new")), **numerics)


def config_to_hf(cfg: Config) -> dict:
    return dict({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
        "n_positions": cfg.max_positions, "activation_function": cfg.mlp.activation,
        "layer_norm_epsilon": cfg.norm.eps, "tie_word_embeddings": True,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})


def tiny_config(**kw) -> Config:
    """A small GPT-2 for tests and the demo."""
    base = dict(model_type="gpt2", vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_positions=256,
                norm=Norm("layernorm"), attention=Attention(qkv_bias=True, out_bias=True), mlp=Mlp("gelu_new"))
    base.update(kw)
    return Config(**base)
