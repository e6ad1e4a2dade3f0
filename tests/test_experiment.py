"""The real-weights experiment, shortened: a tiny teacher pruned to one layer, a few prompts,
2 steps per method, 1 seed, end to end to the table and the plots."""

import json
import os

import numpy as np
import pytest

from conftest import load_config, write_jsonl
from conftest import spec_of
from dpkd_jax.data.make_instruct_prompts import KINDS, generate
from dpkd_jax.experiment import run_experiment, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        load_config("smollm2_pruned.py:tpu")


@pytest.fixture
def short_experiment(hf_pair, tmp_path):
    teacher, _, _ = hf_pair
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    rows = [{"instruction": f"Add {i} and {i + 1}.", "context": "", "response": "", "category": "arithmetic"}
            for i in range(16)]
    write_jsonl(prompts / "train.jsonl", rows[:12])
    write_jsonl(prompts / "eval.jsonl", rows[12:])
    cfg = load_config("smollm2_pruned.py:cpu")
    with cfg.unlocked():
        cfg.teacher.path, cfg.workdir, cfg.data.template = teacher, str(tmp_path / "work"), "dolly"
        cfg.data.max_prompt_length, cfg.data.max_length, cfg.gen.max_new_tokens = 40, 48, 8
        cfg.train.batch_size, cfg.eval.batch_size, cfg.train.log_every = 4, 4, 1
        cfg.experiment.update(dict(prompts=str(prompts), keep_layers="0", steps=2, n_train=8, n_dev=4, n_eval=4,
                                   eval_points=2, lr_grid=(1e-3,), seeds=(0,), dpkd_betas=(0.1, 1.0),
                                   dpkd_kd_ratios=(0.5,),
                                   # a variant, DPKD's knobs and the best-of group; each method's own
                                   # training is tested in test_objectives.py (the full list costs CI minutes)
                                   methods=("sft", "dpkd", "dpkd_dpop", "abkd", "todi", "taid")))
    return cfg


def test_short_experiment_writes_table_and_plots(short_experiment, monkeypatch):
    cfg = short_experiment
    runs = runner.run_experiment(spec_of(cfg))
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
    again = runner.run_experiment(spec_of(cfg))
    assert again["sft"][0]["curve"] == runs["sft"][0]["curve"]


def test_previous_rows_are_reported_beside_new_ones_without_retraining(short_experiment, monkeypatch):
    cfg = short_experiment
    with cfg.unlocked():
        cfg.experiment.methods, cfg.experiment.dpkd_betas = ("sft", "kd"), ()
    first = runner.run_experiment(spec_of(cfg))
    prev = os.path.join(cfg.workdir, "previous.json")
    os.replace(os.path.join(cfg.workdir, "results.json"), prev)
    trained = []
    real = runner.run_lib.train_stage
    monkeypatch.setattr(runner.run_lib, "train_stage", lambda ctx, c, *a, **k: trained.append(c.method)
                        or real(ctx, c, *a, **k))
    with cfg.unlocked():
        cfg.experiment.methods, cfg.experiment.previous = ("sft", "kd", "opd_iw"), prev
    runs = runner.run_experiment(spec_of(cfg))
    assert trained == ["opd"]  # only the new row: its one lr and one seed
    assert runs["kd"] == first["kd"] and runs["opd_iw"][0]["over"] == {"iw_gamma": 0.5}
    table = open(os.path.join(cfg.workdir, "table.md")).read()
    assert "| kd, lr 0.001 (earlier run †)" in table and "| opd_iw [iw_gamma=0.5], lr 0.001 |" in table
    with cfg.unlocked():
        cfg.experiment.previous = os.path.join(cfg.workdir, "missing.json")
    with pytest.raises(runner.InputError, match="config.experiment.previous: cannot read"):
        runner.run_experiment(spec_of(cfg))


# ------------------------------------------------ across tokenizers (configs/smollm2_to_gemma3.py)

@pytest.fixture
def cross_experiment(hf_pair, tmp_path):
    """The cross config shortened: the tiny teacher (Dolly template) and a tiny GPT-2 student with a
    tokenizer of its own that carries Gemma's turn tokens (the student's template is ``gemma``)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from conftest import make_tokenizer
    teacher, _, _ = hf_pair
    s_tok = make_tokenizer(str(tmp_path / "s_tok"), vocab_size=300,
                           corpus=[f"Add {i} and {i + 1}. The sum is {2 * i + 1}." for i in range(40)])
    s_tok.add_special_tokens({"additional_special_tokens": ["<bos>", "<start_of_turn>", "<end_of_turn>"]})
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(s_tok), n_embd=16, n_layer=1, n_head=2, n_positions=128,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(str(tmp_path / "student"))
    s_tok.save_pretrained(str(tmp_path / "student"))
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    rows = [{"instruction": f"Add {i} and {i + 1}.", "context": "", "response": "", "category": "arithmetic"}
            for i in range(16)]
    rows.insert(3, {"instruction": "Add " + "very long " * 30, "context": "", "response": "", "category": "x"})
    write_jsonl(prompts / "train.jsonl", rows[:13])
    write_jsonl(prompts / "eval.jsonl", rows[13:])
    cfg = load_config("smollm2_to_gemma3.py:cpu")
    with cfg.unlocked():
        cfg.teacher.path, cfg.student.path = teacher, str(tmp_path / "student")
        cfg.workdir, cfg.data.teacher_template = str(tmp_path / "work"), "dolly"
        cfg.data.max_prompt_length, cfg.gen.max_new_tokens = 40, 6
        cfg.data.max_length = 40 + 12
        cfg.train.batch_size, cfg.eval.batch_size = 4, 4
        cfg.experiment.update(dict(prompts=str(prompts), steps=2, n_train=8, n_dev=4, n_eval=4, lr_grid=(1e-3,),
                                   seeds=(0,), methods=("dpkd", "dadpo_a0"), dpkd_betas=(0.1, 1.0)))
    return cfg


def test_cross_experiment_trains_each_method_across_tokenizers(cross_experiment, monkeypatch, capsys):
    cfg = cross_experiment
    trained = []
    real = runner.run_lib.train_stage
    monkeypatch.setattr(runner.run_lib, "train_stage", lambda ctx, c, *a, **k: trained.append(
        (c.method, c.loss.block(c.method).beta if c.method == "dpkd" else None)) or real(ctx, c, *a, **k))
    runs = run_experiment(spec_of(cfg))  # the package picks the cross experiment
    assert "12 of 13 prompts fit data.max_prompt_length=40 in both tokenizers; 1 skipped" in capsys.readouterr().out
    # dpkd at the config's β and the β sweep's 0.1 are one run; β=1 is trained once more
    assert sorted(trained, key=str) == sorted([("dpkd", 0.1), ("dpkd", 1.0), ("dadpo", None)], key=str)
    table = open(os.path.join(cfg.workdir, "table.md")).read()
    assert "| teacher (reference) |" in table and "| Gemma 3 270M base before training |" in table
    assert "length of y_s (words)" in table and "| dadpo_a0 [alpha=0], lr 0.001 |" in table
    for name in ("dpkd", "dadpo_a0"):
        (run,) = runs[name]
        assert set(run["curve"][-1]) == {"rougeL", "teacher_logp", "distinct2", "length", "student_nll", "step"}
        assert all(np.isfinite(v) for v in run["curve"][-1].values())
        assert all(h["xtok/host_s"] > 0 for h in run["history"])
    assert os.path.getsize(os.path.join(cfg.workdir, "curves.png")) > 10_000
    start = json.load(open(os.path.join(cfg.workdir, "results.json")))["start"]
    assert start["teacher"]["teacher_logp"] == pytest.approx(-start["teacher"]["student_nll"])


def test_cross_measure_scores_the_answer_in_the_teachers_own_tokens(cross_experiment):
    """The teacher's log-prob of a student's answer, against an independent computation: the
    answer's text encoded by the teacher's tokenizer (+ its EOS), full logits, numpy log-softmax."""
    import jax
    from dpkd_jax import sampling
    from dpkd_jax.evaluate import decode_responses, rouge_l
    from dpkd_jax.experiment.cross import CrossExperiment
    x = CrossExperiment(spec_of(cross_experiment))
    got = x.measure_eval(x.s_cfg, x.s_params)
    c, d, t = x.cfg, x.eval, x.eval_t
    ids, mask = sampling.generate_stepwise(x.s_cfg, x.s_params, d.prompt_ids, d.prompt_mask, jax.random.PRNGKey(0),
                                           sampling.Sampling(max_new_tokens=c.gen.max_new_tokens, greedy=True,
                                                             eos_token_id=c.gen.eos_token_id,
                                                             pad_token_id=c.gen.pad_token_id))
    ids, mask = np.asarray(ids), np.asarray(mask)
    texts = decode_responses(x.tokenizer, ids, mask, c.gen.eos_token_id)
    logps, rouge = [], []
    for i, text in enumerate(texts):
        row = ids[i][mask[i].astype(bool)].tolist()
        raw = x.tokenizer.decode(row[:-1] if row and row[-1] == c.gen.eos_token_id else row)
        toks = x.teacher_tokenizer(raw, add_special_tokens=False)["input_ids"]
        toks += [x.t_eos] if row and row[-1] == c.gen.eos_token_id else []
        r = np.asarray([toks], np.int32)
        logits = np.asarray(sampling.response_logits(x.t_cfg, x.t_params, t.prompt_ids[i:i + 1], t.prompt_mask[i:i + 1],
                                                     r, np.ones_like(r)), np.float64)[0]
        lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        logps.append(lsm[np.arange(len(toks)), toks].mean() if toks else 0.0)
        rouge.append(rouge_l(text, d.references[i]))
    assert got["teacher_logp"] == pytest.approx(np.mean(logps), rel=1e-4)
    assert got["rougeL"] == pytest.approx(np.mean(rouge))
    assert got["length"] == pytest.approx(np.mean([len(s.split()) for s in texts]))
