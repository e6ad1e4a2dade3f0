"""ABKD, ToDi and TAID against numpy (method.md §4–6): values, gradients (closed form or
finite differences of the numpy reference) and the limits where they reduce to FKL / RKL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import losses as L

B, T, V = 2, 5, 11


def lsm(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def tmean(per, m):
    return (per * m).sum(-1) / np.maximum(m.sum(-1), 1)


def np_abkd(s, t, m, a, b, tau=1.0):
    lp, lq = lsm(t.astype(np.float64) / tau), lsm(s.astype(np.float64) / tau)
    p, q = np.exp(lp), np.exp(lq)
    if a == 0 and b == 0:
        d = 0.5 * (lp - lq) ** 2
    elif a == 0:
        d = (q**b * np.log(q**b / p**b) - q**b + p**b) / b**2
    elif b == 0:
        d = (p**a * np.log(p**a / q**a) - p**a + q**a) / a**2
    elif a + b == 0:
        d = (np.log(q**a / p**a) + p**a / q**a - 1) / a**2
    else:
        d = -(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)) / (a * b)
    return tmean(d.sum(-1), m)


@pytest.fixture(scope="module")
def logits():
    r = np.random.default_rng(5)
    m = np.ones((B, T), np.float32)
    m[1, 3:] = 0
    return r.normal(size=(B, T, V)).astype(np.float32), (1.5 * r.normal(size=(B, T, V))).astype(np.float32), m


def fd_grad(f, x, eps=1e-5):
    """Central differences of a numpy scalar function (float64)."""
    x = x.astype(np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("a,b", [(0.2, 0.7), (0.5, 0.5), (1.0, 0.3), (0.0, 0.6), (0.4, 0.0), (0.5, -0.5),
                                 (0.0, 0.0), (1.5, -0.4)])
def test_abkd_matches_numpy_value_and_gradient(logits, a, b):
    s, t, m = logits
    got = np.asarray(L.abkd_divergence(s, t, m, alpha=a, beta=b, temperature=1.5))
    np.testing.assert_allclose(got, np_abkd(s, t, m, a, b, 1.5), rtol=2e-4, atol=1e-6)
    g = np.asarray(jax.grad(lambda x: L.abkd_divergence(x, t, m, alpha=a, beta=b, temperature=1.5).sum())(
        jnp.asarray(s)))
    want = fd_grad(lambda x: np_abkd(x, t, m, a, b, 1.5).sum(), s)
    np.testing.assert_allclose(g, want, rtol=2e-3, atol=2e-5)


def test_abkd_reduces_to_forward_and_reverse_kl(logits):
    s, t, m = logits
    np.testing.assert_allclose(L.abkd_divergence(s, t, m, alpha=1.0, beta=0.0), L.forward_kl(s, t, m), rtol=1e-5)
    np.testing.assert_allclose(L.abkd_divergence(s, t, m, alpha=0.0, beta=1.0), L.reverse_kl(s, t, m), rtol=1e-5)
    # the degenerate branches are the limits of the general one (continuous prefactors)
    np.testing.assert_allclose(L.abkd_divergence(s, t, m, alpha=1e-3, beta=0.6),
                               L.abkd_divergence(s, t, m, alpha=0.0, beta=0.6), rtol=5e-3)
    np.testing.assert_allclose(L.abkd_divergence(s, t, m, alpha=0.5, beta=-0.5 + 1e-3),
                               L.abkd_divergence(s, t, m, alpha=0.5, beta=-0.5), rtol=5e-3)
    # (½, ½): 2 Σ (√p − √q)²
    p, q = np.exp(lsm(t)), np.exp(lsm(s))
    np.testing.assert_allclose(L.abkd_divergence(s, t, m, alpha=0.5, beta=0.5),
                               tmean(2 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1), m), rtol=1e-5)


def test_todi_value_is_jeffreys_and_gradient_is_the_weighted_mix(logits):
    s, t, m = logits
    got = np.asarray(L.todi_divergence(s, t, m, temperature=2.0))
    np.testing.assert_allclose(got, L.forward_kl(s, t, m, temperature=2.0) + L.reverse_kl(s, t, m, temperature=2.0),
                               rtol=1e-5)
    # closed form of ∂/∂s with w held fixed: w·∇FKL + (1 − w)·∇RKL at each vocabulary entry
    lp, lq = lsm(t / 2.0), lsm(s / 2.0)
    p, q = np.exp(lp), np.exp(lq)
    w = 1 / (1 + np.exp(-(lp - lq)))
    # f = Σ_v [w p (lp − lq) + (1 − w) q (lq − lp)];  ∂f/∂lq_v, then chain through log-softmax (∂lq/∂z = I − q)
    df_dlq = -w * p + (1 - w) * q * (lq - lp + 1)
    df_dz = (df_dlq - q * df_dlq.sum(-1, keepdims=True)) / 2.0
    want = df_dz * (m / np.maximum(m.sum(-1, keepdims=True), 1))[..., None]
    g = np.asarray(jax.grad(lambda x: L.todi_divergence(x, t, m, temperature=2.0).sum())(jnp.asarray(s)))
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
    gjeff = jax.grad(lambda x: (L.forward_kl(x, t, m, temperature=2.0) + L.reverse_kl(x, t, m, temperature=2.0)).sum())(
        jnp.asarray(s))
    assert not np.allclose(g, gjeff, atol=1e-4)  # not ∇(FKL + RKL)


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_taid_matches_numpy(logits, lam):
    s, t, m = logits
    target = np.exp(lsm((1 - lam) * s + lam * t))
    want = tmean(-(target * lsm(s)).sum(-1), m)
    np.testing.assert_allclose(L.taid_loss(s, t, m, lam=lam), want, rtol=1e-5)
    g = np.asarray(jax.grad(lambda x: L.taid_loss(x, t, m, lam=lam).sum())(jnp.asarray(s)))
    # ∂/∂s of −Σ p^(λ) log softmax(s) with p^(λ) fixed: softmax(s) − p^(λ)
    want_g = (np.exp(lsm(s)) - target) * (m / np.maximum(m.sum(-1, keepdims=True), 1))[..., None]
    np.testing.assert_allclose(g, want_g, rtol=1e-4, atol=1e-6)
    if lam == 0.0:
        assert np.allclose(g, 0, atol=1e-6)


def test_taid_takes_a_traced_lambda(logits):
    s, t, m = logits
    f = jax.jit(lambda lam: L.taid_loss(s, t, m, lam=lam))
    np.testing.assert_allclose(f(1.0), L.taid_loss(s, t, m, lam=1.0), rtol=1e-6)
    np.testing.assert_allclose(f(1.0) - tmean(-(np.exp(lsm(t)) * lsm(t)).sum(-1), m), L.forward_kl(s, t, m),
                               rtol=1e-4, atol=1e-6)  # λ = 1: KL(p‖q) + H(p)
