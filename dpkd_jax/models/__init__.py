"""Causal LMs as pure functions behind a small typed interface: shared components,
one file per family (gpt2, opt, llama, mistral, qwen2, qwen3, gemma2, gemma3),
HF safetensors and GGUF in, HF out."""

from .config import Attention, Config, Mlp, Norm, Rope
from .hf import from_pretrained, hf_config_dict, is_gguf, load_config, read_hf_config, save_pretrained
from .registry import FAMILIES, family
from .tokenizers import check_same_vocabulary, load_tokenizer, pad_id, real_vocab_size, vocabularies
from .transformer import (CausalLM, flops_per_token, forward, forward_flops_per_token, hidden_states,
                          init_cache, init_params, lm_head, param_table, positions_from_mask)

__all__ = ["Attention", "Config", "Mlp", "Norm", "Rope", "CausalLM", "FAMILIES", "family", "from_pretrained",
           "save_pretrained", "load_config", "read_hf_config", "hf_config_dict", "is_gguf", "load_tokenizer", "pad_id", "vocabularies",
           "check_same_vocabulary", "real_vocab_size", "forward", "hidden_states", "lm_head", "init_cache",
           "init_params", "param_table", "positions_from_mask", "flops_per_token", "forward_flops_per_token"]
