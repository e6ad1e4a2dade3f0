"""GGUF files (llama.cpp) as a weight source: metadata -> an HF ``config.json`` dict,
tensors -> dequantized float32 arrays under their HF names, so the families' HF weight
tables and the shared loader serve GGUF too.

Read with the ``gguf`` package (its reader and ``quants.dequantize``: F32, F16, BF16,
Q8_0, Q4_0, Q4_1, Q5_*, K-quants, ...). llama.cpp's converter permutes the rows of
Llama's q and k projections for its rotary layout; we undo it.
"""

from __future__ import annotations

import numpy as np
from ..errors import InputError

# GGUF architecture -> (HF model_type, whether q/k rows were permuted by llama.cpp's converter)
ARCHES = {"llama": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False),
          "gemma2": ("gemma2", False), "gemma3": ("gemma3_text", False)}
GEMMA = ("gemma2", "gemma3")

_B = "blk.{i}."
_L = "model.layers.{i}."
NAMES = {  # GGUF name -> HF name
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    _B + "attn_norm.weight": _L + "input_layernorm.weight",
    _B + "ffn_norm.weight": _L + "post_attention_layernorm.weight",
    _B + "attn_q.weight": _L + "self_attn.q_proj.weight",
    _B + "attn_k.weight": _L + "self_attn.k_proj.weight",
    _B + "attn_v.weight": _L + "self_attn.v_proj.weight",
    _B + "attn_output.weight": _L + "self_attn.o_proj.weight",
    _B + "attn_q.bias": _L + "self_attn.q_proj.bias",
    _B + "attn_k.bias": _L + "self_attn.k_proj.bias",
    _B + "attn_v.bias": _L + "self_attn.v_proj.bias",
    _B + "attn_q_norm.weight": _L + "self_attn.q_norm.weight",
    _B + "attn_k_norm.weight": _L + "self_attn.k_norm.weight",
    _B + "ffn_gate.weight": _L + "mlp.gate_proj.weight",
    _B + "ffn_up.weight": _L + "mlp.up_proj.weight",
    _B + "ffn_down.weight": _L + "mlp.down_proj.weight",
}


# Gemma's sandwich norms: llama.cpp calls the pre-MLP norm ffn_norm (Llama's post-attention norm).
GEMMA_NAMES = {
    _B + "ffn_norm.weight": _L + "pre_feedforward_layernorm.weight",
    _B + "post_attention_norm.weight": _L + "post_attention_layernorm.weight",
    _B + "post_ffw_norm.weight": _L + "post_feedforward_layernorm.weight",
}


def _hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    names = {**NAMES, **GEMMA_NAMES} if arch in GEMMA else NAMES
    if gguf_name.startswith("blk."):
        _, i, rest = gguf_name.split(".", 2)
        hf = names.get(_B + rest)
        return hf.format(i=i) if hf else None
    return names.get(gguf_name)


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's ``reshape(H, 2, K/2, D).swapaxes(1, 2)`` on q/k rows ``[H*K, D]``."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource:
    """Config and tensors of one ``.gguf`` file, in HF terms."""

    def __init__(self, path: str):
        from gguf import GGUFReader
        self.path = path
        try:
            self.reader = GGUFReader(path)
        except Exception as e:  # the package raises ValueError/struct errors/IndexError on bad files
            raise InputError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                             "re-download or re-convert it") from None
        arch = self.field("general.architecture")
        if arch not in ARCHES:
            raise InputError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {sorted(ARCHES)})")
        self.arch = arch
        self.model_type, self._permuted = ARCHES[arch]
        self.tensors = {}
        for t in self.reader.tensors:
            hf = _hf_name(t.name, arch)
            if hf is None:
                raise InputError(f"{path}: GGUF tensor {t.name!r} has no Hugging Face counterpart we know")
            self.tensors[hf] = t

    def field(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None or not f.data:
            return default
        v = f.parts[f.data[0]]
        if f.types and f.types[0].name == "STRING":
            return bytes(v).decode("utf-8")
        return v.tolist()[0] if len(v) == 1 else v.tolist()

    def hf_config(self) -> dict:
        """An HF ``config.json`` dict from the GGUF metadata."""
        a = self.arch
        need = lambda k: self._need(f"{a}.{k}")
        H = need("attention.head_count")
        D = need("embedding_length")
        head_dim = self.field(f"{a}.attention.key_length") or self.field(f"{a}.rope.dimension_count") or D // H
        vocab = self.field(f"{a}.vocab_size") or len(self.reader.fields["tokenizer.ggml.tokens"].data)
        cfg = {"model_type": self.model_type, "vocab_size": int(vocab), "hidden_size": D,
               "intermediate_size": need("feed_forward_length"), "num_hidden_layers": need("block_count"),
               "num_attention_heads": H, "num_key_value_heads": self.field(f"{a}.attention.head_count_kv", H),
               "head_dim": int(head_dim), "max_position_embeddings": need("context_length"),
               "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
               "rope_parameters": {"rope_type": "default", "rope_theta": float(self.field(f"{a}.rope.freq_base",
                                                                                          10000.0))},
               "tie_word_embeddings": "lm_head.weight" not in self.tensors, "hidden_act": "silu",
               "attention_bias": False}
        scaling = self.field(f"{a}.rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise InputError(f"{self.path}: GGUF rope scaling {scaling!r} is not supported (linear only)")
            cfg["rope_parameters"].update(rope_type="linear", factor=float(self.field(f"{a}.rope.scaling.factor")))
        for key, tok in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("pad_token_id", "padding_token_id")):
            v = self.field(f"tokenizer.ggml.{tok}")
            if v is not None:
                cfg[key] = int(v)
        if a in GEMMA:
            cfg.update(self._gemma(cfg))
        return cfg

    def _gemma(self, cfg) -> dict:
        """Gemma 2/3 fields llama.cpp does not store but fixes per architecture (llama-model.cpp):
        the sliding-window layer pattern (Gemma 2 every other layer from the first, Gemma 3 five
        local layers then one global), Gemma 3's local RoPE base 10000, and the query scale
        ``1/sqrt(head_dim)`` except for the 27B models (``1/sqrt(d_model/heads)``)."""
        a, L, H, D = self.arch, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
        big = str(self.field("general.size_label", "")).upper() == "27B" or L in (46, 62)
        window = self.field(f"{a}.attention.sliding_window")
        out = {"hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
               "query_pre_attn_scalar": D // H if big else cfg["head_dim"],
               "attn_logit_softcapping": self.field(f"{a}.attn_logit_softcapping"),
               "final_logit_softcapping": self.field(f"{a}.final_logit_softcapping")}
        if window:
            sliding = (lambda i: i % 2 == 0) if a == "gemma2" else (lambda i: (i + 1) % 6 != 0)
            out["sliding_window"] = int(window)
            out["layer_types"] = ["sliding_attention" if sliding(i) else "full_attention" for i in range(L)]
        if a == "gemma3":
            out["rope_parameters"] = {"full_attention": cfg["rope_parameters"],
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
        return out

    def _need(self, key):
        v = self.field(key)
        if v is None:
            raise InputError(f"{self.path}: GGUF metadata {key!r} is missing")
        return v

    def names(self):
        return list(self.tensors)

    def get(self, hf_name: str) -> np.ndarray:
        """One tensor, dequantized to float32, in HF's layout (``[out, in]`` for linears)."""
        from gguf import GGMLQuantizationType, quants
        t = self.tensors[hf_name]
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w = np.asarray(t.data, np.float32)
        else:
            try:
                w = quants.dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise InputError(f"{self.path}: tensor {t.name} has quantization {t.tensor_type.name}, which the "
                                 "gguf package cannot dequantize") from None
        w = w.reshape(shape)
        if self.arch in GEMMA and hf_name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's RMSNorm scale as 1 + w
        if self._permuted and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.field(f"{self.arch}.attention.head_count")
            if hf_name.endswith("k_proj.weight"):
                heads = self.field(f"{self.arch}.attention.head_count_kv", heads)
            w = _unpermute(w, heads)
        return w
