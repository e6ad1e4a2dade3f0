"""Flax NNX GPT-2 and OPT models, with Hugging Face checkpoint import/export."""

from .hf import check_same_vocabulary, from_pretrained, load_config, load_tokenizer, save_pretrained
from .transformer import (CausalLM, Config, flops_per_token, forward, hidden_states, init_cache, init_params,
                          lm_head, param_shapes, positions_from_mask)

__all__ = ["CausalLM", "Config", "from_pretrained", "save_pretrained", "load_config", "load_tokenizer",
           "check_same_vocabulary", "forward", "hidden_states", "lm_head", "init_cache", "init_params",
           "param_shapes", "positions_from_mask", "flops_per_token"]
