"""The chunked hidden-state losses equal their dense logits-in forms, values and gradients:
soft-capping, a padded vocabulary, a last chunk shorter than the others, masks ending
mid-chunk, empty rows; and on 8 CPU devices with the vocabulary split over ``tensor``."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import losses as L

B, N, DS, DT, V, VPAD, K = 3, 11, 8, 6, 37, 40, 5
ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.fixture(scope="module")
def arrays():
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    mask = np.ones((B, N), np.float32)
    mask[0, 7:] = 0          # ends mid-chunk
    mask[1, :] = 0           # an empty row: loss 0, finite gradient
    labels = jnp.asarray(r.integers(0, V, (B, N)), jnp.int32)
    a = dict(hs=f(B, N, DS), ws=f(DS, VPAD), bs=f(VPAD), ht=f(B, N, DT), wt=f(DT, VPAD), bt=f(VPAD),
             mask=jnp.asarray(mask), labels=labels)
    a["top_ids"], a["top_logps"] = L.topk_logprobs(heads(a)[1](a["ht"]), K)
    return a


def heads(a):
    s = lambda w: L.linear_head(w, a["bs"], softcap=4.0, vocab=V)
    return s, L.linear_head(a["wt"], a["bt"], softcap=4.0, vocab=V)


PAIRS = [("forward_kl", dict(temperature=2.0)), ("reverse_kl", dict(temperature=0.5)),
         ("generalized_jsd", dict(beta=0.3)), ("generalized_jsd", dict(beta=0.0)), ("generalized_jsd", dict(beta=1.0)),
         ("skew_kl", dict(alpha=0.1)), ("skew_reverse_kl", dict(alpha=0.2)), ("adaptive_kl", dict(mu=0.4)),
         ("dpkd_token_loss", dict(beta=0.5, label_smoothing=0.1))]


def _close(dense_fn, chunked_fn, *args):
    """Values and gradients (w.r.t. the student's hidden states and head weights) agree."""
    d, c = dense_fn(*args), chunked_fn(*args)
    np.testing.assert_allclose(c, d, rtol=2e-5, atol=2e-6)
    gd = jax.grad(lambda *x: dense_fn(*x).sum(), argnums=(0, 1))(*args)
    gc = jax.grad(lambda *x: chunked_fn(*x).sum(), argnums=(0, 1))(*args)
    for x, y in zip(gc, gd):
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)
    return d


@pytest.mark.parametrize("name,kw", PAIRS, ids=[f"{n}-{list(k.values())}" for n, k in PAIRS])
@pytest.mark.parametrize("chunk", [4, 12, 1024])  # positions per chunk: 1 (4 // B), 4 (last one 3), all
def test_pair_divergences_equal_dense(arrays, name, kw, chunk):
    a = arrays
    s, t = heads(a)
    dense = lambda hs, ws: getattr(L, name)(s(ws)(hs), t(a["ht"]), a["mask"], **kw)
    chunked = lambda hs, ws: getattr(L, f"chunked_{name}")(hs, s(ws), a["ht"], t, a["mask"], chunk_size=chunk, **kw)
    d = _close(dense, chunked, a["hs"], a["ws"])
    assert float(d[1]) == 0.0 and float(d[0]) > 0


ROUND3 = [("abkd_divergence", dict(alpha=0.2, beta=0.7, temperature=1.5)), ("abkd_divergence", dict(alpha=0.0, beta=0.5)),
          ("abkd_divergence", dict(alpha=0.5, beta=-0.5)), ("todi_divergence", dict(temperature=2.0)),
          ("taid_loss", dict(lam=0.4)), ("entropy_aware_fkl", dict(tau=2.7, k=6))]


@pytest.mark.parametrize("name,kw", ROUND3, ids=[f"{n}-{list(k.values())}" for n, k in ROUND3])
def test_round3_divergences_equal_dense(arrays, name, kw):
    a = arrays
    s, t = heads(a)
    dense = lambda hs, ws: getattr(L, name)(s(ws)(hs), t(a["ht"]), a["mask"], **kw)
    chunked = lambda hs, ws: getattr(L, f"chunked_{name}")(hs, s(ws), a["ht"], t, a["mask"], chunk_size=12, **kw)
    d = _close(dense, chunked, a["hs"], a["ws"])
    assert float(d[1]) == 0.0 and float(d[0]) > 0


def test_sampled_cache_equals_dense(arrays):
    a = arrays
    s, t = heads(a)
    ids, counts = L.sampled_tokens(t(a["ht"]), jax.random.key(0), 12)
    dense = lambda hs, ws: L.sampled_forward_kl(s(ws)(hs), ids, counts, a["mask"])
    chunked = lambda hs, ws: L.chunked_sampled_forward_kl(hs, s(ws), ids, counts, a["mask"], chunk_size=8)
    _close(dense, chunked, a["hs"], a["ws"])


@pytest.mark.parametrize("name,kw", [("forward_kl", {}), ("reverse_kl", {}), ("generalized_jsd", dict(beta=0.5)),
                                     ("skew_kl", dict(alpha=0.1)), ("skew_reverse_kl", dict(alpha=0.1)),
                                     ("adaptive_kl", dict(mu=0.5))])
def test_sparse_divergences_equal_dense(arrays, name, kw):
    a = arrays
    s, _ = heads(a)
    dense = lambda hs, ws: getattr(L, f"sparse_{name}")(s(ws)(hs), a["top_ids"], a["top_logps"], a["mask"], **kw)
    chunked = lambda hs, ws: getattr(L, f"chunked_sparse_{name}")(hs, s(ws), a["top_ids"], a["top_logps"], a["mask"],
                                                                  chunk_size=8, **kw)
    _close(dense, chunked, a["hs"], a["ws"])


def test_logprobs_and_cross_entropy_equal_dense(arrays):
    a = arrays
    s, _ = heads(a)
    dense = lambda hs, ws: L.cross_entropy(s(ws)(hs), a["labels"], a["mask"])
    chunked = lambda hs, ws: L.chunked_cross_entropy(hs, s(ws), a["labels"], a["mask"], chunk_size=7)
    _close(dense, chunked, a["hs"], a["ws"])
    dense_seq = L.sequence_logprobs(s(a["ws"])(a["hs"]), a["labels"], a["mask"])
    chunked_seq = L.chunked_sequence_logprobs(a["hs"], s(a["ws"]), a["labels"], a["mask"], chunk_size=7)
    for x, y in zip(chunked_seq, dense_seq):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # cached top-k from hidden states equals the dense cache
    ids, logps = L.chunked_topk_logprobs(a["ht"], heads(a)[1], K, chunk_size=5)
    np.testing.assert_array_equal(ids, a["top_ids"])
    np.testing.assert_allclose(logps, a["top_logps"], rtol=1e-6, atol=1e-6)


def test_cald_equals_dense(arrays):
    a = arrays
    s, t = heads(a)
    mask_s = a["mask"][::-1]
    dense = lambda hs, ws: L.cald_loss(s(ws)(hs), t(a["ht"]), a["mask"], s(ws)(hs[:, ::-1]), t(a["ht"][:, ::-1]),
                                       mask_s, alpha=0.2, beta=0.6)
    chunked = lambda hs, ws: L.chunked_cald_loss((hs, a["ht"]), a["mask"], (hs[:, ::-1], a["ht"][:, ::-1]), mask_s,
                                                 (s(ws), t), alpha=0.2, beta=0.6, chunk_size=6)
    _close(dense, chunked, a["hs"], a["ws"])


def test_softcap_applies_before_the_vocabulary_mask():
    """Padded ids get no mass: masking before tanh would give them logit −c (method.md §11.2)."""
    w = jnp.zeros((2, 6)).at[:, 4:].set(-100.0)
    z = L.linear_head(w, softcap=3.0, vocab=4)(jnp.ones((1, 1, 2)))
    assert z.shape == (1, 1, 4)
    np.testing.assert_allclose(jax.nn.softmax(z), 0.25)


def test_teacher_gets_no_gradient(arrays):
    a = arrays
    s, t = heads(a)
    g = jax.grad(lambda ht: L.chunked_forward_kl(a["hs"], s(a["ws"]), ht, t, a["mask"]).sum())(a["ht"])
    assert float(jnp.abs(g).max()) == 0.0


def test_no_full_logits_are_alive_in_the_compiled_gradient():
    """The compiled backward's temporaries hold one chunk of logits, not [B, N, V]."""
    Bb, Nn, D, Vv = 4, 1024, 16, 8192
    hs, ht = jnp.zeros((Bb, Nn, D)), jnp.zeros((Bb, Nn, D))
    w = jnp.zeros((D, Vv))
    mask = jnp.ones((Bb, Nn))
    full = Bb * Nn * Vv * 4

    def temp(fn):
        f = jax.jit(jax.grad(lambda h, w: fn(h, w).sum(), argnums=(0, 1)))
        return f.lower(hs, w).compile().memory_analysis().temp_size_in_bytes
    dense = temp(lambda h, w: L.forward_kl(h @ w, ht @ w, mask))
    chunked = {c: temp(lambda h, w: L.chunked_forward_kl(h, L.linear_head(w), ht, L.linear_head(w), mask,
                                                         chunk_size=c)) for c in (128, 256)}
    chunk_logits = Bb * (256 // Bb) * Vv * 4
    assert dense > 2 * full
    # a few chunk-sized buffers (student and teacher logits, their softmax and gradient), growing with the chunk
    assert chunked[256] <= 5 * chunk_logits < full / 2, (chunked, full)
    assert chunked[128] < 0.7 * chunked[256], chunked


MESH_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from dpkd_jax import losses as L
    from dpkd_jax.sharding import make_mesh, mesh_context
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    r = np.random.default_rng(1)
    hs, ht = (jnp.asarray(r.normal(size=(4, 9, 8)), jnp.float32) for _ in range(2))
    ws, wt = (jnp.asarray(r.normal(size=(8, 64)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(r.random((4, 9)) > 0.2, jnp.float32)
    labels = jnp.asarray(r.integers(0, 61, (4, 9)), jnp.int32)
    def losses_of(hs, ws, ht, wt):
        s, t = L.linear_head(ws, softcap=5.0, vocab=61), L.linear_head(wt, softcap=5.0, vocab=61)
        return (L.chunked_generalized_jsd(hs, s, ht, t, mask, beta=0.4, chunk_size=8)
                + L.chunked_cross_entropy(hs, s, labels, mask, chunk_size=8)
                + L.chunked_dpkd_token_loss(hs, s, ht, t, mask, chunk_size=8)).sum()
    f = jax.jit(jax.value_and_grad(losses_of, argnums=(0, 1)))
    v1, g1 = f(hs, ws, ht, wt)
    row, vocab = NamedSharding(mesh, P("data")), NamedSharding(mesh, P(None, "tensor"))
    args = [jax.device_put(hs, row), jax.device_put(ws, vocab), jax.device_put(ht, row), jax.device_put(wt, vocab)]
    with mesh_context(mesh):
        v8, g8 = f(*args)
    np.testing.assert_allclose(v8, v1, rtol=1e-5)
    for a, b in zip(g8, g1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("ok", float(v1))
""")


def test_vocab_split_over_tensor_on_8_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
