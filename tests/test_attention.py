"""The attention entry point (models/attention.py): blockwise, the cuDNN wrapper and splash
against the dense einsum reference; the kernel choice.

Blockwise is exact: forward within 1e-5 and gradients within 1e-4 of dense in float32, on
every row (a query with no allowed key averages every value in both)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax.models import attention as A
from dpkd_jax.models.config import Attention, Config


def inputs(rng, B=2, T=37, S=37, H=4, G=2, K=8, left_pad=(0, 5), right_pad=(3, 0)):
    q = jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, G, S, K)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, G, S, K)), jnp.float32)
    key_mask = np.ones((B, S), np.int32)
    for b in range(B):
        key_mask[b, :left_pad[b]] = 0
        if right_pad[b]:
            key_mask[b, S - right_pad[b]:] = 0
    return q, k, v, jnp.asarray(key_mask)


def segments(B, T, cuts=(9, 20)):
    """Three examples per row: segment ids 0, 1, 2 split at ``cuts``."""
    ids = np.zeros((B, T), np.int32)
    for c in cuts:
        ids[:, c:] += 1
    return jnp.asarray(ids)


CASES = {  # name: (inputs overrides, Mask overrides, Options overrides)
    "mha": (dict(H=4, G=4), {}, {}),
    "gqa2": (dict(H=4, G=2), {}, {}),
    "gqa4": (dict(H=4, G=1), {}, {}),
    "window": (dict(), dict(window=6), {}),
    "softcap": (dict(), {}, dict(softcap=2.0)),
    "window_softcap_gqa4": (dict(H=4, G=1), dict(window=11), dict(softcap=5.0)),
    "odd_t_no_padding": (dict(T=29, S=29, left_pad=(0, 0), right_pad=(0, 0)), {}, {}),
    "prefix_cache": (dict(T=13, S=40, right_pad=(0, 0)), dict(q_offset=27), {}),
    "prefix_cache_window": (dict(T=13, S=40, right_pad=(0, 0)), dict(q_offset=27, window=9), {}),
    "segments": (dict(left_pad=(0, 0)), "segments", {}),
    # five examples in rows of 32 slots
    "segments_packed": (dict(T=32, S=32, left_pad=(0, 0), right_pad=(0, 0)), "segments_packed", {}),
    # one id in two separate runs, and padding 0 between
    "segments_scattered": (dict(T=32, S=32, left_pad=(0, 0), right_pad=(0, 0)), "segments_scattered", {}),
}
SEGMENT_IDS = {"segments": lambda B, T: segments(B, T), "segments_packed": lambda B, T: segments(B, T, (5, 12, 20, 27)),
               "segments_scattered": lambda B, T: jnp.asarray(np.tile(np.repeat([1, 2, 0, 1, 3, 1, 2, 3], 4)[:T], (B, 1)))}


def case(rng, name, block_q=8, block_k=16):
    shape, m, o = CASES[name]
    q, k, v, key_mask = inputs(rng, **shape)
    if isinstance(m, str):
        ids = SEGMENT_IDS[m]
        m = dict(q_segments=ids(q.shape[0], q.shape[1]), k_segments=ids(q.shape[0], k.shape[2]))
    mask = A.Mask(key_mask, **m)
    opts = A.Options(scale=q.shape[-1] ** -0.5, block_q=block_q, block_k=block_k, **o)
    return q, k, v, mask, opts


@pytest.mark.parametrize("name", list(CASES))
def test_blockwise_equals_dense_forward_and_gradients(name, rng):
    q, k, v, mask, opts = case(rng, name)
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def loss(kernel):
        return lambda q, k, v: jnp.sum(kernel(q, k, v, mask, opts) * w)
    np.testing.assert_allclose(A.blockwise(q, k, v, mask, opts), A.dense(q, k, v, mask, opts), atol=1e-5)
    got = jax.jit(jax.grad(loss(A.blockwise), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(A.dense), argnums=(0, 1, 2))(q, k, v)
    for g, d, what in zip(got, want, "qkv"):
        np.testing.assert_allclose(g, d, atol=1e-4, err_msg=f"d{what}")


def test_blockwise_traced_window_and_offset_match_static(rng):
    """A scanned layer's window and a cache offset arrive traced: same numbers as static ones."""
    q, k, v, mask, opts = case(rng, "prefix_cache_window")
    traced = jax.jit(lambda q, k, v, o, w: A.blockwise(q, k, v, mask._replace(q_offset=o, window=w), opts))
    np.testing.assert_allclose(traced(q, k, v, 27, 9), A.dense(q, k, v, mask, opts), atol=1e-5)


def test_blockwise_bfloat16_is_close_to_float32_dense(rng):
    q, k, v, mask, opts = case(rng, "gqa2")
    got = A.blockwise(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, opts)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), A.dense(q, k, v, mask, opts), atol=5e-2)


def test_blockwise_holds_no_t_by_s_array():
    """The compiled forward and backward at T = S = 4096 need far less than one [T, S] float32
    score array per head (4096 x 4096 x 4 heads x 4 bytes = 256 MiB); dense needs several."""
    B, T, H, G, K = 1, 4096, 4, 2, 16
    q = jax.ShapeDtypeStruct((B, T, H, K), jnp.float32)
    kv = jax.ShapeDtypeStruct((B, G, T, K), jnp.float32)
    mask = A.Mask(jnp.ones((B, T), jnp.int32))
    opts = A.Options(scale=0.25, block_q=512, block_k=512)

    def temp(kernel):
        f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(kernel(q, k, v, mask, opts)), argnums=(0, 1, 2)))
        return f.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes
    scores = B * H * T * T * 4
    assert temp(A.blockwise) < scores / 4 < temp(A.dense)


def test_blockwise_skips_masked_blocks():
    """Causal: query block i visits key blocks 0..i; a window of 100 slots visits at most two."""
    sh = A._Shape(T=1024, S=1024, bq=128, bk=128, nq=8, nk=8, scale=1.0, softcap=0.0)
    ranges = [tuple(int(x) for x in A._q_range(sh, 0, 0, i)) for i in range(8)]
    assert ranges == [(0, i + 1) for i in range(8)]
    windowed = [tuple(int(x) for x in A._q_range(sh, 0, 100, i)) for i in range(8)]
    assert windowed == [(0, 1)] + [(i - 1, i + 1) for i in range(1, 8)]
    assert [tuple(int(x) for x in A._k_range(sh, 0, 100, j)) for j in (0, 7)] == [(0, 2), (7, 8)]


def test_cudnn_wrapper_equals_dense_on_valid_rows(rng):
    """The cuDNN call's wrapper (rolling each row's valid run to the front, per-row lengths, a
    left-only window) run through XLA's reference implementation on CPU."""
    for name in ("gqa2", "window"):
        q, k, v, mask, opts = case(rng, name)
        opts = dataclasses.replace(opts, windows=(0, 6))
        got = A.cudnn(q, k, v, mask, opts, implementation="xla")
        want = A.dense(q, k, v, mask, opts)
        valid = np.asarray(mask.key_mask, bool)
        np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", ["gqa2", "window_softcap_gqa4", "segments", "prefix_cache"])
def test_splash_interpreted_equals_dense(name, rng):
    q, k, v, mask, opts = case(rng, name)
    opts = dataclasses.replace(opts, windows=(0, 11))
    with A.splash_interpreted():
        got = A.splash(q, k, v, mask, opts)
        gq = jax.grad(lambda q: jnp.sum(A.splash(q, k, v, mask, opts)[:, :, :1]))(q)
    want = A.dense(q, k, v, mask, opts)
    T = q.shape[1]
    valid = np.asarray(jax.lax.dynamic_slice_in_dim(mask.key_mask, mask.q_offset, T, 1), bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-5)
    wq = jax.grad(lambda q: jnp.sum(A.dense(q, k, v, mask, opts)[:, :, :1]))(q)
    np.testing.assert_allclose(np.asarray(gq)[valid], np.asarray(wq)[valid], atol=1e-4)


def config(**kw):
    return Config("llama", vocab_size=32, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_positions=64,
                  n_kv_heads=2, **kw)


def test_auto_is_dense_below_the_crossover_and_blockwise_above_on_cpu():
    mask = A.Mask(jnp.ones((1, 8), jnp.int32))
    cfg = config()
    assert A.choose(cfg, (1, 64, 4, 8), 64, mask, "cpu") == "dense"
    assert A.choose(cfg, (1, 4096, 4, 8), A.CROSSOVER, mask, "cpu") == "blockwise"
    assert A.choose(cfg, (1, 1, 4, 8), 4096, mask, "cpu") == "dense"          # one-token decode
    assert A.choose(config(attention_kernel="blockwise"), (1, 64, 4, 8), 64, mask, "cpu") == "blockwise"


def test_auto_picks_the_native_kernel_where_it_applies():
    mask = A.Mask(jnp.ones((1, 8), jnp.int32))
    assert A.choose(config(), (1, 4096, 4, 8), 4096, mask, "tpu") == "splash"
    # soft-capping is beyond jax.nn's cuDNN call: blockwise instead, at long lengths
    capped = config(attention=Attention(softcap=50.0))
    assert "soft-capping" in A.unsupported("cudnn", capped, (1, 4096, 4, 8), 4096, mask, "gpu")
    assert A.choose(capped, (1, 4096, 4, 8), 4096, mask, "gpu") == "blockwise"
    assert A.choose(config(attention_kernel="cudnn"), (1, 64, 4, 8), 64, mask, "cpu") == "blockwise"
    over = A.Mask(jnp.ones((1, 8), jnp.int32), q_offset=8)
    assert "cache" in A.unsupported("cudnn", config(head_dim=64), (1, 64, 4, 64), 72, over, "gpu")


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match=r"attention_kernel 'flash'.*auto.*splash"):
        config(attention_kernel="flash")
