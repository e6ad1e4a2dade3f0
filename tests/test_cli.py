"""The command line as a user meets it: every user error is one line on stderr with exit
status 2 naming its culprit (no traceback); reruns over a work dir are decided at start-up;
``--config.mode=check`` validates a run without training."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import write_config



ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(config, *extra, env=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config}", *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def assert_user_error(r, *culprits):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-2000:]
    for c in culprits:
        assert c in errors[0], (c, errors[0])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]


@pytest.fixture
def good(hf_pair, tmp_path):
    teacher, student, train = hf_pair
    # save every 2 steps, log every step (the rerun test reads "checkpoints at step 2")
    return lambda: write_config(tmp_path / "cfg.py", teacher, student, train, str(tmp_path / "work"),
                                **{"train.save_every": 2, "train.log_every": 1, "gen.max_new_tokens": 4})


def test_preflight_passes_and_summarises(good):
    r = run(good(), "--config.mode=check")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for piece in ("check: teacher:", "gpt2, 2 layers", "check: student:", "check: vocabulary: shared",
                  "check: train data:", "read 200, kept 200", "check: mesh:", "check: work dir:",
                  "checkpoints: none", "check: ok"):
        assert piece in out, (piece, out)


@pytest.mark.parametrize("flag, culprit", [
    ("--config.teacher.path=/nowhere/teacher", "config.teacher.path: '/nowhere/teacher' is not a directory"),
    ("--config.method=dpkdd", "config.method: unknown method 'dpkdd'"),
    ("--config.loss.dpkd.beta=-1.0", "config.loss.dpkd.beta: must be > 0, got -1.0"),
    ("--config.trian.steps=3", "--config.trian.steps=3: config has no field 'trian' (did you mean 'train'?)"),
    ("--config.train.warmup=10", "--config.train.warmup=10: config.train has no field 'warmup' (did you mean "
                                 "'warmup_steps'?)"),
    ("--config.train.batchsize=4", "--config.train.batchsize=4: config.train has no field 'batchsize' (did you mean "
                                   "'batch_size'?)"),
    ("--config.train.steps=ten", "--config.train.steps=ten: config.train.steps must be an int, got 'ten'"),
    ("--config.data.max_prompt_length=200", "config.data.max_prompt_length: 200 must be < data.max_length=128"),
    ("--config.data.template=alpaca", "config.data.template"),
    ("--config.check.devices=3", "config.train.batch_size: 4 is not divisible by the data-parallel size 3"),
    ("--config.train.micro_batch=3", "config.train.micro_batch: 3 does not divide the batch per device 4"),
    ("--config.model.attention_kernel=flash", "config.model.attention_kernel: unknown kernel 'flash'; choose one of "
                                              "auto, dense, blockwise, cudnn, splash"),
])
def test_config_errors_are_one_line(good, flag, culprit):
    assert_user_error(run(good(), flag, "--config.mode=check"), culprit)


def test_check_refuses_a_feature_layer_the_teacher_lacks_as_the_run_does(good):
    """mode=check binds loss.feature to the models' depths with the run's own check (Feature.bind_all)."""
    feature = ("--config.loss.feature.weight=1.0", "--config.loss.feature.final_weight=1.0")
    assert_user_error(run(good(), *feature, "--config.loss.feature.layers=0:5", "--config.mode=check"),
                      "config.loss.feature.layers: teacher layer 5 does not exist (the teacher has 2 layers, 0-based)")
    assert_user_error(run(good(), *feature, "--config.loss.feature.layers=1:1", "--config.mode=check"),
                      "config.loss.feature.layers: student layer 1 does not exist (the student has 1 layers, 0-based)")
    r = run(good(), *feature, "--config.loss.feature.layers=0:1", "--config.mode=check")
    assert r.returncode == 0 and "check: feature: layer pairs ((0, 1),) exist" in r.stdout, r.stderr[-2000:]


def test_length_grouping_errors_name_the_field(good):
    assert_user_error(run(good(), "--config.data.group_by_length=4", "--config.data.packing=True",
                          "--config.method=sft", "--config.mode=check"),
                      "config.data.group_by_length: packed rows already hold examples end to end")
    assert_user_error(run(good(), "--config.data.group_by_length=-1", "--config.mode=check"),
                      "config.data.group_by_length: must be an int >= 0 (batches per sorted window; 0: off), got -1")


def test_packing_errors_name_the_method_and_the_micro_batch(good):
    assert_user_error(run(good(), "--config.data.packing=True", "--config.method=dpkd", "--config.mode=check"),
                      "config.data.packing: dpkd generates the responses it trains on and does not pack", "sft, ")
    assert_user_error(run(good(), "--config.data.packing=True", "--config.method=sft", "--config.train.micro_batch=2",
                          "--config.mode=check"), "config.data.packing:", "train.micro_batch=2")


def test_traceback_flag_shows_the_traceback(good):
    r = run(good(), "--config.loss.dpkd.beta=-1.0", "--traceback")
    assert r.returncode != 0 and "Traceback" in r.stderr and "config.loss.dpkd.beta" in r.stderr


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_bad_input_files_are_named_by_preflight_and_by_a_real_run(hf_pair, tmp_path):
    teacher, student, train = hf_pair
    work = str(tmp_path / "work")
    cfg = lambda t=teacher, s=student, d=train, name="c": write_config(tmp_path / f"{name}.py", t, s, d, work)
    cases = []
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append(("empty", cfg(d=str(empty), name="empty"), [str(empty), "no usable examples"]))
    bad_t = _copy(teacher, tmp_path / "truncated")
    f = os.path.join(bad_t, "model.safetensors")
    data = open(f, "rb").read()
    open(f, "wb").write(data[: len(data) // 2])
    cases.append(("truncated", cfg(t=bad_t, name="trunc"), [f, "truncated or corrupt safetensors"]))
    pk = _copy(teacher, tmp_path / "pickle")
    os.remove(os.path.join(pk, "model.safetensors"))
    open(os.path.join(pk, "pytorch_model.bin"), "wb").write(b"not really")
    cases.append(("pickle", cfg(t=pk, name="pickle"), [pk, "pickle checkpoint", "allow_pickle"]))
    cj = _copy(teacher, tmp_path / "badjson")
    open(os.path.join(cj, "config.json"), "w").write("{ not json")
    cases.append(("config.json", cfg(t=cj, name="cj"), [os.path.join(cj, "config.json"), "malformed JSON"]))
    idx = _copy(teacher, tmp_path / "badindex")
    open(os.path.join(idx, "model.safetensors.index.json"), "w").write("[]")
    cases.append(("index", cfg(t=idx, name="idx"), ["model.safetensors.index.json", "weight_map"]))
    shard = _copy(teacher, tmp_path / "noshard")
    json.dump({"weight_map": {"transformer.wte.weight": "model-00002-of-00002.safetensors"}},
              open(os.path.join(shard, "model.safetensors.index.json"), "w"))
    cases.append(("shard", cfg(t=shard, name="shard"), ["model-00002-of-00002.safetensors", "is missing"]))
    tk = _copy(student, tmp_path / "badtok")
    open(os.path.join(tk, "tokenizer.json"), "w").write("{ broken")
    cases.append(("tokenizer", cfg(s=tk, name="tok"), [tk, "tokenizer cannot be loaded"]))
    other = _copy(student, tmp_path / "othertok")
    from conftest import make_tokenizer
    for fn in os.listdir(other):
        if fn.startswith(("tokenizer", "vocab", "merges", "special")):
            os.remove(os.path.join(other, fn))
    make_tokenizer(other, vocab_size=300, corpus=["zebra quartz jumps"] * 10)
    kd_other = write_config(tmp_path / "vocab.py", teacher, other, train, work, method="kd")
    cases.append(("vocab", kd_other, ["tokenizers differ", "methods work across tokenizers: dpkd (every form)"]))
    gg = tmp_path / "bad.gguf"
    gg.write_bytes(b"GGUF\x03\x00\x00\x00junk")
    cases.append(("gguf", cfg(t=str(gg), name="gguf"), [str(gg), "not a readable GGUF file"]))
    for name, config, culprits in cases:
        assert_user_error(run(config, "--config.mode=check"), *culprits)
    # A sequence-level method runs across the two tokenizers.
    ok = run(cfg(s=other, name="cross"), "--config.mode=check")
    assert "vocabularies differ" in ok.stdout and "dpkd runs across tokenizers" in ok.stdout, ok.stdout[-2000:]
    assert "tokenizers differ" not in ok.stderr  # (the tiny 272-token BPE then makes every prompt too long)
    # A real run gives the same message as the preflight (here: the truncated teacher).
    assert_user_error(run(cases[1][1]), *cases[1][2])


def test_micro_batches_and_blockwise_attention_from_the_command_line(good):
    """A run with two micro-batches per step and blockwise attention forced trains and says so (INFO lines)."""
    r = run(good(), "--config.train.micro_batch=2", "--config.model.attention_kernel=blockwise",
            "--config.model.attention_block_q=16", "--config.model.attention_block_k=16", "--verbosity=0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "each step runs 2 micro-batches of 2 rows per device" in r.stderr, r.stderr[-3000:]
    assert "attention: blockwise" in r.stderr, r.stderr[-3000:]


def test_rerun_with_resume_false_is_decided_at_start_up(good, tmp_path):
    config = good()
    # with a compilation cache (config.compile_cache): the fresh start after overwrite loads the step compiled, though
    # it compiles in well under JAX's default 1 s threshold (the command line caches every program)
    cache = {"DPKD_COMPILE_CACHE": str(tmp_path / "xla")}
    r = run(config, "--config.resume=False", env=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    work = str(tmp_path / "work")
    assert os.path.isdir(os.path.join(work, "checkpoints", "latest", "2"))
    # Again with resume=False: stops before any training, naming the work dir and the ways on.
    r = run(config, "--config.resume=False")
    assert_user_error(r, f"config.workdir: {work!r}", "checkpoints at step 2", "--config.workdir",
                      "--config.overwrite=True")
    assert "loss" not in r.stdout
    # overwrite=True clears them and starts fresh; resume=True (the default) reuses the finished run.
    assert os.listdir(tmp_path / "xla")
    r = run(config, "--config.resume=False", "--config.overwrite=True", env=dict(cache, JAX_LOG_COMPILES="1"))
    assert r.returncode == 0 and "overwrite: cleared the checkpoints" in r.stdout, r.stderr[-3000:]
    assert "Persistent compilation cache hit for 'jit__generic_body'" in r.stderr, r.stderr[-3000:]
    # resume=True reuses it; a changed field of the run is named against the stored config (run_config.json),
    # while the fields that steer the command (resume, overwrite, the cache) are not
    r = run(config, "--config.train.log_every=7", env=cache)
    assert r.returncode == 0 and "resumed from step 2 (finished: reusing it)" in r.stdout, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if "changed since the stored run" in x)
    assert line.endswith(f"({work}/run_config.json): train.log_every 1 -> 7"), line


def test_multi_host_error_is_printed_once_and_every_process_exits_2(good):
    config = good()
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "dpkd_jax.main", f"--config={config}", "--config.loss.dpkd.beta=-1.0",
                               "--config.distributed.enabled=True",
                               f"--config.distributed.coordinator_address=localhost:{port}",
                               "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    lines = [l for _, err in outs for l in err.splitlines() if l.startswith("error: ")]
    assert lines == ["error: config.loss.dpkd.beta: must be > 0, got -1.0"], outs


def test_a_second_run_on_a_work_dir_is_refused_in_one_line(good, tmp_path):
    from dpkd_jax.checkpoint import WorkdirLock
    config = good()
    with WorkdirLock(str(tmp_path / "work")):  # this process holds the work dir, as a running training would
        r = run(config)
    assert_user_error(r, f"config.workdir: {tmp_path / 'work'} is in use by pid {os.getpid()}")


def test_stale_lock_is_taken_over_and_a_foreign_checkpoint_exits_cleanly(good, hf_pair, tmp_path):
    """A lock left by a killed run is taken over (logged); resuming into a checkpoint of another
    student shape prints the one error line and nothing after it, every time (the checkpoint
    manager is closed before exit: no 'Event loop is closed' race)."""
    config = good()
    os.makedirs(tmp_path / "work", exist_ok=True)
    with open(tmp_path / "work" / ".lock", "w") as f:
        f.write("pid 999999 on gone-host")  # written by a run that died: no process holds the lock
    r = run(config, "--config.train.steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "taking over a stale lock (pid 999999 on gone-host is gone)" in r.stderr + r.stdout
    teacher = hf_pair[0]
    for _ in range(3):
        r = run(config, f"--config.student.path={teacher}", "--config.train.steps=4")
        assert_user_error(r, "checkpoints/latest/2 cannot be restored into this run's state",
                          "Start fresh with --config.resume=False or another --config.workdir")
        assert r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr[-2000:]
        assert "Event loop is closed" not in r.stderr

