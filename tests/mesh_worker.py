"""Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices:
one DPKD step (and a second) on a data=2 x fsdp=2 x tensor=2 mesh against the
same steps on one device; checks the shardings the rules give. Exits non-zero
on any mismatch."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dpkd_jax import models, sharding  # noqa: E402
from dpkd_jax.config import default_config  # noqa: E402
from dpkd_jax.models import gpt2, llama  # noqa: E402
from dpkd_jax.optim import make_optimizer  # noqa: E402
from dpkd_jax.batch import Batch  # noqa: E402
from dpkd_jax.specs import Step  # noqa: E402
from dpkd_jax.train import make_step, place_state, step_shardings  # noqa: E402
from conftest import spec_of


def setup():
    cfg = default_config()
    cfg.method = "dpkd"
    cfg.gen.max_new_tokens, cfg.gen.eos_token_id, cfg.gen.pad_token_id = 5, 1, 0
    cfg.train.batch_size, cfg.train.lr, cfg.train.schedule, cfg.train.log_every = 8, 1e-3, "constant", 1
    cfg.loss.dpkd.lm_coef = 0.5
    cfg.model.loss_chunk_tokens = 16  # several chunks per loss, the vocabulary split over tensor
    mk = lambda c, seed: models.init(c, seed)
    # Teacher: a Llama with one KV head (MQA), so tensor=2 exceeds its KV heads; student: GPT-2.
    teacher = llama.tiny_config(vocab_size=96, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64)
    student = gpt2.tiny_config(vocab_size=96, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_positions=32)
    rng = np.random.default_rng(0)
    B, Pl, R = 8, 10, 6
    mask = np.ones((B, Pl), np.int32)
    mask[:, :3] = rng.integers(0, 2, (B, 3)).cumsum(1).clip(0, 1)  # some left padding
    batch = Batch((rng.integers(2, 96, (B, Pl)) * mask).astype(np.int32), mask,
                  rng.integers(2, 96, (B, R)).astype(np.int32), np.ones((B, R), np.int32),
                  lm_ids=rng.integers(0, 96, (B, 9)).astype(np.int32))
    return cfg, mk(teacher, 0), mk(student, 1), batch


def run(placement, steps=2, setup=setup):
    cfg, (t_cfg, t_params), (s_cfg, s_params), batch = setup()
    tx = make_optimizer(cfg.train)
    sh = step_shardings(placement, s_cfg, t_cfg, tx, s_params)
    t_params = sharding.put(t_params, sh["teacher"])
    state = place_state(s_cfg, s_params, tx, sh)
    step = make_step(Step.of(spec_of(cfg)), s_cfg, t_cfg, tx, t_params, shardings=sh)
    losses = []
    for i in range(steps):
        state, m = step(state, sharding.put(batch, sh["batch"]), jax.random.PRNGKey(i))
        losses.append(float(m["loss/total"]))
    return state, losses, t_params


def main():
    assert jax.device_count() == 8, jax.devices()
    s8, l8, t8 = run(sharding.Placement({"data": 2, "fsdp": 2, "tensor": 2}))
    s1, l1, _ = run(sharding.Placement({"data": 1}, devices=jax.devices()[:1]))
    np.testing.assert_allclose(l8, l1, rtol=2e-5)
    for k in s1["params"]:
        np.testing.assert_allclose(np.asarray(s8["params"][k]), np.asarray(s1["params"][k]), rtol=1e-4, atol=1e-6,
                                   err_msg=k)
    # The rules: q [L, D, H, K] -> (None, fsdp, tensor, None); vocab over tensor.
    q = s8["params"]["blocks/attn/q/w"].sharding.spec
    assert tuple(q) == (None, "fsdp", "tensor", None), q
    assert tuple(s8["params"]["embed/tokens"].sharding.spec) == ("tensor", "fsdp")
    assert tuple(s8["params"]["blocks/mlp/up/w"].sharding.spec) == (None, "fsdp", "tensor")
    adam = s8["opt_state"].inner_state[1][0]  # apply_if_finite -> chain(clip, adamw) -> adam
    assert adam.mu["blocks/attn/q/w"].sharding.spec == s8["params"]["blocks/attn/q/w"].sharding.spec
    assert adam.nu["blocks/mlp/down/w"].sharding.spec == P(None, "tensor", "fsdp")
    assert adam.count.sharding.spec == P()
    # Each device holds 1/4 of q (fsdp x tensor) and all 8 hold something.
    shard = s8["params"]["blocks/attn/q/w"].addressable_shards[0].data.shape
    assert shard == (2, 8, 1, 8), shard  # student: L=2, D=16/fsdp, H=2/tensor, K=8
    # Teacher: 1 KV head on tensor=2 is replicated over tensor (query heads stay split).
    assert tuple(t8["blocks/attn/k/w"].sharding.spec) == (None, "fsdp", None, None), t8["blocks/attn/k/w"].sharding.spec
    assert tuple(t8["blocks/attn/q/w"].sharding.spec) == (None, "fsdp", "tensor", None)
    print("OK", l8, l1)


if __name__ == "__main__":
    sys.exit(main())
