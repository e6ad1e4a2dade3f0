"""LoRA students: adapters only train (and only they hold optimizer state), base weights stay
bitwise fixed (every method trains one: tests/test_pipeline.py), exact resume, the merged
export loads in transformers and the PEFT adapter loads in peft, both with our logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import lora_setup
from dpkd_jax import models
from conftest import train
from dpkd_jax.models import LoRA
from dpkd_jax.optim import make_optimizer
from dpkd_jax.train import init_state


def test_only_adapters_get_gradients_and_optimizer_state(tmp_path, tok):
    cfg, _, _, (student, params) = lora_setup(tmp_path, tok)
    trainable = set(student.trainable())
    assert trainable == {n for n in params if n.endswith(("/lora_a", "/lora_b"))} and len(trainable) == 10
    tx = make_optimizer(cfg.train, kinds={n: i.kind for n, i in student.info.items()})
    state = init_state(student, params, tx)
    n_adapter = sum(params[n].size for n in trainable)
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim)
    assert n_opt == 2 * n_adapter  # Adam's two moments, for the adapters only


def test_lora_run_resumes_exactly(tmp_path, tok):
    cfg, data, (t_dec, t_params), (student, params) = lora_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "kd", 4
    straight, _, _ = train(cfg, student, params, t_dec, t_params, data, None, str(tmp_path / "a"))
    cfg.train.steps = 2
    train(cfg, student, params, t_dec, t_params, data, None, str(tmp_path / "b"))
    cfg.train.steps = 4
    resumed, hist, _ = train(cfg, student, params, t_dec, t_params, data, None, str(tmp_path / "b"))
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    for k in straight:
        np.testing.assert_allclose(resumed[k], straight[k], rtol=1e-6, atol=1e-7, err_msg=k)
        if k not in student.trainable():
            np.testing.assert_array_equal(np.asarray(resumed[k]), np.asarray(params[k]), err_msg=k)


@pytest.mark.parametrize("kind", ["llama3_gqa4_bias", "opt"])
def test_merged_export_and_peft_adapter_give_our_logits(checkpoints, kind, rng, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    path, _ = checkpoints[kind]
    base = models.from_pretrained(path)
    model = models.from_pretrained(path, lora=LoRA(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "up", "down")))
    ids = rng.integers(1, 96, (2, 9))
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(base(ids)))  # B = 0: starts as the base
    decoder, params = models.split(model)
    params = {k: (0.05 * jax.random.normal(jax.random.PRNGKey(len(k)), v.shape) if k.endswith("lora_b") else v)
              for k, v in params.items()}
    model = decoder.module(params)
    ours = np.asarray(model(ids))
    assert np.abs(ours - np.asarray(base(ids))).max() > 1e-3  # the adapters do something
    models.save_pretrained(model, str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert models.save_peft_adapter(model, str(tmp_path / "adapter"), path)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        for ref in (merged, peft):
            np.testing.assert_allclose(ref(torch.tensor(ids)).logits.numpy(), ours, atol=2e-5)


def test_gpt2_fused_attention_exports_merged_but_no_peft_adapter(tmp_path, caplog):
    from transformers import AutoModelForCausalLM
    from dpkd_jax.models import gpt2
    decoder, params = models.init(gpt2.tiny_config(lora=LoRA(rank=2, targets=("q", "up"))), 0)
    params = {k: (0.05 * jnp.ones_like(v) if k.endswith("lora_b") else v) for k, v in params.items()}
    model = decoder.module(params)
    assert not models.save_peft_adapter(model, str(tmp_path / "adapter"))
    assert "PEFT adapter not written: gpt2 stores ['q', 'up'] as fused or Conv1D" in caplog.text
    models.save_pretrained(model, str(tmp_path / "merged"))
    ids = np.arange(1, 9)[None]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()(torch.tensor(ids)).logits
    np.testing.assert_allclose(want.numpy(), np.asarray(model(ids)), atol=2e-5)
