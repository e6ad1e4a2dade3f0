"""Config validation naming fields, the paper configs, flag typos."""

import copy
import os

import pytest

from conftest import load_config, write_jsonl
from dpkd_jax import models
from dpkd_jax.config import default_config, validate

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_config_errors_name_the_field(tmp_path):
    c = default_config()
    c.demo.enabled = True
    for field, value, match in [("method", "dpo", "config.method"), ("loss.dpkd.beta", -1.0, "config.loss.dpkd.beta"),
                                ("data.max_prompt_length", 600, "config.data.max_prompt_length"),
                                ("loss.dpkd.form", "xx", "config.loss.dpkd.form"),
                                ("data.template", "gemma2", "config.data.template: must be one of dolly, chat, gemma"),
                                ("data.teacher_template", "xx", "config.data.teacher_template"),
                                ("model.attention_kernel", "flash", "config.model.attention_kernel: unknown kernel"),
                                ("model.attention_block_q", -1, "config.model.attention_block_q"),
                                ("train.micro_batch", 3, "config.train.micro_batch: 3 does not divide the batch per "
                                                         "device 8"),
                                ("train.micro_batch", -1, "config.train.micro_batch: must be an int >= 0"),
                                ("train.micro_batch", "auto", "config.train.micro_batch: 'auto' is chosen from the "
                                                              "compiled step"),
                                ("check.memory_limit_gib", 0.0, "config.check.memory_limit_gib: must be > 0 GiB"),
                                ("check.memory_limit_gib", -2.0, "config.check.memory_limit_gib: must be > 0 GiB")]:
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
    c = load_config(f"{name}.py")
    assert c.method == "dpkd" and c.loss.dpkd.beta == 0.1 and c.loss.dpkd.kd_ratio == 0.5 and c.data.max_length == 512
    kind = "opt" if "opt" in name else "gpt2"
    c.teacher.path = c.student.path = checkpoints[kind][0]
    c.data.train = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "response": "b"}])
    validate(c)
    models.check_same_vocabulary(c.teacher.path, c.student.path)
    assert models.load_config(c.teacher.path).model_type == kind

def test_typo_in_a_config_flag_is_an_error():
    from absl import flags
    from ml_collections import config_flags
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "demo.py"), flag_values=fv,
                                    lock_config=True)
    with pytest.raises(Exception, match="trian"):
        fv(["prog", f"--config={os.path.join(ROOT, 'configs', 'demo.py')}", "--config.trian.steps=3"])
        fv.config  # noqa: B018  (the override is applied on first access in some versions)



def test_only_the_modes_that_read_a_teacher_ask_for_one(tmp_path):
    c = default_config()
    c.student.path, c.data.train = str(tmp_path), "x.jsonl"
    for mode in ("generate", "eval"):  # the student alone (pipeline.one_model)
        c.mode = mode
        validate(copy.deepcopy(c))
    for mode in ("train", "check"):
        c.mode = mode
        with pytest.raises(ValueError, match="config.teacher.path: is empty"):
            validate(copy.deepcopy(c))
    c.teacher.paths = {"a": str(tmp_path)}  # several teachers replace teacher.path, with their routing field
    with pytest.raises(ValueError, match="config.data.teacher_field: teacher.paths names 1 teachers"):
        validate(copy.deepcopy(c))
    c.data.teacher_field = "domain"
    validate(copy.deepcopy(c))
    c.teacher.paths = {"a": str(tmp_path / "missing")}
    with pytest.raises(ValueError, match=r"config.teacher.paths.a: '.*missing' is not a directory"):
        validate(copy.deepcopy(c))


def test_experiment_eval_points_need_a_trained_point():
    """One point is step 0 alone: the experiment would train every run and then fail at its table."""
    c = load_config("smollm2_pruned.py:cpu")
    validate(copy.deepcopy(c))  # the shipped scale passes
    for field, value in (("eval_points", 1), ("steps", 0)):
        bad = copy.deepcopy(c)
        bad.experiment[field] = value
        with pytest.raises(ValueError, match=f"config.experiment.{field}: must be >= "):
            validate(bad)
