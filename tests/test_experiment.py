"""The real-weights experiment, shortened: a tiny teacher pruned to one layer, a few prompts,
2 steps per method, 1 seed, end to end to the table and the plots."""

import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import write_jsonl
from dpkd_jax.data.make_instruct_prompts import KINDS, generate
from dpkd_jax.experiment import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(scale):
    spec = importlib.util.spec_from_file_location("smollm2_pruned", os.path.join(ROOT, "configs", "smollm2_pruned.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(scale)


def test_prompt_set_covers_every_kind_and_eval_is_held_out():
    train, evaluation = generate(400, 40, seed=3)
    assert {r["category"] for r in train} == set(KINDS)
    seen = {(r["instruction"], r["context"]) for r in train}
    assert not any((r["instruction"], r["context"]) in seen for r in evaluation)
    assert generate(400, 40, seed=3) == (train, evaluation)  # deterministic from the seed
    shipped = [json.loads(line) for line in open(os.path.join(ROOT, "dpkd_jax", "data", "prompts", "train.jsonl"))]
    assert len(shipped) >= 2000


def test_unknown_scale_is_named():
    with pytest.raises(ValueError, match="scale must be one of"):
        load_config("tpu")


@pytest.fixture
def short_experiment(hf_pair, tmp_path):
    teacher, _, _ = hf_pair
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    rows = [{"instruction": f"Add {i} and {i + 1}.", "context": "", "response": "", "category": "arithmetic"}
            for i in range(16)]
    write_jsonl(prompts / "train.jsonl", rows[:12])
    write_jsonl(prompts / "eval.jsonl", rows[12:])
    cfg = load_config("cpu")
    with cfg.unlocked():
        cfg.teacher.path, cfg.workdir, cfg.data.template = teacher, str(tmp_path / "work"), "dolly"
        cfg.data.max_prompt_length, cfg.data.max_length, cfg.gen.max_new_tokens = 40, 48, 8
        cfg.train.batch_size, cfg.eval.batch_size, cfg.train.log_every = 4, 4, 1
        cfg.experiment.update(dict(prompts=str(prompts), keep_layers="0", steps=2, n_train=8, n_dev=4, n_eval=4,
                                   eval_points=2, lr_grid=(1e-3,), seeds=(0,), dpkd_betas=(0.1, 1.0),
                                   dpkd_kd_ratios=(0.5,)))
    return cfg


def test_short_experiment_writes_table_and_plots(short_experiment, monkeypatch):
    cfg = short_experiment
    runs = runner.run_experiment(cfg)
    wd = cfg.workdir
    table = open(os.path.join(wd, "table.md")).read()
    group = cfg.experiment.best_of
    assert sum(f"| {n}" in table for n in group) == 1  # only the best on dev is trained over the seeds
    assert table.count("on dev, so not trained further") == len(group) - 1
    for name in (*cfg.experiment.methods, "dpkd_best"):
        assert (f"| {name}" in table) == (name in runs), name
        if name not in runs:
            continue
        (run,) = runs[name]
        assert run["curve"][-1]["step"] == 2
        assert all(np.isfinite(v) for v in run["curve"][-1].values())
    assert "pruned student before training" in table and "| 1 | 0.5 |" in table  # the β sweep's rows
    for png in ("curves.png", "hacking.png"):
        assert os.path.getsize(os.path.join(wd, png)) > 10_000
    # A rerun trains nothing: every run is read back from its record.
    monkeypatch.setattr(runner.run_lib, "train_stage", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = runner.run_experiment(cfg)
    assert again["sft"][0]["curve"] == runs["sft"][0]["curve"]


def test_previous_rows_are_reported_beside_new_ones_without_retraining(short_experiment, monkeypatch):
    cfg = short_experiment
    with cfg.unlocked():
        cfg.experiment.methods, cfg.experiment.dpkd_betas = ("sft", "kd"), ()
    first = runner.run_experiment(cfg)
    prev = os.path.join(cfg.workdir, "previous.json")
    os.replace(os.path.join(cfg.workdir, "results.json"), prev)
    trained = []
    real = runner.run_lib.train_stage
    monkeypatch.setattr(runner.run_lib, "train_stage", lambda ctx, c, *a, **k: trained.append(c.method)
                        or real(ctx, c, *a, **k))
    with cfg.unlocked():
        cfg.experiment.methods, cfg.experiment.previous = ("sft", "kd", "opd_iw"), prev
    runs = runner.run_experiment(cfg)
    assert trained == ["opd"]  # only the new row: its one lr and one seed
    assert runs["kd"] == first["kd"] and runs["opd_iw"][0]["over"] == {"iw_gamma": 0.5}
    table = open(os.path.join(cfg.workdir, "table.md")).read()
    assert "| kd, lr 0.001 (earlier run †)" in table and "| opd_iw [iw_gamma=0.5], lr 0.001 |" in table
    with cfg.unlocked():
        cfg.experiment.previous = os.path.join(cfg.workdir, "missing.json")
    with pytest.raises(runner.InputError, match="config.experiment.previous: cannot read"):
        runner.run_experiment(cfg)
