"""Llama (2, 3, 3.1, 3.2; SmolLM2, Vicuna, TinyLlama) and the weight table the
Llama-shaped families share (Mistral, Qwen2, Qwen3): RMSNorm, RoPE (default,
linear, llama3), grouped-query attention, SwiGLU, tied or untied head."""

from __future__ import annotations

from .config import Attention, Config, Mlp, Norm, Rope
from .hfconfig import layer_windows, refuse, rms_decoder_fields, rope_from_hf, rope_to_hf
from .weights import Row, proj

MODEL_TYPES = ("llama",)
ARCHITECTURE = "LlamaForCausalLM"

_L = "model.layers.{i}."
# Attention and gated-MLP rows every Llama-shaped family shares (Mistral, Qwen2/3, Gemma 2/3); rows whose
# parameter a config does not have (biases, q/k norms) are skipped by the loader.
ATTENTION_AND_MLP = [
    *[Row(_L + f"self_attn.{n}_proj.weight", proj(n, "w"), transpose=True) for n in "qkv"],
    Row(_L + "self_attn.o_proj.weight", "blocks/attn/o/w", transpose=True, in_axes=2),
    *[Row(_L + f"self_attn.{n}_proj.bias", proj(n, "b")) for n in "qkvo"],
    *[Row(_L + f"self_attn.{n}_norm.weight", f"blocks/attn/{n}_norm/scale") for n in "qk"],
    *[Row(_L + f"mlp.{n}_proj.weight", proj(n, "w"), transpose=True) for n in ("gate", "up", "down")],
    *[Row(_L + f"mlp.{n}_proj.bias", proj(n, "b")) for n in ("gate", "up", "down")],
]
EMBED_AND_HEAD = [
    Row("model.embed_tokens.weight", "embed/tokens"),
    Row("model.norm.weight", "final_norm/scale"),
    Row("lm_head.weight", "head/w", transpose=True),   # untied heads only
]
WEIGHTS = [
    *EMBED_AND_HEAD,
    Row(_L + "input_layernorm.weight", "blocks/attn_norm/scale"),
    Row(_L + "post_attention_layernorm.weight", "blocks/mlp_norm/scale"),
    *ATTENTION_AND_MLP,
]
# Rotary caches some old checkpoints saved; the tied head when tie_word_embeddings is true.
IGNORED = ("rotary_emb.inv_freq",)

_UNSUPPORTED = {"pretraining_tp": (1, 1)}


def weights(cfg: Config):
    return WEIGHTS


def llama_like(hf: dict, family: str, *, qkv_bias: bool, out_bias: bool, qk_norm=False, all_sliding=False,
               **numerics) -> Config:
    """The Config of a Llama-shaped model; the family says which biases and norms it has."""
    refuse(hf, family, _UNSUPPORTED)
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    L = hf["num_hidden_layers"]
    return Config(
        model_type=hf["model_type"], vocab_size=hf["vocab_size"], d_model=D, n_layers=L, n_heads=H,
        n_kv_heads=hf.get("num_key_value_heads") or H, head_dim=hf.get("head_dim") or D // H,
        d_ff=hf["intermediate_size"], max_positions=hf.get("max_position_embeddings", 2048),
        norm=Norm("rmsnorm", eps=hf.get("rms_norm_eps", 1e-6)),
        attention=Attention(qkv_bias=qkv_bias, out_bias=out_bias, qk_norm=qk_norm, rope=rope_from_hf(hf, family),
                            layer_windows=layer_windows(hf, L, all_sliding)),
        mlp=Mlp(hf.get("hidden_act", "silu"), gated=True, bias=bool(hf.get("mlp_bias", False))),
        tied_head=bool(hf.get("tie_word_embeddings", False)), final_norm=True, **numerics)


def llama_like_to_hf(cfg: Config, architecture: str) -> dict:
    return dict({**rms_decoder_fields(cfg, architecture), "hidden_act": cfg.mlp.activation,
                        "rope_parameters": rope_to_hf(cfg.attention.rope)})


def config_from_hf(hf: dict, **numerics) -> Config:
    bias = bool(hf.get("attention_bias", False))
    return llama_like(hf, "llama", qkv_bias=bias, out_bias=bias, **numerics)


def config_to_hf(cfg: Config) -> dict:
    out = llama_like_to_hf(cfg, ARCHITECTURE)
    out.update(attention_bias=cfg.attention.qkv_bias, mlp_bias=cfg.mlp.bias)
    for k in ("sliding_window", "layer_types"):  # Llama has no sliding window
        out.pop(k, None)
    return out


def tiny_config(**kw) -> Config:
    """A small Llama-family model (GQA, RoPE, SwiGLU) for tests and benches."""
    base = dict(model_type="llama", vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                max_positions=2048, norm=Norm("rmsnorm", eps=1e-5), attention=Attention(rope=Rope()),
                mlp=Mlp("silu", gated=True, bias=False), tied_head=False)
    base.update(kw)
    return Config(**base)
