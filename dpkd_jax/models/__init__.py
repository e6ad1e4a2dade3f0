"""Causal LMs as Flax NNX modules on shared components, one file per family (gpt2, opt,
llama, mistral, qwen2, qwen3, gemma2, gemma3), HF safetensors and GGUF in, HF out.

``from_pretrained(path)`` returns an ``nnx.Module`` (:class:`CausalLM`); ``split(model)``
gives the hashable decode call and flat state the compiled paths use."""

from .config import Attention, Config, LoRA, Mlp, Norm, Rope
from .hf import (export_arrays, from_pretrained, hf_config_dict, is_gguf, load_config, read_hf_config,
                 save_pretrained)
from .peft import save_peft_adapter
from .registry import FAMILIES, family
from .decoder import (Decoder, ParamInfo, abstract, decoder_for, generate, init, merge, param_info, param_table, split,
                      with_config)
from .tokenizers import check_same_vocabulary, load_tokenizer, pad_id, real_vocab_size, vocabularies
from .transformer import CausalLM, flops_per_token, forward_flops_per_token, init_cache, positions_from_mask

__all__ = ["Attention", "Config", "LoRA", "Mlp", "Norm", "Rope", "CausalLM", "Decoder", "ParamInfo", "FAMILIES",
           "family", "from_pretrained", "save_pretrained", "save_peft_adapter", "export_arrays", "load_config",
           "read_hf_config", "hf_config_dict", "is_gguf", "load_tokenizer", "pad_id", "vocabularies",
           "check_same_vocabulary", "real_vocab_size", "split", "merge", "init", "decoder_for", "with_config", "abstract", "param_info", "param_table",
           "init_cache", "positions_from_mask", "flops_per_token", "forward_flops_per_token"]
