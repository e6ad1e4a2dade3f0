"""Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices: the ``context`` mesh axis.

1. A Llama forward (RoPE, GQA, left padding, packed segments) and its gradient with the sequence split over
   ``context = 4`` (data 2) equal the same on one device, with the dense and the blockwise kernel.
2. kd train steps, unpacked and packed, on ``data 2 x context 4`` equal those on ``data 2 x context 1``.

Exits non-zero on any mismatch; prints OK and the largest differences."""

import dataclasses
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dpkd_jax import models, sharding  # noqa: E402
from dpkd_jax.batch import Packing  # noqa: E402
from dpkd_jax.data import packing  # noqa: E402
from dpkd_jax.models import attention, llama  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh_worker  # noqa: E402

CALLS = []
_parallel = attention.context_parallel


def counted(*args):
    CALLS.append(args[1].shape)
    return _parallel(*args)


attention.context_parallel = counted


def forward_case(kernel):
    """(hidden, d loss / d params) of a forward over 32 slots, on a context-4 mesh and without a mesh."""
    cfg = llama.tiny_config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_positions=64)
    cfg = dataclasses.replace(cfg, attention_kernel=kernel, attention_block_q=4, attention_block_k=4)
    decode, params = models.init(cfg, 0)
    rng = np.random.default_rng(0)
    B, T = 4, 32
    mask = (np.arange(T)[None] >= rng.integers(0, 6, (B, 1))).astype(np.int32)       # left padding
    segments = np.minimum(np.arange(T)[None] // rng.integers(7, 12, (B, 1)), 3).astype(np.int32) * mask
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    tokens = (rng.integers(1, 64, (B, T)) * mask).astype(np.int32)
    weight = jnp.asarray(rng.normal(size=(B, T, 32)), jnp.float32)

    def loss(p):
        h = decode.hidden(p, tokens, positions, mask, segments)
        return jnp.sum(h * weight * mask[..., None]), h
    run = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, want), g_want = run(params)
    mesh = sharding.make_mesh({"data": 2, "context": 4})
    with sharding.mesh_context(mesh):
        (_, got), g_got = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    keep = mask[..., None] > 0
    np.testing.assert_allclose(np.where(keep, got, 0), np.where(keep, want, 0), atol=1e-5, err_msg=kernel)
    for k in g_want:  # float32 sums in another order: within 1e-5 relative, 1e-6 of the largest entry absolute
        scale = float(np.max(np.abs(g_want[k])))
        np.testing.assert_allclose(g_got[k], g_want[k], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{kernel} {k}")
    return float(np.max(np.abs(np.where(keep, got - want, 0))))


def kd_steps(placement, packed):
    cfg, teacher, student, batch = mesh_worker.setup()
    cfg.method = "kd"
    # Adam's eps at 1 makes each update lr x gradient (|g| << 1): the parameters compare the gradients, where
    # Adam's normalisation would turn a zero gradient's float32 noise (a key bias's) into a whole-size step
    cfg.train.adam_eps = 1.0
    if packed:  # prompts and responses end to end in rows of the gold forward's 16 slots
        plan = packing.plan(np.asarray(batch.prompt_mask), np.asarray(batch.response_mask), 16, rows=8)
        batch = batch.replace(packing=Packing(**{k: jnp.asarray(v) for k, v in plan.items()}))
    return mesh_worker.run(placement, steps=2, setup=lambda: (cfg, teacher, student, batch))


def main():
    assert jax.device_count() == 8, jax.devices()
    diffs = {k: forward_case(k) for k in ("dense", "blockwise")}
    assert CALLS, "the context axis never split a forward"
    for packed in (False, True):
        CALLS.clear()
        s4, l4, _ = kd_steps(sharding.Placement({"data": 2, "context": 4}), packed)
        assert CALLS, "the kd step's forwards were not split over the context axis"
        s1, l1, _ = kd_steps(sharding.Placement({"data": 2}, devices=jax.devices()[:2]), packed)
        np.testing.assert_allclose(l4, l1, rtol=1e-5)
        for k in s1["params"]:
            np.testing.assert_allclose(np.asarray(s4["params"][k]), np.asarray(s1["params"][k]), rtol=1e-5,
                                       atol=1e-7, err_msg=f"packed={packed} {k}")
        diffs[f"kd packed={packed}"] = (l4, max(abs(a - b) for a, b in zip(l4, l1)))
    print("OK", diffs)


if __name__ == "__main__":
    sys.exit(main())
