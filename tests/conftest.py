"""Shared fixtures: tiny random Hugging Face checkpoints written with save_pretrained."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest

VOCAB = 96


def make_tokenizer(path, vocab_size=VOCAB, corpus=None):
    """A byte-level BPE tokenizer trained on a few lines, saved as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60] if vocab_size < 128 else pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus or ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def hf_model(kind, **over):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
        cfg.update(over)
        m = GPT2LMHeadModel(GPT2Config(**cfg))
    else:
        cfg = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64,
                   max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        variants = {"opt": {}, "opt_post_ln": {"do_layer_norm_before": False},
                    "opt_proj": {"word_embed_proj_dim": 16}}
        cfg.update(variants[kind])
        cfg.update(over)
        m = OPTForCausalLM(OPTConfig(**cfg))
    # spread the random LN/bias params so parity checks exercise them
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


MODEL_KINDS = ["gpt2", "opt", "opt_post_ln", "opt_proj"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{kind: (folder, torch model)} for every supported variant."""
    out = {}
    tok = make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))
    for kind in MODEL_KINDS:
        path = str(tmp_path_factory.mktemp(kind))
        m = hf_model(kind)
        m.save_pretrained(path)
        tok.save_pretrained(path)  # one tokenizer shared by all: BPE training is not bit-reproducible
        out[kind] = (path, m)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
