"""tools/prune.py: a model with decoder layers removed equals transformers' model with the
same layers removed (Gemma 3's per-layer windows and RoPEs follow their layers)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import VOCAB
from dpkd_jax import models
from dpkd_jax.errors import InputError
from dpkd_jax.tools.prune import parse_layers, prune_checkpoint


def test_parse_layers():
    assert parse_layers("0-2,5", 8) == (0, 1, 2, 5)
    assert parse_layers("5,0-1,1", 8) == (0, 1, 5)  # sorted, unique: layers keep their order
    with pytest.raises(InputError, match="outside 0-7"):
        parse_layers("6-9", 8)
    with pytest.raises(InputError, match="--keep-layers"):
        parse_layers("a-b", 8)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_pruned_checkpoint_matches_transformers_with_the_same_layers_removed(checkpoints, tmp_path, kind):
    src, ref = checkpoints[kind]
    keep = (0, 2)
    out = prune_checkpoint(src, str(tmp_path / "pruned"), "0,2")
    ours = models.from_pretrained(out)
    assert ours.config.n_layers == 2
    cut = AutoModelForCausalLM.from_pretrained(src).eval()
    cut.model.layers = torch.nn.ModuleList([cut.model.layers[i] for i in keep])
    for i, layer in enumerate(cut.model.layers):
        layer.self_attn.layer_idx = i
    cut.config.num_hidden_layers = len(keep)
    if getattr(cut.config, "layer_types", None):
        cut.config.layer_types = [cut.config.layer_types[i] for i in keep]
    ids = np.random.default_rng(0).integers(1, VOCAB, (2, 10))
    with torch.no_grad():
        want = cut(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(ids, np.ones_like(ids)))
    np.testing.assert_allclose(got, want, atol=2e-5)
    # The saved folder loads in transformers as a 2-layer model with the same logits.
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.tensor(ids)).logits.numpy(), want, atol=2e-5)


def test_cli_names_a_bad_layer_list(checkpoints, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dpkd_jax.tools.prune", checkpoints["llama"][0], str(tmp_path / "o"),
                        "--keep-layers", "0-7"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --keep-layers: '0-7' names layers outside 0-2")
