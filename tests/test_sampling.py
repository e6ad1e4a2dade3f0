"""Generation under lax.scan and teacher-forced scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import VOCAB
from dpkd_jax import models, sampling


@pytest.fixture(scope="module")
def model(checkpoints):
    return models.from_pretrained(checkpoints["gpt2"][0])


def prompts(rng, b=4, p=6):
    ids = rng.integers(1, VOCAB, (b, p))
    mask = np.ones((b, p), np.int32)
    mask[1, :2] = 0
    mask[3, :4] = 0
    return ids, mask


def test_greedy_equals_no_cache_argmax_loop(model, rng):
    ids, mask = prompts(rng)
    toks, tmask = models.generate(model, ids, mask,
                                  sampling.Sampling(max_new_tokens=8, greedy=True, eos_token_id=-1, pad_token_id=0))
    assert toks.shape == tmask.shape == (4, 8) and np.all(np.asarray(tmask) == 1)
    for r in range(4):
        seq = list(ids[r][mask[r] == 1])
        for _ in range(8):
            seq.append(int(np.argmax(np.asarray(model(np.array([seq])))[0, -1])))
        assert list(np.asarray(toks[r])) == seq[-8:]


def test_eos_ends_a_row_and_pads_the_rest(model, rng):
    ids, mask = prompts(rng)
    first, _ = models.generate(model, ids, mask,
                               sampling.Sampling(max_new_tokens=5, greedy=True, eos_token_id=-1, pad_token_id=0))
    eos = int(first[0, 1])  # make row 0's second token the EOS
    toks, tmask = models.generate(model, ids, mask,
                                  sampling.Sampling(max_new_tokens=5, greedy=True, eos_token_id=eos, pad_token_id=7))
    toks, tmask = np.asarray(toks), np.asarray(tmask)
    row = toks[0]
    cut = int(np.argmax(row == eos))
    assert cut <= 1 and row[cut] == eos
    assert list(tmask[0]) == [1] * (cut + 1) + [0] * (4 - cut)
    assert np.all(row[cut + 1:] == 7)
    for r in range(4):  # every row: mask is 1 up to and including its first EOS, then 0 with pad tokens
        hits = np.nonzero(toks[r] == eos)[0]
        end = hits[0] + 1 if len(hits) else 5
        assert np.all(tmask[r, :end] == 1) and np.all(tmask[r, end:] == 0) and np.all(toks[r, end:] == 7)


def test_sampling_frequencies_match_softmax(model):
    n = 20000
    ids = np.tile(np.array([[5, 9, 13, 2]]), (n, 1))
    mask = np.ones_like(ids)
    want = np.asarray(jax.nn.softmax(model(ids[:1])[0, -1] / 0.7))
    for kw in [{}, {"top_k": 5}, {"top_p": 0.3}, {"top_k": 12, "top_p": 0.5}]:
        toks, _ = models.generate(model, ids, mask,
                                  sampling.Sampling(max_new_tokens=1, temperature=0.7, eos_token_id=-1, pad_token_id=0,
                                                    **kw), rng=jax.random.PRNGKey(1))
        freq = np.bincount(np.asarray(toks[:, 0]), minlength=VOCAB) / n
        p = want.copy()
        if kw:  # the support as transformers' warpers define it: top-k, then top-p over it renormalised
            keep = np.argsort(-p)[:kw.get("top_k") or VOCAB]
            q = p[keep] / p[keep].sum()
            keep = keep[(np.cumsum(q) - q) < kw.get("top_p", 1.0)]
            p = np.where(np.isin(np.arange(VOCAB), keep), p, 0)
            p /= p.sum()
            assert set(np.nonzero(freq)[0]) <= set(keep) and len(keep) < VOCAB, kw
        tv = 0.5 * np.abs(freq - p).sum()
        assert tv < 0.03, (kw, tv)


def test_rows_sample_independently_and_steps_differ(model):
    ids = np.tile(np.array([[5, 9, 13, 2]]), (64, 1))
    toks, _ = models.generate(model, ids, np.ones_like(ids),
                              sampling.Sampling(max_new_tokens=6, eos_token_id=-1, pad_token_id=0),
                              rng=jax.random.PRNGKey(0))
    assert len({tuple(r) for r in np.asarray(toks)}) > 48
    again, _ = models.generate(model, ids, np.ones_like(ids),
                               sampling.Sampling(max_new_tokens=6, eos_token_id=-1, pad_token_id=0),
                               rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(toks, again)  # same key, same samples


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (0, 0.9), (4, 0.6), (1, 1.0)])
def test_top_k_top_p_keep_exactly_the_right_support(top_k, top_p):
    rng = np.random.default_rng(top_k + int(10 * top_p))
    logits = rng.normal(size=(5, 30)).astype(np.float32) * 2
    out = np.asarray(sampling.process_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
    for r in range(5):
        order = np.argsort(-logits[r])
        keep = order[:top_k] if top_k else order
        probs = np.exp(logits[r][keep] - logits[r][keep].max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        keep = keep[before < top_p]
        kept = np.nonzero(out[r] > np.finfo(np.float32).min)[0]
        assert set(kept) == set(keep)


def test_compiled_once_per_shape(model, rng, monkeypatch):
    monkeypatch.setattr(sampling, "MIN_CHUNK", 16)  # 3 chunks at 40 new tokens
    for f in (sampling._prefill_jit, sampling._chunk_jit, sampling._generate_jit):
        f.clear_cache()
    kw = dict(max_new_tokens=40, eos_token_id=-1, pad_token_id=0)
    for seed in range(3):  # different prompts, padding (real lengths) and temperatures: one shape
        ids, mask = prompts(np.random.default_rng(seed))
        mask[0, : seed + 1] = 0
        models.generate(model, ids, mask, sampling.Sampling(temperature=0.5 + seed, **kw), rng=jax.random.PRNGKey(seed))
        sampling.sample_jit(*models.split(model), ids, mask, jax.random.PRNGKey(seed),
                            sampling.Sampling(temperature=0.5 + seed, **kw))
    assert sampling._prefill_jit._cache_size() == 1
    assert sampling._chunk_jit._cache_size() == len(sampling.chunks(40)) == 3  # one per static chunk
    assert sampling._generate_jit._cache_size() == 1
    decoder, params = models.split(model)
    jaxpr = str(jax.make_jaxpr(lambda p, i, m: sampling.sample(decoder, p, i, m, jax.random.PRNGKey(0),
                                                               sampling.Sampling(**kw)))(params, ids, mask))
    assert "scan" in jaxpr and "cond" in jaxpr


@pytest.mark.parametrize("n", [5, 40])
def test_in_jit_sampler_equals_host_driven_and_early_exit_changes_nothing(model, rng, n, monkeypatch):
    monkeypatch.setattr(sampling, "MIN_CHUNK", 16)  # several chunks at 40 new tokens
    ids, mask = prompts(rng)
    kw = dict(max_new_tokens=n, temperature=1.3, eos_token_id=-1, pad_token_id=0)
    key = jax.random.PRNGKey(4)
    full, _ = sampling.sample_jit(*models.split(model), ids, mask, key, sampling.Sampling(**kw))
    host, _ = models.generate(model, ids, mask, sampling.Sampling(**kw), rng=key)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(host))
    # Pick a token every row emits early as EOS: rows stop, later chunks are skipped, and the
    # tokens equal the run to the maximum cut at each row's first EOS.
    eos = int(np.asarray(full)[:, 0][0])
    kw["eos_token_id"] = eos
    for toks, m in (sampling.sample_jit(*models.split(model), ids, mask, key, sampling.Sampling(**kw)),
                    models.generate(model, ids, mask, sampling.Sampling(**kw), rng=key)):
        toks, m = np.asarray(toks), np.asarray(m)
        for r in range(4):
            end = int(np.argmax(np.asarray(full)[r] == eos)) + 1 if (np.asarray(full)[r] == eos).any() else n
            np.testing.assert_array_equal(toks[r, :end], np.asarray(full)[r, :end])
            assert m[r].sum() == end and (toks[r, end:] == 0).all()


def test_chunks_follow_the_number_of_new_tokens():
    assert sampling.chunks(40) == [(0, 40)]  # short generations: one compiled decode body
    assert sampling.chunks(130) == [(0, 64), (64, 128), (128, 130)]
    assert sampling.chunks(512) == [(0, 128), (128, 256), (256, 384), (384, 512)]  # MAX_CHUNKS bodies


def test_early_exit_skips_the_remaining_chunks(model, rng, monkeypatch):
    monkeypatch.setattr(sampling, "MIN_CHUNK", 16)  # 4 chunks of 16 at this test's 64 new tokens
    ids, mask = prompts(rng)
    calls = []
    real = sampling._chunk_jit
    monkeypatch.setattr(sampling, "_chunk_jit", lambda *a, **k: calls.append(k["start"]) or real(*a, **k))
    greedy, _ = models.generate(model, ids, mask,
                                sampling.Sampling(max_new_tokens=64, greedy=True, eos_token_id=-1, pad_token_id=0))
    assert calls == [s for s, _ in sampling.chunks(64)] and len(calls) == 4
    calls.clear()
    firsts = set(np.asarray(greedy)[:, :16].ravel().tolist())  # every row emits one of these in its first chunk
    row_eos = [t for t in firsts if all(t in np.asarray(greedy)[r, :16] for r in range(4))]
    assert row_eos, "the fixed test model emits no token common to every row's first chunk"
    models.generate(model, ids, mask,
                    sampling.Sampling(max_new_tokens=64, greedy=True, eos_token_id=row_eos[0], pad_token_id=0))
    assert calls == [0]


def test_chunked_attention_over_the_filled_cache_equals_dense(model, rng, monkeypatch):
    monkeypatch.setattr(sampling, "MIN_CHUNK", 16)  # 3 chunks at 48 new tokens
    sampling._generate_jit.clear_cache()
    ids, mask = prompts(rng)
    kw = dict(max_new_tokens=48, temperature=1.0, eos_token_id=-1, pad_token_id=0)
    chunked, _ = sampling.sample_jit(*models.split(model), ids, mask, jax.random.PRNGKey(1), sampling.Sampling(**kw))
    monkeypatch.setattr(sampling, "MAX_CHUNKS", 1)  # one chunk: every step attends over the whole cache
    monkeypatch.setattr(sampling, "MIN_CHUNK", 10**6)
    sampling._generate_jit.clear_cache()
    dense, _ = sampling.sample_jit(*models.split(model), ids, mask, jax.random.PRNGKey(1), sampling.Sampling(**kw))
    sampling._generate_jit.clear_cache()
    assert len(sampling.chunks(48)) == 1
    np.testing.assert_array_equal(np.asarray(chunked), np.asarray(dense))


def test_score_matches_full_forward(model, rng):
    ids, mask = prompts(rng)
    resp, rmask = models.generate(model, ids, mask,
                                  sampling.Sampling(max_new_tokens=5, eos_token_id=3, pad_token_id=0),
                                  rng=jax.random.PRNGKey(2))
    logps, m = sampling.score(*models.split(model), ids, mask, resp, rmask)
    full = np.concatenate([ids, np.asarray(resp)], 1)
    fmask = np.concatenate([mask, np.asarray(rmask)], 1)
    lsm = np.asarray(jax.nn.log_softmax(model(full, attention_mask=fmask), -1))
    P = ids.shape[1]
    for r in range(4):
        for i in range(5):
            if rmask[r, i]:
                np.testing.assert_allclose(logps[r, i], lsm[r, P - 1 + i, resp[r, i]], atol=1e-5)


def test_squeezed_rows_give_the_full_rows_outputs_and_gradients(model, rng):
    """``response_hidden``/``response_features`` on squeezed rows equal the full ``P + N`` rows at every
    response position, and so do their gradients; one row fills the squeezed length exactly, one
    has an empty response."""
    decode, params = models.split(model)
    P, N = 6, 5
    lp, lr = np.array([6, 2, 4, 1]), np.array([0, 5, 3, 2])
    pmask = (np.arange(P)[None] >= P - lp[:, None]).astype(np.int32)
    rmask = (np.arange(N)[None] < lr[:, None]).astype(np.int32)
    pids, rids = rng.integers(1, VOCAB, (4, P)) * pmask, rng.integers(1, VOCAB, (4, N)) * rmask
    length = int((lp + lr).max())
    assert length < P + N
    tokens, positions, mask, starts = sampling.squeezed_rows(pids, pmask, rids, rmask, length)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), lp + lr)
    np.testing.assert_array_equal(np.asarray(tokens)[1, :7], np.concatenate([pids[1, 4:], rids[1]]))
    np.testing.assert_array_equal(np.asarray(starts), lp - 1)
    w = jnp.asarray(rng.normal(size=(4, N, model.config.d_model)), jnp.float32) * rmask[:, :, None]
    loss = lambda p, n: jnp.sum(sampling.response_hidden(decode, p, pids, pmask, rids, rmask, length=n) * w)
    np.testing.assert_allclose(loss(params, length), loss(params, None), rtol=1e-5)
    g_sq, g_full = jax.grad(loss)(params, length), jax.grad(loss)(params, None)
    for k in g_full:
        scale = float(jnp.abs(g_full[k]).max())
        np.testing.assert_allclose(g_sq[k], g_full[k], atol=1e-5 * max(scale, 1e-3), err_msg=k)
    (x, f), (x_full, f_full) = (sampling.response_features(decode, params, pids, pmask, rids, rmask, (0,), length=n)
                                for n in (length, None))
    m = rmask.astype(bool)
    np.testing.assert_allclose(np.asarray(x)[m], np.asarray(x_full)[m], atol=1e-5)
    np.testing.assert_allclose(np.asarray(f)[:, m], np.asarray(f_full)[:, m], atol=1e-5)


@pytest.mark.parametrize("kind,scan", [("gpt2", True), ("llama3_gqa4_bias", True), ("mistral_gqa3_window", True),
                                       ("gemma2", True), ("gemma2", False)])
def test_shared_prompt_forward_gives_each_responses_outputs_and_gradients(checkpoints, rng, kind, scan):
    """Two responses per prompt on one prompt forward (its cache read by both) equal each response's
    own teacher-forced row, values and gradients: learned positions, RoPE, GQA, sliding windows
    shorter than the rows, soft-capping; a scanned model's stacked cache and an unrolled one's
    per-layer arrays. Ragged prompts and responses, one empty response."""
    model = models.from_pretrained(checkpoints[kind][0])
    decode, params = models.split(model if scan else models.with_config(model, scan_layers=False))
    B, P, N = 3, 6, 7
    pmask = (np.arange(P)[None] >= P - np.array([6, 2, 4])[:, None]).astype(np.int32)
    rmask = (np.arange(N)[None] < np.array([7, 2, 0, 4, 1, 7])[:, None]).astype(np.int32)
    pids, rids = rng.integers(1, VOCAB, (B, P)) * pmask, rng.integers(1, VOCAB, (2 * B, N)) * rmask
    twice = lambda a: np.concatenate([a, a], 0)
    w = jnp.asarray(rng.normal(size=(2 * B, N, decode.config.d_model)), jnp.float32) * rmask[:, :, None]
    shared_h = lambda p: sampling.shared_prompt_hidden(decode, p, pids, pmask, rids, rmask)
    own_h = lambda p: sampling.response_hidden(decode, p, twice(pids), twice(pmask), rids, rmask)
    np.testing.assert_allclose(np.asarray(shared_h(params))[rmask == 1], np.asarray(own_h(params))[rmask == 1],
                               atol=1e-5)
    shared, own = (lambda p: jnp.sum(shared_h(p) * w)), (lambda p: jnp.sum(own_h(p) * w))
    g_shared, g_own = jax.grad(shared)(params), jax.grad(own)(params)
    for k in g_own:
        scale = float(jnp.abs(g_own[k]).max())
        np.testing.assert_allclose(g_shared[k], g_own[k], atol=1e-5 * max(scale, 1e-3), err_msg=k)


def test_bad_arguments(model, rng):
    ids, mask = prompts(rng)
    with pytest.raises(ValueError, match="max_new_tokens"):
        models.generate(model, ids, mask, sampling.Sampling(max_new_tokens=0, eos_token_id=0, pad_token_id=0))
    with pytest.raises(ValueError, match="top_p"):
        models.generate(model, ids, mask,
                        sampling.Sampling(max_new_tokens=2, top_p=0.0, eos_token_id=0, pad_token_id=0))
    with pytest.raises(ValueError, match="prompt_mask"):
        models.generate(model, ids, mask[:, 1:], sampling.Sampling(max_new_tokens=2, eos_token_id=0, pad_token_id=0))
