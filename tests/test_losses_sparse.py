"""Sparse teacher (top-k + residual bucket) divergences and DistiLLM-2's CALD against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import losses as L


def lsm(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_sparse(kind, s, t, k, m, beta=0.5):
    """Loop reference: reduce both distributions to k + 1 categories, then the divergence."""
    B, T, V = s.shape
    out = np.zeros(B)
    for b in range(B):
        vals = []
        for i in range(T):
            p, q = np.exp(lsm(t[b, i])), np.exp(lsm(s[b, i]))
            top = np.argsort(-p)[:k]
            pk, qk = list(p[top]) + [max(1 - p[top].sum(), 0.0)], list(q[top]) + [1 - q[top].sum()]
            pk, qk = np.array(pk), np.clip(np.array(qk), 0, None)
            kl = lambda a, c: sum(x * (np.log(x) - np.log(max(y, 1e-30))) for x, y in zip(a, c) if x > 0)
            mix = beta * pk + (1 - beta) * qk
            e = np.abs(pk - qk)
            head = np.cumsum(pk[:-1]) <= beta
            head[0] = True
            head = np.append(head, False)  # the residual bucket is always tail
            w = e[head].sum() / e.sum()
            vals.append({"fkl": kl(pk, qk), "rkl": kl(qk, pk),
                         "jsd": beta * kl(pk, mix) + (1 - beta) * kl(qk, mix),
                         "skl": kl(pk, beta * pk + (1 - beta) * qk),
                         "srkl": kl(qk, (1 - beta) * pk + beta * qk),
                         "akl": w * kl(pk, qk) + (1 - w) * kl(qk, pk)}[kind])
        out[b] = (np.array(vals) * m[b]).sum() / max(m[b].sum(), 1)
    return out


@pytest.mark.parametrize("k", [1, 4, 17])
def test_sparse_divergences_match_numpy(k):
    rng = np.random.default_rng(k)
    s, t = rng.normal(size=(2, 5, 17)) * 2, rng.normal(size=(2, 5, 17)) * 2
    m = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    ids, lps = L.topk_logprobs(jnp.asarray(t), k)
    for kind, fn in (("fkl", L.sparse_forward_kl), ("rkl", L.sparse_reverse_kl),
                     ("jsd", lambda *a: L.sparse_generalized_jsd(*a, beta=0.3)),
                     ("skl", lambda *a: L.sparse_skew_kl(*a, alpha=0.3)),
                     ("srkl", lambda *a: L.sparse_skew_reverse_kl(*a, alpha=0.3)),
                     ("akl", lambda *a: L.sparse_adaptive_kl(*a, mu=0.3))):
        got = np.asarray(fn(jnp.asarray(s), ids, lps, m))
        np.testing.assert_allclose(got, np_sparse(kind, s, t, k, m, beta=0.3), rtol=2e-4, atol=1e-5, err_msg=kind)


def test_k_equal_to_vocabulary_is_the_dense_loss_with_finite_gradients():
    rng = np.random.default_rng(0)
    V = 23
    s, t = jnp.asarray(rng.normal(size=(3, 4, V)) * 3), jnp.asarray(rng.normal(size=(3, 4, V)) * 3)
    m = jnp.ones((3, 4))
    ids, lps = L.topk_logprobs(t, V)
    pairs = [(L.sparse_forward_kl, L.forward_kl, {}), (L.sparse_reverse_kl, L.reverse_kl, {}),
             (L.sparse_generalized_jsd, L.generalized_jsd, {"beta": 0.5}),
             (L.sparse_skew_kl, L.skew_kl, {"alpha": 0.1}), (L.sparse_skew_reverse_kl, L.skew_reverse_kl, {"alpha": 0.3}),
             (L.sparse_adaptive_kl, L.adaptive_kl, {"mu": 0.5})]
    for sparse, dense, kw in pairs:
        np.testing.assert_allclose(np.asarray(sparse(s, ids, lps, m, **kw)), np.asarray(dense(s, t, m, **kw)),
                                   rtol=1e-4, atol=1e-5)
        g = jax.grad(lambda x: sparse(x, ids, lps, m, **kw).sum())(s)
        gd = jax.grad(lambda x: dense(x, t, m, **kw).sum())(s)
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(np.asarray(g), np.asarray(gd), rtol=1e-3, atol=1e-5)


def np_cald(st, tt, mt, ss, ts, ms, alpha, beta):
    def per(s, t, m, f):
        vals = [f(np.exp(lsm(t[b, i])), np.exp(lsm(s[b, i]))) for b in range(s.shape[0]) for i in range(s.shape[1])]
        v = np.array(vals).reshape(s.shape[:2])
        return (v * m).sum(1) / np.maximum(m.sum(1), 1)
    kl = lambda a, c: np.sum(a * (np.log(a) - np.log(c)))
    skl = per(st, tt, mt, lambda p, q: kl(p, alpha * p + (1 - alpha) * q))
    srkl = per(ss, ts, ms, lambda p, q: kl(q, (1 - alpha) * p + alpha * q))
    return (1 - beta) * skl + beta * srkl


def test_cald_matches_numpy_and_stops_the_gradient_inside_srkl():
    rng = np.random.default_rng(5)
    st, tt = rng.normal(size=(2, 4, 11)), rng.normal(size=(2, 4, 11))
    ss, ts = rng.normal(size=(2, 6, 11)), rng.normal(size=(2, 6, 11))
    mt, ms = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32), np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], np.float32)
    got = np.asarray(L.cald_loss(st, tt, mt, ss, ts, ms, alpha=0.1, beta=0.5))
    np.testing.assert_allclose(got, np_cald(st, tt, mt, ss, ts, ms, 0.1, 0.5), rtol=1e-5)
    # Gradient of SRKL with sg(q) inside the mixture: d/dq_logits of Σ q (log q − log M) with M fixed.
    g = np.asarray(jax.grad(lambda x: L.cald_loss(st, tt, mt, x, ts, ms, beta=1.0).sum())(jnp.asarray(ss)))
    q, p = np.exp(lsm(ss)), np.exp(lsm(ts))
    logM = np.log(0.9 * p + 0.1 * q)
    f = np.log(q) - logM  # d/dlogits Σ q f with f's M held fixed: q ⊙ (f + 1 − Σ q (f + 1))
    inner = q * (f + 1)
    want = (inner - q * inner.sum(-1, keepdims=True)) * (ms / np.maximum(ms.sum(1, keepdims=True), 1))[..., None]
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------ the sampled (RS-KD) cache ---

def test_sampled_forward_kl_matches_numpy_and_is_unbiased():
    r = np.random.default_rng(7)
    B_, T_, V_, U = 2, 4, 9, 12
    s = r.normal(size=(B_, T_, V_)).astype(np.float32)
    t = (2 * r.normal(size=(B_, T_, V_))).astype(np.float32)
    m = np.ones((B_, T_), np.float32)
    m[1, 2:] = 0
    ids, counts = L.sampled_tokens(jnp.asarray(t), jax.random.key(0), U)
    ids, counts = np.asarray(ids), np.asarray(counts)
    assert np.all(counts.sum(-1) == U) and counts.min() >= 0
    for b, i in np.ndindex(B_, T_):  # each kept id once, with its multiplicity
        kept = ids[b, i][counts[b, i] > 0]
        assert len(set(kept)) == len(kept)
    ls = s - np.log(np.exp(s).sum(-1, keepdims=True))
    that = counts / U
    per = np.where(that > 0, that * (np.log(np.where(that > 0, that, 1)) - np.take_along_axis(ls, ids, -1)), 0).sum(-1)
    want = (per * m).sum(-1) / m.sum(-1)
    np.testing.assert_allclose(L.sampled_forward_kl(s, ids, counts, m), want, rtol=1e-5, atol=1e-6)
    # unbiased: the mean gradient over many caches approaches the forward-KL gradient
    keys = jax.random.split(jax.random.key(1), 400)
    caches = jax.vmap(lambda k: L.sampled_tokens(jnp.asarray(t), k, U))(keys)
    grad = lambda c: jax.grad(lambda x: L.sampled_forward_kl(x, c[0], c[1], m).sum())(jnp.asarray(s))
    mean_g = np.asarray(jax.vmap(grad)(caches)).mean(0)
    dense_g = np.asarray(jax.grad(lambda x: L.forward_kl(x, t, m).sum())(jnp.asarray(s)))
    np.testing.assert_allclose(mean_g, dense_g, atol=0.02)
    topk_g = np.asarray(jax.grad(lambda x: L.sparse_forward_kl(x, *L.topk_logprobs(jnp.asarray(t), 3), m).sum())(
        jnp.asarray(s)))
    assert np.abs(mean_g - dense_g).max() < np.abs(topk_g - dense_g).max()
