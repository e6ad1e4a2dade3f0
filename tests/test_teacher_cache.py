"""Offline teacher caches: reused only for the config that made them; offline mode trains."""

import copy
import os

import numpy as np

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

