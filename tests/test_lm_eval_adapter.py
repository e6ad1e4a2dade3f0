"""lm_eval_adapter.py and tools/lm_eval: our JAX models under lm-evaluation-harness, against lm-eval's own
``hf`` model (PyTorch transformers) on the same exported checkpoint, over local tasks in tests/lm_eval_tasks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_tokenizer, write_config
from dpkd_jax import lm_eval_adapter as adapter, models
from dpkd_jax.errors import InputError
from dpkd_jax.models import llama
from dpkd_jax.pipeline import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")
TASKS = ["dpkd_tiny_mc", "dpkd_tiny_rolling", "dpkd_tiny_gen"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random Llama (2 x 32, 96 positions) exported as training exports a student, with its tokenizer."""
    root = tmp_path_factory.mktemp("lm_eval")
    corpus = open(os.path.join(TASKS_DIR, "dpkd_tiny.jsonl")).readlines() * 5
    tok = make_tokenizer(str(root / "tok"), vocab_size=500, corpus=corpus)
    dec, params = models.init(llama.tiny_config(vocab_size=500, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                                d_ff=64, max_positions=96), 0)
    export(dec, params, tok, str(root / "work" / "export" / "final"))
    return root / "work", dec, params, tok


def evaluate(model, **kw):
    from lm_eval import evaluator
    return evaluator.simple_evaluate(model=model, tasks=TASKS, task_manager=adapter.task_manager(TASKS_DIR),
                                     log_samples=True, bootstrap_iters=0, **kw)


def test_every_request_kind_matches_lm_evals_hf_model_on_the_export(exported, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    work, dec, params, tok = exported
    ours = evaluate(adapter.JaxLM(dec, params, tok, batch_size=4))
    hf = evaluate("hf", model_args=f"pretrained={work / 'export' / 'final'},dtype=float32", device="cpu")
    for task in TASKS:
        a = [s["resps"] for s in ours["samples"][task]]
        b = [s["resps"] for s in hf["samples"][task]]
        assert len(a) == len(b) == 12, task
        if task == "dpkd_tiny_gen":  # greedy texts
            assert a == b
            continue
        flat = lambda rs: [x for r in rs for choice in r for x in np.ravel(choice[0] if task.endswith("mc") else choice)]
        np.testing.assert_allclose(np.array(flat(a), float), np.array(flat(b), float), atol=1e-3, err_msg=task)
        if task.endswith("mc"):  # is-greedy flags too
            assert [[c[0][1] for c in r] for r in a] == [[c[0][1] for c in r] for r in b]
    for task, metric in (("dpkd_tiny_mc", "acc,none"), ("dpkd_tiny_gen", "exact_match,none")):
        assert ours["results"][task][metric] == hf["results"][task][metric]
    assert 0 < ours["results"]["dpkd_tiny_mc"]["acc,none"] < 1  # the choices are not told apart by length alone
    assert ours["results"]["dpkd_tiny_rolling"]["word_perplexity,none"] == pytest.approx(
        hf["results"]["dpkd_tiny_rolling"]["word_perplexity,none"], rel=1e-3)


def test_rows_past_max_length_lose_their_left_end_and_are_counted(exported):
    _, dec, params, tok = exported
    lm = adapter.JaxLM(dec, params, tok, batch_size=2, max_length=8)
    ctx, cont = list(range(3, 13)), [20, 21]
    (long, _), = lm._loglikelihood_tokens([(None, ctx, cont)], disable_tqdm=True)
    (short, _), = lm._loglikelihood_tokens([(None, ctx[-7:], cont)], disable_tqdm=True)  # the same 9 tokens
    assert lm.truncated == 1 and long == pytest.approx(short, abs=1e-5)
    assert [adapter.width_of(n, 64) for n in (1, 16, 17, 40, 100)] == [16, 16, 32, 64, 64]


def test_the_tool_scores_a_work_dirs_export_and_refuses_an_unknown_task_in_one_line(exported, tmp_path):
    work = exported[0]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "dpkd_jax.tools.lm_eval", f"--model={work}", f"--include_path={TASKS_DIR}"]
    r = subprocess.run(cmd + ["--tasks=dpkd_tiny_mc,dpkd_tiny_nope"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --tasks: lm-eval knows no task 'dpkd_tiny_nope' (did you mean dpkd_tiny_gen, dpkd_tiny_mc, dpkd_tiny_rolling?)"), r.stderr
    r = subprocess.run(cmd + ["--tasks=dpkd_tiny_mc", f"--output={tmp_path}", "--limit=6"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = json.load(open(tmp_path / "lm_eval.json"))["results"]["dpkd_tiny_mc"]
    assert 0 <= scores["acc,none"] <= 1 and "dpkd_tiny_mc" in (tmp_path / "lm_eval.md").read_text()
    assert "dpkd_tiny_mc" in r.stdout


def test_check_tasks_names_the_field_and_the_flag():
    with pytest.raises(InputError, match=r"^config.train.final_lm_eval_tasks: lm-eval knows no task 'zzqx_nope'$"):
        adapter.check_tasks("zzqx_nope", TASKS_DIR, field="config.train.final_lm_eval_tasks")
    with pytest.raises(InputError, match=r"^--tasks: the include path '/no/such' is not a directory$"):
        adapter.check_tasks("dpkd_tiny_mc", "/no/such")
    assert adapter.check_tasks(" dpkd_tiny_mc, dpkd_tiny_gen ", TASKS_DIR) == ["dpkd_tiny_mc", "dpkd_tiny_gen"]


def test_a_run_scores_its_final_student_on_lm_eval_tasks_beside_its_table(hf_pair, tmp_path):
    teacher, student, train = hf_pair
    over = {"train.final_lm_eval_tasks": "dpkd_tiny_mc", "train.final_lm_eval_include_path": TASKS_DIR,
            "train.final_lm_eval_limit": 4}
    config = write_config(tmp_path / "c.py", teacher, student, train, str(tmp_path / "work"), steps=1,
                          method="sft", **over)
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1")
    main = [sys.executable, "-m", "dpkd_jax.main", f"--config={config}"]
    r = subprocess.run(main + ["--config.train.final_lm_eval_tasks=dpkd_tiny_mc,zzqx_nope"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: config.train.final_lm_eval_tasks: lm-eval knows no task 'zzqx_nope'"), r.stderr[-2000:]
    assert not os.path.exists(tmp_path / "work" / "checkpoints")  # refused before any training
    r = subprocess.run(main, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = json.load(open(tmp_path / "work" / "lm_eval.json"))["results"]["dpkd_tiny_mc"]
    assert 0 <= scores["acc,none"] <= 1 and scores["sample_len"] == 4
    assert (tmp_path / "work" / "table.md").exists() and "dpkd_tiny_mc" in (tmp_path / "work" / "lm_eval.md").read_text()
