"""Offline teacher caches: reused only for the config that made them; offline mode trains."""

import copy
import os

import jax
import numpy as np
import pytest

from dpkd_jax.specs import Sampling

from conftest import tiny_setup
from dpkd_jax import sampling as S
from dpkd_jax import teacher_cache as TC
from conftest import train

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_offline_teacher_cache_is_reused_only_for_the_config_that_made_it(monkeypatch, tmp_path, tok, capsys):  # noqa
    cfg, data, (t_cfg, t_params), _ = tiny_setup(tmp_path, tok)
    path = str(tmp_path / "teacher_samples.npz")
    first = TC.teacher_samples(Sampling.of(cfg.gen), cfg.seed, cfg.train.batch_size, t_cfg, t_params, data, path)
    assert first["teacher_ids"].shape == (len(data), cfg.gen.max_new_tokens)
    real = S.generate_stepwise

    def refuse(*a, **k):
        raise AssertionError("sampled again")
    monkeypatch.setattr(S, "generate_stepwise", refuse)
    again = TC.teacher_samples(Sampling.of(cfg.gen), cfg.seed, cfg.train.batch_size, t_cfg, t_params, data, path)
    np.testing.assert_array_equal(again["teacher_ids"], first["teacher_ids"])
    monkeypatch.setattr(S, "generate_stepwise", real)
    for change in ("gen", "teacher"):
        c, tp = copy.deepcopy(cfg), t_params
        if change == "gen":
            c.gen.temperature = 0.5
        else:
            tp = dict(t_params, **{"final_norm/bias": t_params["final_norm/bias"] + 1})
        TC.teacher_samples(Sampling.of(c.gen), c.seed, c.train.batch_size, t_cfg, tp, data, path)
        assert "was made by another config, teacher or data; rebuilding" in capsys.readouterr().out


def test_offline_teacher_mode_trains(tmp_path, tok):  # noqa: F811
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.gen.teacher_mode = "seqkd", "offline"
    _, hist, _ = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w"))
    assert os.path.isfile(tmp_path / "w" / "teacher_samples.npz") and len(hist) == 3



def test_sampled_cache_is_unbiased_per_position_and_kd_trains_from_it_alone(tmp_path, tok, monkeypatch):  # noqa
    from dpkd_jax import teacher_cache
    from dpkd_jax.config import validate
    from dpkd_jax.errors import InputError
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    out = teacher_cache.teacher_sampled(4, t_cfg, t_params, data, 12, seed=0)
    ids, counts = out["teacher_sampled_ids"], out["teacher_sampled_counts"]
    assert ids.shape == counts.shape == (len(data), data.response_ids.shape[1], 12) and counts.dtype == np.uint8
    assert (counts.astype(int).sum(-1) == 12).all()
    assert ids.nbytes + counts.nbytes == len(data) * data.response_ids.shape[1] * 12 * 5  # 5 bytes per entry
    # the same draws whatever the batch size (a key per position)
    again = teacher_cache.teacher_sampled(8, t_cfg, t_params, data, 12, seed=0)
    np.testing.assert_array_equal(again["teacher_sampled_ids"], ids)
    # E[counts / n] = p at a position: the empirical frequency over many seeds approaches the teacher's
    freq = np.zeros(t_cfg.config.vocab_size)
    for seed in range(40):
        o = teacher_cache.teacher_sampled(4, t_cfg, t_params, data.take(np.arange(4)), 12, seed=seed)
        np.add.at(freq, o["teacher_sampled_ids"][0, 0], o["teacher_sampled_counts"][0, 0])
    import jax.numpy as jnp
    from dpkd_jax import sampling
    h = sampling.response_hidden(t_cfg, t_params, *(jnp.asarray(a[:1]) for a in (data.prompt_ids, data.prompt_mask,
                                                                                    data.response_ids,
                                                                                    data.response_mask)))
    logp = np.asarray(jax.nn.log_softmax(t_cfg.head(t_params, h)[0, 0]), np.float64)
    p = np.exp(logp)
    # the draws' mean of log p(id) estimates Σ p log p (−entropy) without bias: within 4 standard errors
    est, exact = (freq * logp).sum() / freq.sum(), (p * logp).sum()
    se = np.sqrt((p * (logp - exact) ** 2).sum() / freq.sum())
    assert abs(est - exact) < 4 * se, (est, exact, se)
    # kd trains from it with no teacher weights in the step; other methods are refused by name
    seen = {}
    real = __import__("dpkd_jax.train", fromlist=["make_step"]).make_step
    monkeypatch.setattr("dpkd_jax.loop.make_step", lambda c, s, t, tx, tp, *a, **k: (
        seen.setdefault("teacher_params", tp), real(c, s, t, tx, tp, *a, **k))[1])
    cfg.method, cfg.train.steps, cfg.teacher.topk, cfg.teacher.cache = "kd", 2, 12, "sampled"
    hist = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w")).history
    assert seen["teacher_params"] is None and all(np.isfinite(h["loss/kd"]) for h in hist)
    assert (tmp_path / "w" / "teacher_sampled12.npz").is_file()
    cfg.method = "rkl"
    with pytest.raises(InputError, match="config.teacher.cache: the sampled .* serves kd; method 'rkl'"):
        validate(cfg)
