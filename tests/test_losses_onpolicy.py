"""On-policy distillation's advantages, IW-OPD weights, the unclipped loss and EOPD's term,
against numpy (method.md §1–3, §10)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import losses as L

B, T, V = 3, 9, 13


@pytest.fixture(scope="module")
def rollout():
    r = np.random.default_rng(3)
    mask = np.ones((B, T), np.float32)
    mask[0, 6:] = 0
    mask[2, :] = 0
    return dict(lp=r.normal(-2, 1, (B, T)).astype(np.float32), old=r.normal(-2, 1, (B, T)).astype(np.float32),
                ref=r.normal(-2, 1, (B, T)).astype(np.float32), mask=mask)


def np_weights(a, m, gamma, eps=1e-8):
    w = np.zeros_like(a)
    for b in range(a.shape[0]):
        d = np.abs(a[b]) * m[b]
        s, prefix = d.sum(), 0.0
        for t in range(a.shape[1]):
            w[b, t] = (1 + gamma * (1 - prefix / max(s, eps))) * m[b, t]
            prefix += d[t]
    return w


def test_opd_advantages_match_numpy(rollout):
    x = rollout
    a = np.asarray(L.opd_advantages(x["lp"], x["old"], x["mask"]))
    np.testing.assert_allclose(a, (x["lp"] - x["old"]) * x["mask"], rtol=1e-6)
    lam = 1.25
    a = np.asarray(L.opd_advantages(x["lp"], x["old"], x["mask"], reward_scale=lam, ref_token_logps=x["ref"]))
    np.testing.assert_allclose(a, (lam * x["lp"] + (1 - lam) * x["ref"] - x["old"]) * x["mask"], rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda lp: L.opd_advantages(lp, x["old"], x["mask"]).sum())(jnp.asarray(x["lp"]))
    assert not np.any(np.asarray(g))  # no gradient through the advantage
    with pytest.raises(ValueError, match="ref_token_logps"):
        L.opd_advantages(x["lp"], x["old"], x["mask"], reward_scale=0.5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_iw_opd_weights_match_numpy(rollout, gamma):
    x = rollout
    a = x["lp"] - x["old"]
    w = np.asarray(L.iw_opd_weights(jnp.asarray(a), x["mask"], gamma=gamma))
    np.testing.assert_allclose(w, np_weights(a, x["mask"], gamma), rtol=1e-5, atol=1e-6)
    valid = w[0, :6]
    assert valid[0] == pytest.approx(1 + gamma) and np.all(np.diff(valid) <= 1e-6) and np.all(valid >= 1 - 1e-6)
    assert np.all(w[2] == 0)
    # S = 0 (teacher = student on every sampled token): 1 + γ everywhere valid
    w0 = np.asarray(L.iw_opd_weights(jnp.zeros((B, T)), x["mask"], gamma=gamma))
    np.testing.assert_allclose(w0, (1 + gamma) * x["mask"])


def test_unclipped_importance_sampling_loss(rollout):
    x = rollout
    logps = jnp.asarray(x["old"] + 0.7)  # ratio e^0.7 ≈ 2.01, far outside the clip range
    adv = L.opd_advantages(x["lp"], x["old"], x["mask"])
    got = np.asarray(L.ppo_clip_loss(logps, x["old"], adv, x["mask"], clip_range=None))
    per = -np.asarray(adv) * np.exp(0.7)
    want = (per * x["mask"]).sum(-1) / np.maximum(x["mask"].sum(-1), 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # gradient −A·ρ·∇log q: nonzero even outside the clip range, unlike the clipped loss
    g = np.asarray(jax.grad(lambda z: L.ppo_clip_loss(z, x["old"], adv, x["mask"], clip_range=None).sum())(logps))
    np.testing.assert_allclose(g, per / np.maximum(x["mask"].sum(-1, keepdims=True), 1) * x["mask"], rtol=1e-5,
                               atol=1e-6)


def np_entropy_aware_fkl(s, t, m, tau, k):
    ls = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(-1, keepdims=True)
    lt = t - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t.max(-1, keepdims=True)
    out = np.zeros(m.shape)
    for b in range(m.shape[0]):
        for i in range(m.shape[1]):
            p = np.exp(lt[b, i])
            h = -(p * lt[b, i]).sum()
            top = np.argsort(-p)[:k]
            pt = p[top] / p[top].sum()
            out[b, i] = (pt * (np.log(pt) - ls[b, i, top])).sum() if h > tau else 0.0
    return (out * m).sum(-1) / np.maximum(m.sum(-1), 1)


def test_entropy_aware_fkl_matches_numpy_and_gates_on_teacher_entropy(rollout):
    r = np.random.default_rng(4)
    s = r.normal(size=(B, T, V)).astype(np.float32)
    t = (r.normal(size=(B, T, V)) * np.linspace(0.2, 4.0, T)[None, :, None]).astype(np.float32)  # sharp to flat
    m = rollout["mask"]
    tau = 1.5
    got = np.asarray(L.entropy_aware_fkl(s, t, m, tau=tau, k=4))
    np.testing.assert_allclose(got, np_entropy_aware_fkl(s, t, m, tau, 4), rtol=1e-5, atol=1e-6)
    assert got[0] > 0 and got[2] == 0
    # the gate shuts some positions: with τ above every entropy the term is 0
    assert np.all(np.asarray(L.entropy_aware_fkl(s, t, m, tau=np.log(V) + 1, k=4)) == 0)
    gt = jax.grad(lambda x: L.entropy_aware_fkl(jnp.asarray(s), x, m, tau=tau, k=4).sum())(jnp.asarray(t))
    assert not np.any(np.asarray(gt))  # the teacher side carries no gradient
