"""The mesh and its rules; a DPKD step on 8 simulated devices equal to 1 device; the
demo's distillation in two processes (gloo) equal to one process on four devices."""

import glob
import os
import socket
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
from dpkd_jax import models
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dpkd_jax import sharding
from dpkd_jax.models import gpt2
from conftest import spec_of

ROOT = os.path.dirname(os.path.dirname(__file__))


def fake_mesh(**shape):
    return types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 1, **shape})


def test_mesh_shape_resolves_the_rest_and_names_bad_sizes():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 16) == \
        {"data": 4, "fsdp": 2, "context": 1, "tensor": 2}
    assert sharding.mesh_shape({"data": 1, "fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
    assert sharding.mesh_shape({"data": 2, "context": -1}, 8) == {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}
    with pytest.raises(ValueError, match="config.mesh: at most one axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="config.mesh: .* 6 devices but there are 8"):
        sharding.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="8 devices are not divisible"):
        sharding.mesh_shape({"data": -1, "tensor": 3}, 8)


def test_rules_give_the_expected_specs_and_refuse_what_does_not_divide():
    m = fake_mesh(fsdp=2, tensor=2)
    assert sharding.spec_for(("layers", "embed", "heads", "head_dim"), (2, 32, 4, 8), m) == \
        P(None, "fsdp", "tensor", None)
    # KV heads fewer than the tensor axis (MQA) are replicated; as many or more are split.
    assert sharding.spec_for(("layers", "embed", "kv_heads", "head_dim"), (2, 32, 1, 8), m) == P(None, "fsdp", None, None)
    assert sharding.spec_for(("layers", "embed", "kv_heads", "head_dim"), (2, 32, 2, 8), m) == \
        P(None, "fsdp", "tensor", None)
    # GPT-2's odd vocabulary falls back to replication; an odd embed width is an error.
    assert sharding.spec_for(("vocab", "embed"), (50257, 32), m) == P(None, "fsdp")
    with pytest.raises(ValueError, match=r"blocks/x axis 'embed' has size 33.*\('fsdp',\) \(size 2\)"):
        sharding.spec_for(("layers", "embed"), (2, 33), m, name="blocks/x")
    # A rule override (student kept whole over fsdp), as data.
    rules = sharding.make_rules({"embed": None})
    assert sharding.spec_for(("vocab", "embed"), (64, 32), m, rules) == P("tensor", None)
    with pytest.raises(ValueError, match="config.mesh.rules: unknown logical axis 'embd'"):
        sharding.make_rules({"embd": None})


def test_placement_is_decided_once_from_the_mesh_config():
    p = sharding.Placement({"data": 1, "fsdp": 1, "tensor": 1, "shard_student": False,
                            "rules": {"kv_heads": None}}, devices=jax.devices()[:1])
    assert dict(p.rules("teacher"))["embed"] == "fsdp" and dict(p.rules("student"))["embed"] is None
    assert dict(p.rules("teacher"))["kv_heads"] is None and dict(p.rules("student"))["kv_heads"] is None


def test_constrain_uses_jax_mesh_context_and_is_a_no_op_outside_it():
    m = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    x = jax.numpy.ones((4, 3))
    assert sharding.constrain(x, ("batch", None)) is x
    f = lambda a: sharding.constrain(a, ("batch", None))
    assert "sharding_constraint" not in str(jax.make_jaxpr(f)(x))
    with sharding.mesh_context(m):
        jaxpr = str(jax.make_jaxpr(f)(x))
    assert "sharding_constraint" in jaxpr and "'data', 'fsdp'" in jaxpr, jaxpr


def test_batch_and_heads_that_do_not_divide_name_both_numbers():
    with pytest.raises(ValueError, match=r"config.train.batch_size: 6 is not divisible by the data-parallel size 4"):
        sharding.check_batch(6, fake_mesh(data=2, fsdp=2))
    cfg = gpt2.tiny_config(vocab_size=64, d_model=50, n_layers=1, n_heads=25, d_ff=64, max_positions=8)
    with pytest.raises(ValueError, match=r"config.mesh.tensor: 2 does not divide the teacher's 25 attention heads"):
        sharding.check_heads(cfg.n_heads, fake_mesh(tensor=2), "teacher")


def test_validate_refuses_a_batch_the_mesh_cannot_split():
    from dpkd_jax.config import default_config, validate
    c = default_config()
    c.demo.enabled = True
    c.mesh.data = 3
    with pytest.raises(ValueError, match=r"config.mesh: .* 3 devices but there are 1"):
        validate(c)


def test_one_step_on_a_2x2x2_mesh_equals_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mesh_worker.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=500)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_a_step_split_over_the_context_axis_equals_one_unsplit():
    """context = 4 (x data 2) against context = 1: a Llama forward and gradient with padding and packed segments
    (dense and blockwise kernels), and kd steps unpacked and packed (tests/context_worker.py)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "context_worker.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=500)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_a_context_axis_that_does_not_split_the_sequence_names_both_numbers():
    from dpkd_jax.config import default_config, validate
    c = default_config()
    c.demo.enabled = True
    c.mode, c.check.devices = "check", 8
    c.mesh.data, c.mesh.context, c.data.max_length = 2, 4, 300
    with pytest.raises(ValueError, match=r"config.mesh.context: 4 needs data.max_length to be a multiple of 8 .* "
                                         r"got data.max_length=300"):
        validate(c)
    c.data.max_length = 512
    validate(c)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


DEMO_ARGS = ["--config.demo.teacher.d_model=32", "--config.demo.teacher.n_layers=1", "--config.demo.teacher.d_ff=64",
             "--config.demo.teacher.n_heads=2", "--config.demo.keep_layers=0", "--config.demo.seeds=(0,)",
             "--config.demo.teacher_steps=0", "--config.demo.distill_steps=3", "--config.demo.methods=('dpkd',)",
             "--config.train.batch_size=8", "--config.train.log_every=1", "--config.gen.max_new_tokens=4",
             "--config.eval.max_new_tokens=4", "--config.eval.max_examples=8", "--config.eval.seeds=(1,)",
             "--config.eval.batch_size=8", "--config.mesh.data=2", "--config.mesh.fsdp=2"]


def launch(workdir, devices, process_id=None, n=1, port=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")
    args = [sys.executable, "-m", "dpkd_jax.main", "--config=configs/demo.py", f"--config.workdir={workdir}",
            *DEMO_ARGS]
    if process_id is not None:
        args += ["--config.distributed.enabled=True", f"--config.distributed.coordinator_address=localhost:{port}",
                 f"--config.distributed.num_processes={n}", f"--config.distributed.process_id={process_id}"]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_equal_one_process_on_four_devices(tmp_path):
    """Same student after the demo's distillation stage (its teacher SFT switched off); only process 0
    writes logs, the table and exports."""
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    # Both runs read one tokenizer: BPE training is not bit-reproducible across processes.
    from dpkd_jax.demo import demo_file, train_tokenizer
    for wd in (single, multi):
        train_tokenizer(os.path.join(wd, "tokenizer"), 384, [demo_file("train.jsonl"), demo_file("pretrain.txt")])
    import shutil
    shutil.rmtree(os.path.join(multi, "tokenizer"))
    shutil.copytree(os.path.join(single, "tokenizer"), os.path.join(multi, "tokenizer"))
    port = free_port()
    # All three at once: compilation is mostly single-threaded, so this overlaps on 2 cores.
    procs = [launch(multi, 2, i, 2, port) for i in range(2)] + [launch(single, 4)]
    outs = [p.communicate(timeout=550)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-4000:]
    assert "| dpkd, 3 steps, 1 seeds |" in outs[0] and "| student |" not in outs[1]
    for stage in ("dpkd/seed0",):
        assert len(glob.glob(os.path.join(multi, stage, "tb", "events.*"))) == 1, stage
    from safetensors.numpy import load_file
    a = load_file(os.path.join(single, "dpkd", "export", "model.safetensors"))
    b = load_file(os.path.join(multi, "dpkd", "export", "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_memory_plan_counts_shards_exactly(checkpoints):
    from dpkd_jax.config import default_config
    from dpkd_jax.models import load_config, param_table
    from dpkd_jax import planner as plan
    c = default_config()
    c.teacher.path = c.student.path = checkpoints["gpt2"][0]
    c.teacher.dtype = "bfloat16"
    c.data.max_prompt_length, c.data.max_length, c.gen.max_new_tokens, c.train.batch_size = 16, 32, 8, 2
    row = plan.plan_one(spec_of(c), {"data": -1}, 1)
    n = sum(int(np.prod(i.shape)) for i in param_table(load_config(c.student.path)).values())
    assert row["student_params"] == 4 * n and row["teacher_params"] == 2 * n
    assert row["opt_state"] >= 2 * 4 * n  # Adam's two moments, float32
    # A LoRA student: optimizer state for the adapters only; an int8 teacher: its projections at 1 byte.
    c.student.lora.rank, c.teacher.quantize = 2, "int8"
    small = plan.plan_one(spec_of(c), {"data": -1}, 1)
    lora = param_table(load_config(c.student.path, lora=models.LoRA(rank=2)))
    n_lora = sum(int(np.prod(i.shape)) for i in lora.values() if i.trainable)
    assert small["opt_state"] - 8 * n_lora in range(0, 64)  # + step counters
    assert small["student_params"] == 4 * (n + n_lora)
    q = param_table(load_config(c.teacher.path, dtype=jnp.bfloat16, quantize="int8"))
    assert small["teacher_params"] == sum(int(np.prod(i.shape)) * np.dtype(i.dtype).itemsize for i in q.values())
    assert small["teacher_params"] < row["teacher_params"]
    assert row["total"] >= row["student_params"] + row["teacher_params"] + row["opt_state"] and row["temp"] > 0
    assert "| 1 (XLA:CPU) | data1xfsdp1xtensor1 | 2 |" in plan.table([row])
    # A row compiled for a TPU chip says whether it fits that chip.
    tpu = dict(row, kind="TPU v5 lite", devices=8, total=15 * 2**30)
    assert "| 8 × TPU v5e |" in plan.table([tpu]) and "| no (16 GiB) |" in plan.table([tpu])
    with pytest.raises(ValueError, match="--topology: cannot describe TPU slice 'v9z:1x1'"):
        plan.topology_devices("v9z:1x1")
    with pytest.raises(ValueError, match="config.teacher.path: 'nowhere/opt-99b' has no config.json"):
        plan.model_config("nowhere/opt-99b", "float32", "float32", "teacher.path")
    assert plan.model_config("checkpoints/opt-13b-sft", "bfloat16", "bfloat16", "teacher.path").n_layers == 40
    assert plan.model_config("MiniLLM/teacher-gpt2-1.5B", "bfloat16", "bfloat16", "teacher.path").n_layers == 48


def test_the_planner_reports_a_step_xla_refuses_as_a_row(monkeypatch, capsys):
    """A target whose step XLA refuses to compile (RESOURCE_EXHAUSTED, as splash's mask tables at 128k on v5p)
    is a table row naming the refusal; any other error still raises."""
    from dpkd_jax.config import default_config
    from dpkd_jax import planner as plan
    refusal = ("RESOURCE_EXHAUSTED: Allocation (size=2097152) would exceed memory (size=1048576) :: #allocation3 "
               "[space=smem] :: splash_mha_fwd")

    def refuse(*args, **kw):
        raise RuntimeError("compile failed\n" + refusal)
    monkeypatch.setattr(plan, "plan_one", refuse)
    rows = plan.plan_rows(spec_of(default_config()), {"data": 1, "context": 2, "tensor": 4}, [8])
    assert rows == [{"devices": 8, "kind": "cpu", "refused": refusal, "mesh": "data1xfsdp1xcontext2xtensor4"}]
    assert f"| 8 (XLA:CPU) | data1xfsdp1xcontext2xtensor4 | | | | | | | does not compile | {refusal} |" in \
        plan.table(rows)
    assert "8 devices: does not compile (RESOURCE_EXHAUSTED" in capsys.readouterr().err
    monkeypatch.setattr(plan, "plan_one", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        plan.plan_rows(spec_of(default_config()), {"data": 1}, [1])
