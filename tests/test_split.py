"""Our models as a Flax user sees them (nnx.Optimizer, nnx.jit, partition specs from the
metadata), and the split (decode call, flat state) every compiled path runs on."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dpkd_jax import models, sharding
from dpkd_jax.models import llama


def test_a_flax_user_trains_our_model_with_nnx_optimizer_and_nnx_jit(checkpoints, rng):
    model = models.from_pretrained(checkpoints["llama3_gqa4_bias"][0])
    assert isinstance(model, nnx.Module)
    opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    ids = jnp.asarray(rng.integers(1, 96, (2, 9)))

    def loss_fn(m):
        logp = jax.nn.log_softmax(m(ids[:, :-1]).astype(jnp.float32))
        return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()

    @nnx.jit
    def train_step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    before = float(loss_fn(model))
    first = float(train_step(model, opt))
    assert abs(first - before) < 1e-5
    for _ in range(3):
        train_step(model, opt)
    assert float(loss_fn(model)) < before - 0.1


def test_nnx_partition_specs_under_the_rules_equal_placement(checkpoints):
    model = models.from_pretrained(checkpoints["qwen3_gqa8_headdim"][0])
    placement = sharding.Placement({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    ours = placement.params(models.param_info(model), "teacher")
    with nnx.logical_axis_rules(list(placement.rules("teacher"))):
        specs = nnx.get_partition_spec(nnx.state(model))
    flat = {"/".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(specs)}
    assert set(flat) == set(ours)
    for name, spec in flat.items():
        assert tuple(spec) == tuple(ours[name].spec) + (None,) * (len(spec) - len(ours[name].spec)), name
    assert ours["blocks/attn/q/w"].spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)


def test_split_names_are_the_state_paths_and_the_decode_call_is_static(checkpoints):
    model = models.from_pretrained(checkpoints["gemma3"][0])
    decoder, params = models.split(model)
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}
    assert set(params) == paths == set(decoder.info)
    again, _ = models.split(models.from_pretrained(checkpoints["gemma3"][0]))
    assert again == decoder and hash(again) == hash(decoder)  # one compile for both
    assert decoder.config == model.config and decoder.info["blocks/attn/q_norm/scale"].kind == "scale"
    ids = jnp.ones((1, 5), jnp.int32)
    out, _ = jax.jit(decoder)(params, ids, models.positions_from_mask(ids), ids)
    np.testing.assert_allclose(out, model(ids), atol=1e-6)
    back = models.merge(decoder, params)
    np.testing.assert_array_equal(back(ids), model(ids))


def test_hidden_states_then_head_equal_the_logits(checkpoints, rng):
    for kind in ("gemma2", "opt_proj"):  # final soft-cap; projected embeddings
        model = models.from_pretrained(checkpoints[kind][0], output_vocab=50)
        ids = jnp.asarray(rng.integers(1, 50, (2, 7)))
        mask = jnp.ones_like(ids)
        h, _ = model.hidden(ids, models.positions_from_mask(mask), mask)
        assert h.shape == (2, 7, model.config.d_model)
        np.testing.assert_allclose(model.head_logits(h), model(ids), atol=1e-6)


def test_parameter_kinds_come_from_the_metadata_and_drive_init_and_decay():
    cfg = llama.tiny_config(lora=models.LoRA(rank=2, targets=("q", "down")))
    decoder, params = models.init(cfg, 0)
    kinds = {n: i.kind for n, i in decoder.info.items()}
    assert kinds["blocks/attn/q/lora_a"] == "lora_a" and kinds["blocks/mlp/down/lora_b"] == "lora_b"
    assert "blocks/attn/k/lora_a" not in kinds
    assert np.all(np.asarray(params["blocks/attn_norm/scale"]) == 1.0)
    assert np.all(np.asarray(params["blocks/attn/q/lora_b"]) == 0.0)  # adapted model starts as the base
    from dpkd_jax.optim import decay_mask
    mask = decay_mask(kinds)(params)
    assert mask["blocks/attn/q/w"] and mask["embed/tokens"] and not mask["blocks/attn_norm/scale"]
    assert set(decoder.trainable()) == {n for n in params if "lora" in n}
