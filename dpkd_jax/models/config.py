"""The architecture description every family translates its HF config into: plain
data (a frozen, hashable dataclass) with no forward, no sharding rules and no HF text.

Each component has its own small spec, so a family says what it is ("RMSNorm with a
(1 + w) scale, RoPE llama3, gated GELU") rather than flipping switches in the
forward. Options a family does not support never reach here: the family file
refuses them by name. The modules (``transformer.CausalLM``) are built from it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROPE_TYPES = ("default", "linear", "llama3")
REMAT = ("none", "full", "dots")
QUANTIZE = ("none", "int8")
ATTENTION_KERNELS = ("auto", "dense", "blockwise", "cudnn", "splash")
ACTIVATION_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class Norm:
    kind: str = "layernorm"     # "layernorm" | "rmsnorm"
    bias: bool = True           # LayerNorm only
    eps: float = 1e-5
    offset: float = 0.0         # Gemma stores w and scales by (1 + w)

    def __post_init__(self):
        if self.kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm kind must be layernorm or rmsnorm, got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Rope:
    theta: float = 10000.0
    type: str = "default"       # default | linear | llama3 (HF rope_parameters' rope_type)
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def __post_init__(self):
        if self.type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.type!r} is not supported; supported: {ROPE_TYPES}")


@dataclasses.dataclass(frozen=True)
class Attention:
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: bool = False                  # Qwen3 / Gemma3: RMSNorm over head_dim on q and k
    query_scale: float = 0.0               # 0: head_dim ** -0.5
    softcap: float = 0.0                   # Gemma 2: tanh soft-capping of scores; 0 = off
    layer_windows: tuple[int, ...] = ()    # per layer: sliding window (0 = full attention); () = all full
    rope: Rope | None = None               # None: learned positions (GPT-2/OPT)
    local_rope: Rope | None = None         # Gemma 3: the RoPE of sliding-window layers


@dataclasses.dataclass(frozen=True)
class Mlp:
    activation: str = "gelu_new"
    gated: bool = False                    # SwiGLU / GeGLU: down(act(gate(x)) * up(x))
    bias: bool = True


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Low-rank adapters on the named projections: ``w + (alpha / rank) · A B``; rank 0 = off."""
    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self):
        bad = sorted(set(self.targets) - set(LORA_TARGETS))
        if self.rank < 0 or bad or (self.rank and not self.targets):
            raise ValueError(f"lora: rank must be >= 0 and targets a non-empty subset of {LORA_TARGETS}; "
                             f"got rank={self.rank}, unknown targets {bad}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Architecture plus numerics (dtypes, scan, remat, decode kernel, LoRA, quantization)."""
    model_type: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_positions: int
    n_kv_heads: int = 0                    # 0: = n_heads
    head_dim: int = 0                      # 0: d_model // n_heads
    norm: Norm = Norm()
    attention: Attention = Attention()
    mlp: Mlp = Mlp()
    pre_norm: bool = True                  # OPT-350m is post-norm
    sandwich_norm: bool = False            # Gemma 2/3: also a norm after attention and after the MLP
    final_norm: bool = True
    position_offset: int = 0               # learned positions: OPT's 2
    embed_dim: int = 0                     # OPT word_embed_proj_dim (projected in and out); 0 = d_model
    embed_scale: bool = False              # Gemma: embeddings times sqrt(d_model)
    tied_head: bool = True
    final_softcap: float = 0.0             # Gemma 2: tanh soft-capping of the logits
    output_vocab: int = 0                  # logits over the first n rows only (the tokenizer's real vocab); 0 = all
    # numerics and execution
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"                    # none | full | dots (save matmul outputs): training memory vs compute
    decode_kernel: str = "xla"             # xla | pallas (GPU decode-attention kernel; XLA where it cannot apply)
    kv_cache: str = "compute"              # compute (the compute dtype) | int8 (per head and slot scales)
    attention_kernel: str = "auto"         # auto | dense | blockwise | cudnn | splash (models/attention.py)
    attention_block_q: int = 0             # blockwise query / key block sizes; 0 = the backend's default
    attention_block_k: int = 0
    lora: LoRA = LoRA()                    # adapters on a student's projections (rank 0: off)
    quantize: str = "none"                 # none | int8: weight-only int8 projections (frozen teachers)

    def __post_init__(self):
        if self.n_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads="
                             f"{self.kv_heads}")
        if not self.head_dim and self.d_model % self.n_heads:
            raise ValueError(f"hidden size {self.d_model} is not divisible by {self.n_heads} heads; set head_dim")
        if self.mlp.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation {self.mlp.activation!r} is not supported; known: {sorted(ACTIVATION_NAMES)}")
        if self.attention.layer_windows and len(self.attention.layer_windows) != self.n_layers:
            raise ValueError(f"layer_windows has {len(self.attention.layer_windows)} entries for {self.n_layers} layers")
        if self.kv_cache not in ("compute", "int8"):
            raise ValueError(f"kv_cache must be compute or int8, got {self.kv_cache!r}")
        if self.decode_kernel not in ("xla", "pallas"):
            raise ValueError(f"decode_kernel must be xla or pallas, got {self.decode_kernel!r}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention_kernel {self.attention_kernel!r} is not one of {ATTENTION_KERNELS}")
        if self.attention_block_q < 0 or self.attention_block_k < 0:
            raise ValueError(f"attention block sizes must be >= 0 (0: the backend's default), got "
                             f"{self.attention_block_q} and {self.attention_block_k}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        if self.remat not in REMAT:
            raise ValueError(f"remat must be one of {REMAT}, got {self.remat!r}")
        for f in ("param_dtype", "compute_dtype"):
            if getattr(self, f) not in DTYPES:
                raise ValueError(f"{f} must be one of {sorted(DTYPES)}, got {getattr(self, f)!r}")

    @property
    def kv_heads(self):
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self):
        return self.head_dim or self.d_model // self.n_heads

    @property
    def word_dim(self):
        return self.embed_dim or self.d_model

    @property
    def projected(self):
        return self.word_dim != self.d_model

    @property
    def logits_vocab(self):
        return self.output_vocab or self.vocab_size

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)
