"""dpkd_jax.losses against independent numpy formulas and the paper's closed-form gradient."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import losses as L

jax.config.update("jax_enable_x64", False)
SHAPES = [(1, 1, 2), (3, 5, 7), (4, 9, 33)]


# ---------------------------------------------------------------- numpy refs

def np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_mean(v, mask):
    return (v * mask).sum(-1) / np.maximum(mask.sum(-1), 1)


def np_kl(a, b):  # a, b probabilities
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0).sum(-1)


def np_logsig(x):
    return -np.logaddexp(0.0, -x)


def np_divergence(kind, s, t, tau=1.0, **kw):
    q, p = np.exp(np_log_softmax(s / tau)), np.exp(np_log_softmax(t / tau))
    if kind == "fkl":
        return np_kl(p, q)
    if kind == "rkl":
        return np_kl(q, p)
    if kind == "jsd":
        b = kw["beta"]
        if b == 0:
            return np_kl(p, q)
        if b == 1:
            return np_kl(q, p)
        m = b * p + (1 - b) * q
        return b * np_kl(p, m) + (1 - b) * np_kl(q, m)
    if kind == "skl":
        a = kw["alpha"]
        return np_kl(p, a * p + (1 - a) * q)
    if kind == "srkl":
        a = kw["alpha"]
        return np_kl(q, (1 - a) * p + a * q)
    if kind == "akl":
        mu = kw["mu"]
        out = np.zeros(p.shape[:-1])
        for idx in np.ndindex(*p.shape[:-1]):
            pi, qi = p[idx], q[idx]
            order = np.argsort(-pi, kind="stable")
            cum = np.cumsum(pi[order])
            head = np.zeros_like(pi, dtype=bool)
            head[order[cum <= mu]] = True
            head[order[0]] = True
            e = np.abs(pi - qi)
            gh, gt = e[head].sum(), e[~head].sum()
            wh = gh / (gh + gt) if gh + gt > 0 else 0.5
            out[idx] = wh * np_kl(pi, qi) + (1 - wh) * np_kl(qi, pi)
        return out
    raise KeyError(kind)


def np_dpkd(sc, sr, tc, tr, nc, nr, beta=0.1, form="sigmoid", length_normalize=True,
            label_smoothing=0.0, reference_free=False, simpo_gamma=0.5, dpop_lambda=50.0, cpo_alpha=1.0):
    nc, nr = np.maximum(nc, 1), np.maximum(nr, 1)
    if form == "cpo":
        return -np_logsig(beta * (sc - sr)) + cpo_alpha * (-sc / nc)
    if form == "simpo":
        return -np_logsig(beta * sc / nc - beta * sr / nr - simpo_gamma)
    if reference_free:
        tc, tr = 0 * tc, 0 * tr
    dc, dr = (nc, nr) if length_normalize else (1, 1)
    u = (sc - tc) / dc - (sr - tr) / dr
    if form == "ipo":
        return (u - 1 / (2 * beta)) ** 2
    if form == "dpop":
        u = u - dpop_lambda * np.maximum(0, tc - sc) / dc
    e = label_smoothing
    return -(1 - e) * np_logsig(beta * u) - e * np_logsig(-beta * u)


def random_logits(shape, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=shape).astype(np.float32) * scale
    t = rng.normal(size=shape).astype(np.float32) * scale
    mask = (rng.random(shape[:2]) > 0.3).astype(np.float32)
    mask[0, :] = 1.0
    return s, t, mask


# ------------------------------------------------------------- log-probs

@pytest.mark.parametrize("shape", SHAPES)
def test_token_and_sequence_logprobs_and_ce(shape):
    s, _, mask = random_logits(shape, 0)
    labels = np.random.default_rng(1).integers(0, shape[-1], shape[:2])
    ref_tok = np.take_along_axis(np_log_softmax(s), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(L.token_logprobs(s, labels), ref_tok, rtol=1e-5, atol=1e-5)
    logps, lengths = L.sequence_logprobs(s, labels, mask)
    np.testing.assert_allclose(logps, (ref_tok * mask).sum(-1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lengths, mask.sum(-1))
    np.testing.assert_allclose(L.cross_entropy(s, labels, mask), -np_mean(ref_tok, mask), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ divergences

DIVERGENCES = [
    ("fkl", L.forward_kl, {}),
    ("rkl", L.reverse_kl, {}),
    ("jsd", L.generalized_jsd, {"beta": 0.0}),
    ("jsd", L.generalized_jsd, {"beta": 0.3}),
    ("jsd", L.generalized_jsd, {"beta": 0.5}),
    ("jsd", L.generalized_jsd, {"beta": 1.0}),
    ("skl", L.skew_kl, {"alpha": 0.1}),
    ("skl", L.skew_kl, {"alpha": 0.4}),
    ("srkl", L.skew_reverse_kl, {"alpha": 0.1}),
    ("srkl", L.skew_reverse_kl, {"alpha": 0.4}),
    ("akl", L.adaptive_kl, {"mu": 0.5}),
    ("akl", L.adaptive_kl, {"mu": 0.8}),
]


@pytest.mark.parametrize("kind,fn,kw", DIVERGENCES, ids=[f"{k}-{v}" for k, _, v in DIVERGENCES])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_divergences_match_numpy(kind, fn, kw, shape, tau):
    s, t, mask = random_logits(shape, hash((kind, shape)) % 1000)
    got = fn(s, t, mask, temperature=tau, **kw)
    ref = np_mean(np_divergence(kind, s, t, tau, **kw), mask)
    assert got.shape == (shape[0],) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-5)


def test_jsd_endpoints_are_exact_kls():
    s, t, mask = random_logits((3, 4, 11), 7)
    np.testing.assert_allclose(L.generalized_jsd(s, t, mask, beta=0.0), L.forward_kl(s, t, mask), rtol=1e-6)
    np.testing.assert_allclose(L.generalized_jsd(s, t, mask, beta=1.0), L.reverse_kl(s, t, mask), rtol=1e-6)
    # in between, the mixture is a different (smaller) quantity: the endpoints are not the mixture
    assert np.all(np.asarray(L.generalized_jsd(s, t, mask, beta=1e-3)) < np.asarray(L.forward_kl(s, t, mask)))


def test_divergences_are_zero_for_identical_distributions():
    s, _, mask = random_logits((2, 3, 9), 3)
    for _, fn, kw in DIVERGENCES:
        np.testing.assert_allclose(fn(s, s, mask, **kw), 0.0, atol=1e-6)


# ------------------------------------------------------------------- DPKD

def random_pairs(b, seed):
    rng = np.random.default_rng(seed)
    sc, sr, tc, tr = (rng.normal(size=b).astype(np.float32) * 20 - 30 for _ in range(4))
    nc = rng.integers(0, 40, b).astype(np.float32)
    nr = rng.integers(0, 40, b).astype(np.float32)
    return sc, sr, tc, tr, nc, nr


FORM_CASES = [dict(form=f) for f in L.DPKD_FORMS] + [
    dict(form="sigmoid", length_normalize=False),
    dict(form="sigmoid", label_smoothing=0.2),
    dict(form="sigmoid", reference_free=True),
    dict(form="ipo", length_normalize=False, beta=0.5),
    dict(form="ipo", reference_free=True),
    dict(form="simpo", simpo_gamma=1.3, beta=2.0),
    dict(form="cpo", cpo_alpha=0.3),
    dict(form="dpop", dpop_lambda=5.0, length_normalize=False),
    dict(form="sigmoid", beta=1.0),
]


@pytest.mark.parametrize("kw", FORM_CASES, ids=[str(k) for k in FORM_CASES])
@pytest.mark.parametrize("b", [1, 6, 32])
def test_dpkd_forms_match_numpy(kw, b):
    args = random_pairs(b, b)
    got = L.dpkd_loss(*args, **kw)
    ref = np_dpkd(*[a.astype(np.float64) for a in args], **kw)
    assert got.shape == (b,)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_dpkd_default_is_length_normalised_sigmoid_with_beta_0p1():
    sc, sr, tc, tr = (np.array([v], np.float32) for v in (-10.0, -30.0, -12.0, -20.0))
    nc, nr = np.array([5.0]), np.array([10.0])
    h = 0.1 * ((-10 + 12) / 5 - (-30 + 20) / 10)  # 0.1 * (0.4 + 1.0)
    np.testing.assert_allclose(L.dpkd_loss(sc, sr, tc, tr, nc, nr), [np.log1p(np.exp(-h))], rtol=1e-6)


def test_dpkd_gradient_matches_closed_form_eq11():
    """Autodiff through a tiny softmax policy vs Eq. 11:
    ∇L = −σ(−h)·((β/|y_t|)∇log q(y_t) − (β/|y_s|)∇log q(y_s))."""
    rng = np.random.default_rng(0)
    vocab, dim, beta = 7, 5, 0.1
    theta = jnp.asarray(rng.normal(size=(dim, vocab)), jnp.float32)
    feats = jnp.asarray(rng.normal(size=(2, 12, dim)), jnp.float32)  # (y_t, y_s) positions
    toks = jnp.asarray(rng.integers(0, vocab, (2, 12)))
    masks = jnp.asarray([[1.0] * 9 + [0.0] * 3, [1.0] * 4 + [0.0] * 8])
    teacher = jnp.asarray([-14.0, -9.0])

    def logq(th, k):
        lp = jax.nn.log_softmax(feats[k] @ th, axis=-1)
        return jnp.sum(jnp.take_along_axis(lp, toks[k][:, None], -1)[:, 0] * masks[k])

    def loss(th):
        sc, ss = logq(th, 0)[None], logq(th, 1)[None]
        return L.dpkd_loss(sc, ss, teacher[:1], teacher[1:], masks[0].sum()[None], masks[1].sum()[None],
                           beta=beta)[0]

    nt, ns = float(masks[0].sum()), float(masks[1].sum())
    h = beta * ((logq(theta, 0) - teacher[0]) / nt - (logq(theta, 1) - teacher[1]) / ns)
    closed = -jax.nn.sigmoid(-h) * (beta / nt * jax.grad(logq)(theta, 0) - beta / ns * jax.grad(logq)(theta, 1))
    np.testing.assert_allclose(jax.grad(loss)(theta), closed, rtol=1e-5, atol=1e-7)


def test_dpkd_gradient_wrt_logps_unnormalised():
    sc, sr, tc, tr, nc, nr = random_pairs(5, 3)
    g_c, g_r = jax.grad(lambda a, b: L.dpkd_loss(a, b, tc, tr, nc, nr, length_normalize=False).sum(),
                        argnums=(0, 1))(sc, sr)
    h = 0.1 * ((sc - tc) - (sr - tr))
    w = 1 / (1 + np.exp(h))  # σ(−h)
    np.testing.assert_allclose(g_c, -w * 0.1, rtol=1e-5)
    np.testing.assert_allclose(g_r, w * 0.1, rtol=1e-5)


# ------------------------------------------------------ token-level DPKD

def np_dpkd_token(s, t, mask, beta=0.1, label_smoothing=0.0, reference_free=False):
    lq, lp = np_log_softmax(s), np_log_softmax(t)
    c, r = t.argmax(-1)[..., None], s.argmax(-1)[..., None]
    g = lambda a, i: np.take_along_axis(a, i, -1)[..., 0]
    rc, rr = g(lq, c), g(lq, r)
    if not reference_free:
        rc, rr = rc - g(lp, c), rr - g(lp, r)
    h = beta * (rc - rr)
    e = label_smoothing
    return np_mean(-(1 - e) * np_logsig(h) - e * np_logsig(-h), mask)


@pytest.mark.parametrize("kw", [{}, {"beta": 0.5}, {"label_smoothing": 0.1}, {"reference_free": True}])
@pytest.mark.parametrize("shape", SHAPES)
def test_dpkd_token_loss_matches_numpy(kw, shape):
    s, t, mask = random_logits(shape, 11)
    np.testing.assert_allclose(L.dpkd_token_loss(s, t, mask, **kw), np_dpkd_token(s, t, mask, **kw),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------- PLaD, daDPO

@pytest.mark.parametrize("smooth,margin", [(False, 1.0), (False, 0.2), (True, 1.0)])
def test_plad_matches_numpy(smooth, margin):
    sc, sr, _, _, nc, nr = random_pairs(16, 5)
    st, ss = sc / np.maximum(nc, 1), sr / np.maximum(nr, 1)
    ref = -np_logsig(st - ss) if smooth else np.maximum(0, margin - st + ss)
    np.testing.assert_allclose(L.plad_loss(sc, sr, nc, nr, margin=margin, smooth=smooth), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta,alpha", [(0.1, 1.0), (0.5, 0.0), (0.05, 2.5)])
def test_dadpo_matches_numpy(beta, alpha):
    sc, sr, rc, rr, _, _ = random_pairs(8, 9)
    kl = np.abs(np.random.default_rng(2).normal(size=8)).astype(np.float32)
    ref = -np_logsig(beta * ((sc - rc) - (sr - rr))) + alpha * kl
    np.testing.assert_allclose(L.dadpo_loss(sc, sr, rc, rr, kl, beta=beta, alpha=alpha), ref, rtol=1e-5, atol=1e-5)


def test_reward_metrics():
    s, t, n = np.array([-5.0, -8.0]), np.array([-6.0, -6.0]), np.array([2.0, 0.0])
    np.testing.assert_allclose(L.implicit_reward(s, t, beta=0.1), [0.1, -0.2], rtol=1e-6)
    np.testing.assert_allclose(L.implicit_reward(s, t, n, beta=0.1), [0.05, -0.2], rtol=1e-6)
    np.testing.assert_allclose(L.reward_margin(np.array([1.0, 0.0]), np.array([0.5, 0.5])), [0.5, -0.5])
    np.testing.assert_allclose(L.preference_accuracy(np.array([1.0, 0.0]), np.array([0.5, 0.5])), [1.0, 0.0])


# ------------------------------------------- transforms, dtypes, extremes

TOKEN_FNS = [lambda s, t, m: L.forward_kl(s, t, m), lambda s, t, m: L.reverse_kl(s, t, m),
             lambda s, t, m: L.generalized_jsd(s, t, m, beta=0.5), lambda s, t, m: L.skew_kl(s, t, m),
             lambda s, t, m: L.skew_reverse_kl(s, t, m), lambda s, t, m: L.adaptive_kl(s, t, m),
             lambda s, t, m: L.dpkd_token_loss(s, t, m),
             lambda s, t, m: L.cross_entropy(s, jnp.argmax(t, -1), m)]


@pytest.mark.parametrize("i", range(len(TOKEN_FNS)))
def test_token_losses_jit_vmap_grad_bf16_masked_extreme(i):
    fn = TOKEN_FNS[i]
    s, t, mask = random_logits((3, 4, 13), i)
    ref = fn(s, t, mask)
    np.testing.assert_allclose(jax.jit(fn)(s, t, mask), ref, rtol=1e-5, atol=1e-6)
    # vmap over an extra leading axis gives the per-slice results
    stack = lambda a: np.stack([a, a[::-1]])
    vm = jax.vmap(fn)(stack(s), stack(t), stack(mask))
    np.testing.assert_allclose(vm[0], ref, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda x: fn(x, t, mask).sum())(s)
    assert np.all(np.isfinite(g))
    # bf16 in, float32 out, close to the float32 result
    out16 = fn(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), mask)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, ref, rtol=0.05, atol=0.05)
    # a fully masked row is finite (zero), with finite gradients
    m0 = mask.copy()
    m0[1] = 0
    out = fn(s, t, m0)
    assert np.isfinite(out).all() and out[1] == 0
    assert np.isfinite(jax.grad(lambda x: fn(x, t, m0).sum())(s)).all()
    # extreme logits stay finite, gradients too
    big_s = np.where(np.random.default_rng(0).random(s.shape) > 0.5, 1e4, -1e4).astype(np.float32)
    big_t = -big_s
    assert np.isfinite(fn(big_s, big_t, mask)).all()
    assert np.isfinite(jax.grad(lambda x: fn(x, big_t, mask).sum())(big_s)).all()


SEQ_FNS = [lambda sc, sr, tc, tr, nc, nr, f=f: L.dpkd_loss(sc, sr, tc, tr, nc, nr, form=f) for f in L.DPKD_FORMS] + [
    lambda sc, sr, tc, tr, nc, nr: L.plad_loss(sc, sr, nc, nr),
    lambda sc, sr, tc, tr, nc, nr: L.dadpo_loss(sc, sr, tc, tr, nc),
]


@pytest.mark.parametrize("i", range(len(SEQ_FNS)))
def test_sequence_losses_jit_vmap_grad_bf16_empty_extreme(i):
    fn = SEQ_FNS[i]
    args = random_pairs(6, i)
    ref = fn(*args)
    np.testing.assert_allclose(jax.jit(fn)(*args), ref, rtol=1e-6)
    vm = jax.vmap(lambda *a: fn(*[x[None] for x in a])[0])(*args)
    np.testing.assert_allclose(vm, ref, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda a, b: fn(a, b, *args[2:]).sum(), argnums=(0, 1))(*args[:2])
    assert all(np.isfinite(g).all() for g in grads)
    out16 = fn(*[jnp.asarray(a, jnp.bfloat16) for a in args])
    assert out16.dtype == jnp.float32 and np.isfinite(out16).all()
    zeros = np.zeros(6, np.float32)
    assert np.isfinite(fn(*args[:4], zeros, zeros)).all()  # empty responses
    ext = [np.full(6, v, np.float32) for v in (-1e4, 0.0, 0.0, -1e4)] + [zeros + 1, zeros + 1]
    assert np.isfinite(fn(*ext)).all()
    assert all(np.isfinite(g).all() for g in
               jax.grad(lambda a, b: fn(a, b, *ext[2:]).sum(), argnums=(0, 1))(*ext[:2]))


# ------------------------------------------------------------ bad input

def test_bad_inputs_raise_value_errors_naming_the_argument():
    sc, sr, tc, tr, nc, nr = random_pairs(4, 0)
    with pytest.raises(ValueError, match="form"):
        L.dpkd_loss(sc, sr, tc, tr, nc, nr, form="dpo2")
    with pytest.raises(ValueError, match="teacher_rejected_logps"):
        L.dpkd_loss(sc, sr, tc, tr[:3], nc, nr)
    with pytest.raises(ValueError, match="rejected_lengths"):
        L.dpkd_loss(sc, sr, tc, tr, nc, nr[:2])
    with pytest.raises(ValueError, match="beta"):
        L.dpkd_loss(sc, sr, tc, tr, nc, nr, beta=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.dpkd_loss(sc, sr, tc, tr, nc, nr, form="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="reference_free"):
        L.dpkd_loss(sc, sr, tc, tr, nc, nr, form="dpop", reference_free=True)
    s, t, mask = random_logits((2, 3, 5), 0)
    with pytest.raises(ValueError, match="teacher_logits"):
        L.forward_kl(s, t[:, :, :4], mask)
    with pytest.raises(ValueError, match="mask"):
        L.dpkd_token_loss(s, t, mask[:, :2])
    with pytest.raises(ValueError, match="labels"):
        L.cross_entropy(s, np.zeros((2, 2), np.int32), mask)
    with pytest.raises(ValueError, match="beta"):
        L.generalized_jsd(s, t, mask, beta=1.5)
    with pytest.raises(ValueError, match="chosen_lengths"):
        L.plad_loss(sc, sr, nc[:1], nr)


def test_compiles_once_per_shape():
    traces = []

    @jax.jit
    def f(sc, sr, tc, tr, nc, nr):
        traces.append(1)
        return L.dpkd_loss(sc, sr, tc, tr, nc, nr)

    for seed in range(3):
        f(*random_pairs(4, seed))
    assert len(traces) == 1
