"""Data, evaluation metrics, config checks, every method's step, checkpoints/resume, the demo."""

import copy
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from conftest import PIPE_VOCAB as VOCAB, make_tokenizer, tiny_setup, write_jsonl  # noqa: F401
from dpkd_jax import data as D
from dpkd_jax import evaluate as E
from dpkd_jax import models
from dpkd_jax.config import default_config, validate
from dpkd_jax.objectives import OBJECTIVES
from dpkd_jax.models import gpt2
from dpkd_jax.loop import train_loop

ROOT = os.path.dirname(os.path.dirname(__file__))



# --------------------------------------------------------------------- data

def test_template_matches_reference():
    assert D.format_prompt("Do X.") == ("Below is an instruction that describes a task. Write a response that "
                                        "appropriately completes the request.\n\n### Instruction:\nDo X.\n\n"
                                        "### Response:\n")
    assert "### Input:\nctx\n\n### Response:\n" in D.format_prompt("Do X.", "ctx")


def test_malformed_lines_counted_with_line_numbers_and_filters(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Say hi.", "response": "hi"},
        "{not json",
        {"instruction": "", "response": "x"},
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"response": "no instruction"},
        {"instruction": "Say hi.", "context": "", "response": "hi " * 50},
        {"instruction": "long " * 200, "response": "x"},
    ])
    data, rep = D.load_instructions(path, tok, max_prompt_length=64, max_length=80, pad_token_id=0)
    assert (rep.read, rep.malformed, rep.prompt_too_long, rep.response_truncated, rep.kept) == (7, 3, 1, 1, 3)
    assert rep.malformed_lines[0].startswith("line 2: bad JSON") and "line 3" in rep.malformed_lines[1]
    assert "line 5" in rep.malformed_lines[2] and "'instruction'" in rep.malformed_lines[2]
    assert data.prompt_ids.shape == (3, 64) and data.response_ids.shape == (3, 16)
    # left-padded prompts, responses end with EOS
    row = data.response_ids[0][data.response_mask[0] == 1]
    assert row[-1] == tok.eos_token_id
    assert data.prompt_mask[0, -1] == 1 and data.prompt_mask[0, 0] == 0
    assert tok.decode(data.prompt_ids[1][data.prompt_mask[1] == 1]) == D.format_prompt("Add.", "1 and 2")


def test_empty_dataset_is_an_error_naming_the_file(tmp_path, tok):
    path = write_jsonl(tmp_path / "empty.jsonl", ["{bad", {"instruction": "x"}])
    with pytest.raises(ValueError, match="empty.jsonl: no usable examples"):
        D.load_instructions(path, tok, max_prompt_length=64, max_length=80, pad_token_id=0)


def test_batches_are_deterministic_and_resumable(tmp_path, tok):
    rows = [{"instruction": f"Say {i}.", "response": str(i)} for i in range(23)]
    data, _ = D.load_instructions(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_prompt_length=64,
                                  max_length=80, pad_token_id=0)
    a = D.Batches(data, 5, seed=3)
    seq = [a.next()["example_ids"] for _ in range(6)]
    assert a.dropped_per_epoch == 3
    assert len(set(np.concatenate(seq[:4]))) == 20  # an epoch sees distinct examples
    b = D.Batches(data, 5, seed=3)
    for _ in range(3):
        b.next()
    c = D.Batches(data, 5, seed=3)
    c.restore(b.state())
    np.testing.assert_array_equal(c.next()["example_ids"], seq[3])
    train, dev = D.split_dev(data, 4, seed=0)
    assert len(train) == 19 and len(dev) == 4 and not set(train.prompts) & set(dev.prompts)


def test_pretraining_text_is_packed(tmp_path, tok):
    p = tmp_path / "t.txt"
    p.write_text("hi there\n" * 20)
    rows = D.load_packed(str(p), tok, 8)
    assert rows.shape[1] == 8 and rows.shape[0] >= 2 and (rows == tok.eos_token_id).any()


# ---------------------------------------------------------------- metrics

def test_rouge_and_exact_match_on_hand_examples():
    assert E.exact_match("The Cat!", ["the  cat"]) == 100.0
    assert E.exact_match("a cat", "the cat") == 0.0  # articles are kept
    # LCS("the cat sat", "the cat ran") = 2; P = R = 2/3 -> F = 2/3
    np.testing.assert_allclose(E.rouge_l("the cat sat", "the cat ran"), 200 / 3)
    np.testing.assert_allclose(E.rouge_l("cats running", ["dog", "cat run"]), 100.0)  # stemmer, max over refs
    s = E.score_answers(["a b", "x"], ["a b", " ".join(["w"] * 40)])
    assert s["exact_match"] == 50.0 and s["n_<=30"] == 1 and s["n_30-70"] == 1
    assert E.bucket_of(" ".join(["w"] * 70)) == ">=70" and E.bucket_of("w " * 30) == "<=30"


# ----------------------------------------------------------------- config

def test_config_errors_name_the_field(tmp_path):
    c = default_config()
    c.demo.enabled = True
    for field, value, match in [("method", "dpo", "config.method"), ("loss.dpkd.beta", -1.0, "config.loss.dpkd.beta"),
                                ("data.max_prompt_length", 600, "config.data.max_prompt_length"),
                                ("loss.dpkd.form", "xx", "config.loss.dpkd.form")]:
        bad = copy.deepcopy(c)
        *path, key = field.split(".")
        node = bad
        for part in path:
            node = getattr(node, part)
        setattr(node, key, value)
        with pytest.raises(ValueError, match=match):
            validate(bad)
    c.demo.enabled = False
    with pytest.raises(ValueError, match="config.teacher.path"):
        validate(c)
    c.teacher.path, c.student.path = str(tmp_path), str(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.student.path"):
        validate(c)
    c.lock()  # main loads configs locked: unknown keys are refused, not ignored
    with pytest.raises(AttributeError, match="trian"):
        c.train.trian = 3


@pytest.mark.parametrize("name", ["gpt2_xl_to_base", "gpt2_xl_to_medium", "opt13b_to_1p3b"])
def test_paper_configs_load_and_validate_with_stand_in_checkpoints(name, checkpoints, tmp_path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.method == "dpkd" and c.loss.dpkd.beta == 0.1 and c.loss.dpkd.kd_ratio == 0.5 and c.data.max_length == 512
    kind = "opt" if "opt" in name else "gpt2"
    c.teacher.path = c.student.path = checkpoints[kind][0]
    c.data.train = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "response": "b"}])
    validate(c)
    models.check_same_vocabulary(c.teacher.path, c.student.path)
    assert models.load_config(c.teacher.path).model_type == kind


# ------------------------------------------------------- steps, methods

@pytest.mark.parametrize("method", sorted(OBJECTIVES))
def test_every_method_trains(method, tmp_path, tok):
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method = method
    cfg.train.steps = 2
    lm = np.tile(np.arange(17, dtype=np.int32) % VOCAB, (8, 1))
    cfg.loss[method].lm_coef = 0.5
    params, hist, _ = train_loop(cfg, s_cfg, s_params, t_cfg, t_params, data, lm, str(tmp_path / "w"),
                              ref_params=s_params if method == "dadpo" else None)
    assert len(hist) == 2 and all(np.isfinite(h["loss/total"]) for h in hist)
    assert f"loss/{method}" in hist[-1] and "loss/lm" in hist[-1] and "kl/first_token_forward" in hist[-1]
    if method == "dpkd":
        assert {"reward/margin", "reward/accuracy", "length/student_response"} <= set(hist[-1])
    changed = any(not np.allclose(params[k], s_params[k]) for k in params)
    assert changed


def test_overfit_loss_decreases_and_no_recompilation(tmp_path, tok):
    from dpkd_jax.train import init_state, make_optimizer, make_step
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method = "dpkd"
    tx = make_optimizer(cfg.train)
    step = make_step(cfg, s_cfg, t_cfg, tx, t_params)
    state = init_state(jax.tree.map(jax.numpy.copy, s_params), tx)
    batch = {k: v for k, v in D.Batches(data, 4, 0).next().items() if k != "example_ids"}
    first = None
    for i in range(12):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        first = first if first is not None else float(m["loss/ce_gold"])
    assert float(m["loss/ce_gold"]) < first
    assert step.jitted._cache_size() == 1


def test_checkpoint_resume_gives_the_same_run(tmp_path, tok):
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "dpkd", 4
    straight, h1, _ = train_loop(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "a"))
    cfg.train.steps = 2
    train_loop(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "b"))
    cfg.train.steps = 4
    resumed, h2, _ = train_loop(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "b"))
    assert [h["step"] for h in h2] == [1, 2, 3, 4]
    # CPU keeps the old tight tolerance (the CLI resume test is bitwise there); GPU reductions may
    # reorder, and on the H100 the values differed by ~1e-9.
    tol = dict(rtol=1e-6, atol=1e-7) if jax.default_backend() == "cpu" else dict(rtol=1e-5, atol=1e-6)
    for k in straight:
        np.testing.assert_allclose(resumed[k], straight[k], err_msg=k, **tol)
    np.testing.assert_allclose(h2[-1]["loss/total"], h1[-1]["loss/total"], rtol=tol["rtol"])


def test_shortened_demo_runs_end_to_end(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(ROOT, "configs", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = validate(mod.get_config())
    c.workdir = str(tmp_path)
    c.demo.teacher = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}
    c.demo.student = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32}
    c.demo.teacher_steps = c.demo.student_steps = c.demo.distill_steps = 2
    c.demo.methods = ("sft", "dpkd")
    c.train.batch_size, c.train.log_every = 4, 1
    c.gen.max_new_tokens = c.eval.max_new_tokens = 4
    c.eval.max_examples, c.eval.seeds, c.eval.batch_size = 4, (1,), 4
    from dpkd_jax.demo import run_demo
    results = run_demo(c)
    assert set(results) == {"teacher", "student init (SFT)", "sft", "dpkd"}
    out = capsys.readouterr().out
    assert "| method |" in out and "| dpkd |" in out
    assert os.path.isfile(tmp_path / "table.md") and os.path.isfile(tmp_path / "dpkd" / "curves.png")
    assert os.path.isfile(tmp_path / "eval" / "dpkd_demo_eval_answers.jsonl")
    back = models.from_pretrained(str(tmp_path / "dpkd" / "export"))
    assert back.config.n_layers == 1
    # The preflight passes on the demo's exported models (teacher and student alike here).
    from dpkd_jax.preflight import preflight
    c = default_config()
    c.teacher.path = c.student.path = str(tmp_path / "dpkd" / "export")
    c.data.train, c.workdir, c.mode = os.path.join(ROOT, "dpkd_jax", "data", "demo", "train.jsonl"), str(tmp_path / "w"), \
        "check"
    c.data.max_prompt_length, c.data.max_length, c.train.batch_size = 96, 136, 4
    lines = preflight(validate(c), out=lambda s: None)
    assert lines[-1] == "ok" and any("kept" in l for l in lines)
