"""Fit the machine (memory.py): the step's memory at start-up against a capacity, the one-line
error with what would fit, ``train.micro_batch="auto"``, and a run-time out-of-memory as one line."""

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import write_config
from conftest import spec_of
from dpkd_jax import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def long_pair(hf_pair, tmp_path_factory):
    """A thin Llama pair (teacher 2 x 64, student 2 x 32, RoPE up to 16k positions) on hf_pair's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(hf_pair[0])
    root = tmp_path_factory.mktemp("long_pair")
    out = []
    for name, d in (("teacher", 64), ("student", 32)):
        torch.manual_seed(d)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
        m.save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        out.append(str(root / name))
    return out[0], out[1], hf_pair[2]


def cli(config, *extra, limit_as=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    pre = (lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))) if limit_as else None
    return subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config}", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, preexec_fn=pre)


def one_error(r, status=2):
    assert r.returncode == status, (r.returncode, r.stderr[-3000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return errors[0]


def long_rows(path, words=1200, n=32):
    """Training rows whose responses are ``words`` x 4 words (about 3.3 tokens a word on hf_pair's tokenizer)."""
    text = " ".join(["alpha beta gamma delta"] * words)
    path.write_text("".join(f'{{"instruction": "Repeat {i}.", "response": "{text}"}}\n' for i in range(n)))
    return str(path)


def test_a_dense_8k_step_stops_in_check_and_at_start_up_with_what_fits(long_pair, tmp_path):
    """sft, batch 4, responses cut at 8,192 tokens, dense attention forced: over an 8 GiB capacity, both
    ``mode=check`` and the run stop before any weights load, with the line and its numbers."""
    teacher, student, _ = long_pair
    train = long_rows(tmp_path / "long.jsonl", words=2500, n=24)
    config = write_config(tmp_path / "c.py", teacher, student, train, str(tmp_path / "work"), **{"data.dev_num": 4,
        "method": "sft", "data.max_prompt_length": 64, "data.max_length": 64 + 8192,
        "model.attention_kernel": "dense", "check.memory_limit_gib": 8.0, "data.pretrain": ""})
    lines = []
    for extra in (("--config.mode=check",), ()):
        r = cli(config, *extra)
        line = one_error(r)
        for piece in ("train step (sft): needs", "GiB per device but 8.00 GiB is available (check.memory_limit_gib)",
                      "batch per device", "responses up to", "model.attention_kernel=auto needs"):
            assert piece in line, (piece, line)
        assert "memory: train step (sft) needs" in r.stdout
        lines.append(line)
    assert lines[0] == lines[1]
    assert not os.path.isdir(tmp_path / "work" / "checkpoints")
    need = float(lines[0].split("needs ")[1].split(" GiB")[0])
    assert need > 8.0
    auto = float(lines[0].split("model.attention_kernel=auto needs ")[1].split(" GiB")[0])
    assert auto < 8.0 < need


def _load(config):
    import importlib.util
    spec = importlib.util.spec_from_file_location("c", config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return spec_of(mod.get_config())


def _needs(config, **changes):
    return memory.step_need(_load(config), {"data": 1, "fsdp": 1, "tensor": 1}, **changes).total / 2**30


def test_auto_micro_batch_fits_a_lowered_limit_and_trains_as_the_full_batch(long_pair, tmp_path):
    over = {"method": "kd", "data.max_prompt_length": 96, "data.max_length": 128 + 512, "train.lr": 1e-4,
            "data.pretrain": "", "train.steps": 3, "train.save_every": 0, "data.dev_num": 4}
    pair = (*long_pair[:2], long_rows(tmp_path / "long.jsonl", words=200, n=20))  # rows fill max_length
    full_cfg = write_config(tmp_path / "full.py", *pair, str(tmp_path / "full"), **over)
    full, one = _needs(full_cfg), _needs(full_cfg, **{"train.micro_batch": 1})
    assert one < full
    limit = round((full + one) / 2, 4)
    auto_cfg = write_config(tmp_path / "auto.py", *pair, str(tmp_path / "auto"), **over,
                            **{"train.micro_batch": "auto", "check.memory_limit_gib": limit})
    r = cli(auto_cfg, "--verbosity=0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train.micro_batch=auto picked" in r.stderr and "micro-batches" in r.stderr, r.stderr[-3000:]
    r = cli(full_cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(str(tmp_path / w / "export" / "final" / "model.safetensors")) for w in ("auto", "full"))
    for k in b:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


def test_a_run_time_out_of_memory_is_one_line_and_the_run_resumes_from_its_checkpoint(long_pair, tmp_path):
    """A step with blockwise attention writes a checkpoint. Resumed for two with dense attention under a
    lowered RLIMIT_AS (the start-up check told a larger capacity), step 2's allocation fails in XLA: one
    line naming the step, the shapes, the estimate and the advice; exit status 4; the checkpoint stays,
    and a rerun resumes from it and finishes."""
    teacher, student, _ = long_pair
    train = long_rows(tmp_path / "long.jsonl")  # ~4,000 tokens: the step runs on the data's longest row
    over = {"method": "sft", "data.max_prompt_length": 64, "data.max_length": 64 + 4096, "data.dev_num": 4,
            "check.memory_limit_gib": 64.0, "data.pretrain": "", "train.save_every": 1, "eval.max_examples": 2}
    config = lambda kernel, steps: write_config(tmp_path / f"{kernel}{steps}.py", teacher, student, train,
                                                str(tmp_path / "work"), steps=steps,
                                                **over, **{"model.attention_kernel": kernel})
    r = cli(config("blockwise", 1))
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli(config("dense", 2), limit_as=6 << 30)
    line = one_error(r, status=4)
    for piece in ("out of memory in sft step 2", "batch 4 x 4160 tokens", "RESOURCE_EXHAUSTED",
                  "start-up estimate", "train.micro_batch"):
        assert piece in line, (piece, line)
    r = cli(config("blockwise", 2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sft: resumed from step 1" in r.stdout, r.stdout[-2000:]


def test_capacity_reads_the_limit_or_the_machine():
    assert memory.capacity(2.5) == (int(2.5 * 2**30), "check.memory_limit_gib")
    b, what = memory.capacity()
    assert b > 0 and ("available memory" in what or "cgroup" in what or "RLIMIT_AS" in what)


def test_the_start_up_check_compiles_the_run_s_own_step_once(hf_pair, tmp_path):
    """The check compiles the programs the run executes (the step: its spec, models, optimizer, shardings
    and data; evaluation's generation), through the run's own jitted functions: the run compiles nothing again."""
    config = write_config(tmp_path / "c.py", *hf_pair, str(tmp_path / "work"), method="kd",
                          compile_cache=str(tmp_path / "xla"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
    r = subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "memory: train step (kd) needs" in r.stdout
    # the step's jitted body and evaluation's prefill and widest decode chunk: traced and compiled once, by
    # the check; the run calls the same jitted functions with the same shapes and finds those executables
    assert "memory: evaluation's generation needs" in r.stdout
    for fn in ("_generic_body", "prefill", "decode_chunk"):
        traced = r.stderr.count(f"Finished tracing {fn} for jit")
        compiled = r.stderr.count(f"Finished XLA compilation of jit({fn})")
        assert traced == 1 and compiled == 1, (fn, traced, compiled)


def test_evaluation_generation_over_capacity_names_the_eval_batch_that_fits(long_pair, tmp_path):
    """The generation check compiles the prefill and widest decode chunk; over a capacity between one row's
    need and eval.batch_size's, its advice is a smaller eval.batch_size whose compile fits."""
    config = write_config(tmp_path / "c.py", *long_pair, str(tmp_path / "work"), **{
        "eval.batch_size": 8, "eval.max_new_tokens": 1024, "data.max_prompt_length": 64})
    cfg = _load(config)
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    probe = memory.Generation(cfg, mesh, 1, 1 << 40, "evaluation's generation", role="student", sampler="eval",
                              batch_field="eval.batch_size")
    one, eight = probe.need(1).total, probe.need().total
    assert one < eight
    g = memory.Generation(cfg, mesh, 1, (one + eight) // 2, "evaluation's generation", role="student", sampler="eval",
                          batch_field="eval.batch_size")
    text = g.advice()
    b = int(text.split("eval.batch_size=")[1].split()[0])
    assert 1 <= b < 8 and g.need(b).total <= (one + eight) // 2 < g.need(b + 1).total, text
