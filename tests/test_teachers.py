"""Multi-teacher routing: rows grouped by their teacher, one teacher per step, deterministic and
resumable; a run whose rows all name one teacher equals that teacher's single-teacher run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_setup, write_config, write_jsonl
from conftest import spec_of
from dpkd_jax import models, run as run_lib, sharding, teachers
from dpkd_jax.data import Batches, load_instructions
from dpkd_jax.errors import InputError
from dpkd_jax.loop import train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [{"instruction": "Say hi.", "response": "hi there"},
        {"instruction": "Add the numbers.", "context": "1 and 2", "response": "3"}]


def routed_data(tmp_path, tok, names):
    rows = [dict(ROWS[i % 2], domain=n) for i, n in enumerate(names)]
    path = write_jsonl(tmp_path / "routed.jsonl", rows)
    data, _ = load_instructions(path, tok, max_prompt_length=56, max_length=64, pad_token_id=tok.eos_token_id,
                                fields=("domain",))
    return path, data


def test_route_groups_rows_and_names_a_bad_row_by_line(tmp_path, tok):
    path, data = routed_data(tmp_path, tok, ["a", "b", "a", "a"])
    r = teachers.route(data, "domain", ("a", "b"), path)
    assert r.counts() == {"a": 3, "b": 1} and list(r.rows["a"]) == [0, 2, 3]
    with open(path, "a") as f:
        f.write("not json\n" + json.dumps(dict(ROWS[0], domain="c")) + "\n")
    data, report = load_instructions(path, tok, max_prompt_length=56, max_length=64, pad_token_id=tok.eos_token_id,
                                     fields=("domain",))
    assert report.malformed == 1
    with pytest.raises(InputError, match=r"routed.jsonl line 6: teacher 'c' is not one of teacher.paths \('a', 'b'\)"):
        teachers.route(data, "domain", ("a", "b"), path)
    with pytest.raises(InputError, match=r"line 1: no field 'topic'"):
        teachers.route(data, "topic", ("a", "b"), path)


def test_grouped_batches_are_one_teacher_per_step_deterministic_and_resumable(tmp_path, tok):
    _, data = routed_data(tmp_path, tok, ["a"] * 12 + ["b"] * 4)
    r = teachers.route(data, "domain", ("a", "b"), "d")
    make = lambda: teachers.GroupedBatches({n: Batches(d, 2, 5) for n, d in teachers.split(data, r, 2).items()}, 5)
    one, two = make(), make()
    seen = [one.next() for _ in range(40)]
    for name, rows in seen:  # every row of a step is its teacher's
        assert {data.sources[i]["domain"] for i in r.rows[name][rows["example_ids"]]} == {name}
    assert one.counts == {n: sum(s[0] == n for s in seen) for n in ("a", "b")}
    assert 20 < one.counts["a"] < 40 and one.counts["b"] > 3  # drawn in proportion to rows (12 : 4)
    for _ in range(17):
        two.next()
    three = make()
    three.restore(json.loads(json.dumps(two.state())))  # the checkpoint keeps it as JSON
    for name, rows in seen[17:]:
        n2, r2 = three.next()
        assert n2 == name and np.array_equal(r2["example_ids"], rows["example_ids"])
    with pytest.raises(InputError, match="teacher 'b' has 1 training rows, fewer than train.batch_size=2"):
        teachers.split(data.take(np.arange(13)), teachers.route(data.take(np.arange(13)), "domain", ("a", "b"), "d"),
                       2)


def multi_run(cfg, data, routing, teachers_, student, params, workdir):
    c = run_lib.stage_config(spec_of(cfg), cfg.method, str(workdir))
    first = next(iter(teachers_.values()))
    run = run_lib.Run(c, None, sharding.Placement(c.mesh.as_dict()), first, data, teachers=teachers_, routing=routing)
    return train_loop(run, c, student, params)


def single_run(cfg, data, teacher, student, params, workdir):
    c = run_lib.stage_config(spec_of(cfg), cfg.method, str(workdir))
    return train_loop(run_lib.Run(c, None, sharding.Placement(c.mesh.as_dict()), teacher, data), c, student, params)


def test_a_teacher_with_every_row_gives_its_single_teacher_run(tmp_path, tok):
    cfg, _, t_a, (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    t_b = models.init(t_a[0].config, 7)
    cfg.method, cfg.train.steps, cfg.train.save_every = "kd", 3, 0
    for who, other in (("a", "b"), ("b", "a")):
        _, data = routed_data(tmp_path, tok, [who] * 12)
        r = teachers.route(data, "domain", ("a", "b"), "d")
        both = {"a": t_a, "b": t_b}
        multi = multi_run(cfg, data, r, both, s_cfg, s_params, tmp_path / f"multi_{who}")
        single = single_run(cfg, data, both[who], s_cfg, s_params, tmp_path / f"single_{who}")
        wrong = single_run(cfg, data, both[other], s_cfg, s_params, tmp_path / f"wrong_{who}")
        assert multi.history[-1][f"teacher/{who}_steps"] == 3 and multi.history[-1][f"teacher/{other}_steps"] == 0
        for k in single.params:
            np.testing.assert_allclose(multi.params[k], single.params[k], rtol=1e-6, atol=1e-7, err_msg=k)
        assert any(not np.allclose(multi.params[k], wrong.params[k]) for k in single.params)


@pytest.mark.parametrize("method", ["opd", "kd_topk"])
def test_mixed_run_resumes_exactly_with_a_cache_per_teacher(tmp_path, tok, method):
    cfg, _, t_a, (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    t_b = models.init(t_a[0].config, 7)
    cfg.method, cfg.train.steps, cfg.train.save_every = method.split("_")[0], 4, 2
    cfg.teacher.topk = 4 if method == "kd_topk" else 0
    _, data = routed_data(tmp_path, tok, ["a", "b"] * 8)
    r = teachers.route(data, "domain", ("a", "b"), "d")
    both = {"a": t_a, "b": t_b}
    straight = multi_run(cfg, data, r, both, s_cfg, s_params, tmp_path / "straight")
    cfg.train.steps = 2
    multi_run(cfg, data, r, both, s_cfg, s_params, tmp_path / "resumed")
    cfg.train.steps = 4
    resumed = multi_run(cfg, data, r, both, s_cfg, s_params, tmp_path / "resumed")
    last = straight.history[-1]
    assert last["teacher/a_steps"] + last["teacher/b_steps"] == 4
    if method == "opd":  # each step logs its own teacher's KL under its name
        assert all(sum(k.startswith("teacher_kl/") for k in h) == 1 for h in straight.history)
    assert [h["teacher/a_steps"] for h in resumed.history] == [h["teacher/a_steps"] for h in straight.history]
    for k in straight.params:
        np.testing.assert_allclose(resumed.params[k], straight.params[k], rtol=1e-6, atol=1e-7, err_msg=k)
    if method == "kd_topk":
        assert sorted(f for f in os.listdir(tmp_path / "straight") if f.endswith(".npz")) == [
            "teacher_top4_a.npz", "teacher_top4_b.npz"]


@pytest.fixture
def two_teachers(hf_pair, tmp_path):
    """The hf_pair teacher, a second teacher of its shape with other weights, and routed rows."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel
    teacher, student, train = hf_pair
    torch.manual_seed(11)
    other = GPT2LMHeadModel.from_pretrained(teacher)
    for p in other.parameters():
        p.data += 0.02 * torch.randn_like(p)
    other.save_pretrained(str(tmp_path / "other"))
    AutoTokenizer.from_pretrained(teacher).save_pretrained(str(tmp_path / "other"))
    rows = [dict(json.loads(line), domain="chat" if i % 3 else "math") for i, line in enumerate(open(train))]
    path = write_jsonl(tmp_path / "routed.jsonl", rows[:120])
    return teacher, str(tmp_path / "other"), student, path


def cli(config, *extra):
    return subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config}", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_cli_lists_each_teacher_and_names_a_tokenizer_mismatch(two_teachers, tmp_path):
    teacher, other, student, train = two_teachers
    cfg = write_config(tmp_path / "c.py", teacher, student, train, str(tmp_path / "w"),
                       **{"teacher.paths": {"chat": teacher, "math": other}, "data.teacher_field": "domain",
                          "method": "kd"})
    out = cli(cfg, "--config.mode=check")
    assert out.returncode == 0, out.stderr
    assert "check: teachers by 'domain': chat 80 rows, math 40 rows (train and dev rows)" in out.stdout
    assert "check: teacher math: " in out.stdout
    run = cli(cfg, "--config.train.steps=2", "--config.train.save_every=0", "--config.eval.eval_teacher=True")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "teachers (domain): chat" in run.stdout and "| teacher math |" in run.stdout
    from transformers import AutoTokenizer
    from conftest import make_tokenizer
    make_tokenizer(str(tmp_path / "tok2"), vocab_size=300)
    AutoTokenizer.from_pretrained(str(tmp_path / "tok2")).save_pretrained(other)
    bad = cli(cfg, "--config.mode=check")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: config.teacher.paths.math: every teacher must share the student's tokenizer")
    none = cli(cfg, "--config.data.teacher_field=")
    assert "config.data.teacher_field: teacher.paths names 2 teachers" in none.stderr
