"""MiniLLM's rewards, advantages and PPO-clip loss against loop-by-loop numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import losses as L


def ragged_mask(b, t, seed):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, t + 1, b)
    return (np.arange(t)[None] < lens[:, None]).astype(np.float32)


def np_advantages(r, m, gamma):
    B, T = r.shape
    adv = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if m[b, t]:
                s = sum(gamma ** (u - t) * r[b, u] for u in range(t, T) if m[b, u])
                adv[b, t] = s / m[b, t:].sum()
    vals = adv[m > 0]
    mean, var = vals.mean(), vals.var()
    return np.where(m > 0, (adv - mean) / np.sqrt(var + 1e-8), 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_rewards_and_advantages_match_numpy(seed):
    rng = np.random.default_rng(seed)
    B, T = 3, 7
    m = ragged_mask(B, T, seed)
    tp, sq = rng.normal(size=(B, T)) * 3 - 2, rng.normal(size=(B, T)) * 3 - 2
    r = np.asarray(L.minillm_rewards(tp, sq, m, scale=0.5, clip=2.0))
    want_r = np.where(m > 0, np.clip((tp - sq) / 0.5, -2.0, 2.0), 0.0)
    np.testing.assert_allclose(r, want_r, rtol=1e-6, atol=1e-6)
    a = np.asarray(L.minillm_advantages(r, m, gamma=0.95))
    np.testing.assert_allclose(a, np_advantages(want_r, m, 0.95), rtol=1e-4, atol=1e-5)
    assert abs(a[m > 0].mean()) < 1e-5 and abs(a[m > 0].std() - 1) < 1e-3  # whitened over valid tokens only


def np_ppo(lp, old, adv, m, w, eps):
    ratio = np.exp(lp - old) * w
    per = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps))
    return (per * m).sum(1) / np.maximum(m.sum(1), 1)


def test_ppo_clip_loss_matches_numpy_and_its_gradient_is_clipped():
    rng = np.random.default_rng(3)
    B, T = 4, 6
    m = ragged_mask(B, T, 3)
    lp, old = rng.normal(size=(B, T)) - 2, rng.normal(size=(B, T)) - 2
    adv, w = rng.normal(size=(B, T)), rng.uniform(0.5, 1.5, (B, T))
    for weights in (None, w):
        got = np.asarray(L.ppo_clip_loss(lp, old, adv, m, importance_weights=weights, clip_range=0.2))
        np.testing.assert_allclose(got, np_ppo(lp, old, adv, m, 1.0 if weights is None else w, 0.2), rtol=1e-5,
                                   atol=1e-6)
    # Closed form: d/dlp of -A·ρ is -A·ρ where the unclipped term is the max, 0 where clipping binds.
    g = np.asarray(jax.grad(lambda x: L.ppo_clip_loss(x, old, adv, m, importance_weights=w).sum())(jnp.asarray(lp)))
    ratio = np.exp(lp - old) * w
    unclipped = -adv * ratio >= -adv * np.clip(ratio, 0.8, 1.2)
    want = np.where(unclipped & (m > 0), -adv * ratio, 0.0) / np.maximum(m.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
