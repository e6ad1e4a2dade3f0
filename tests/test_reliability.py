"""Long runs and failures: exact resume after SIGKILL, SIGTERM, NaN guards, broken
checkpoints, a full disk, an unwritable work dir, a stale teacher cache, host memory."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpkd_jax import data as D
from dpkd_jax import objectives as O
from dpkd_jax.loop import Diverged
from conftest import spec_of, train
from conftest import tiny_setup, write_config

ROOT = os.path.dirname(os.path.dirname(__file__))
DEMO = os.path.join(ROOT, "dpkd_jax", "data", "demo")# ------------------------------------------------ the real command, killed

def cli(config, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "dpkd_jax.main", f"--config={config}", *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steps_saved(workdir):
    d = os.path.join(workdir, "checkpoints", "latest")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for_checkpoint(proc, workdir, at_least, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(s >= at_least for s in steps_saved(workdir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before a checkpoint:\n{proc.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def final_state(workdir, step):
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", "latest", str(step))
    state = ocp.StandardCheckpointer().restore(os.path.join(path, "state"))
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest")) as m:
        extra = m.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]
    return state, extra


def test_sigkill_mid_run_then_same_command_gives_the_uninterrupted_result(hf_pair, tmp_path):
    """Killed at an arbitrary step (possibly inside a save); the rerun ends bitwise equal."""
    teacher, student, train = hf_pair
    steps = 40
    straight = write_config(tmp_path / "a.py", teacher, student, train, str(tmp_path / "a"), steps)
    killed = write_config(tmp_path / "b.py", teacher, student, train, str(tmp_path / "b"), steps)
    pa = cli(straight)  # runs alongside the killed one
    p = cli(killed)
    wait_for_checkpoint(p, str(tmp_path / "b"), 4)
    p.send_signal(signal.SIGKILL)
    p.wait()
    at_kill = steps_saved(str(tmp_path / "b"))
    assert at_kill and at_kill[-1] < steps, at_kill
    p = cli(killed)
    out_b = p.communicate(timeout=400)[0]
    assert p.returncode == 0, out_b
    out_a = pa.communicate(timeout=400)[0]
    assert pa.returncode == 0, out_a
    assert f"resumed from step {at_kill[-1]}" in out_b
    (sa, ea), (sb, eb) = final_state(str(tmp_path / "a"), steps), final_state(str(tmp_path / "b"), steps)
    leaves_a, leaves_b = jax.tree.leaves_with_path(sa), jax.tree.leaves_with_path(sb)
    assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
    for (k, a), (_, b) in zip(leaves_a, leaves_b):  # params, optimizer state, step: bitwise
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(k))
    strip = lambda h: [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in h]
    assert strip(ea["history"]) == strip(eb["history"]) and len(ea["history"]) == steps // 2
    assert ea["data"] == eb["data"]
    from safetensors.numpy import load_file
    fa, fb = (load_file(str(tmp_path / w / "export" / "final" / "model.safetensors")) for w in "ab")
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    sa_scores = json.load(open(tmp_path / "a" / "eval" / "student_scores.json"))
    assert sa_scores == json.load(open(tmp_path / "b" / "eval" / "student_scores.json"))


def test_sigterm_checkpoints_and_exits_zero_then_resumes(hf_pair, tmp_path):
    teacher, student, train = hf_pair
    cfg = write_config(tmp_path / "c.py", teacher, student, train, str(tmp_path / "w"), 100000)
    p = cli(cfg)
    wait_for_checkpoint(p, str(tmp_path / "w"), 4)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0, out
    assert "preempted (SIGTERM): checkpoint of step" in out
    last = steps_saved(str(tmp_path / "w"))[-1]
    assert f"checkpoint of step {last} " in out
    p = cli(cfg, f"--config.train.steps={last + 2}")
    out = p.communicate(timeout=400)[0]
    assert p.returncode == 0 and f"resumed from step {last}" in out, out
    assert steps_saved(str(tmp_path / "w"))[-1] == last + 2


def test_second_sigterm_exits_at_once():
    code = ("import os, signal, time\nfrom dpkd_jax.loop import SigtermGuard\n"
            "with SigtermGuard() as g:\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); assert g.requested\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(30); print('not reached')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signal.SIGTERM, r
    assert "second SIGTERM" in r.stderr and "not reached" not in r.stdout


# ---------------------------------------------------------------- NaN guard

def poisoned(bad_steps, steps):
    """A kd objective whose loss is NaN on the given (1-based) steps of a ``steps``-step run (the run spec's
    ``loss.kd`` block in :func:`run_kd`)."""
    base = O.OBJECTIVES["kd"]
    bad = jnp.asarray(sorted(bad_steps))

    class Poisoned(base):
        def loss(self, ctx):
            terms, metrics = base.loss(self, ctx)
            weight, value = terms["kd"]
            step = jnp.round(ctx.progress * steps).astype(jnp.int32) + 1
            return dict(terms, kd=(weight, value + jnp.where(jnp.isin(step, bad), jnp.nan, 0.0))), metrics
    return Poisoned


def run_kd(tmp_path, tok, steps, poison=None, **train_fields):
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "kd", steps
    for k, v in train_fields.items():
        setattr(cfg.train, k, v)
    if poison is not None:
        cfg = spec_of(cfg)
        cfg = cfg.replace({"loss.kd": poison(**dataclasses.asdict(cfg.loss.kd))})
    seen = {}
    cb = lambda step, state: seen.__setitem__(step, np.asarray(state["params"]["blocks/mlp/up/w"]).copy())
    return cfg, seen, lambda: train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w"),
                                         callback=cb)


def test_a_nan_step_is_skipped_and_counted(monkeypatch, tmp_path, tok):  # noqa: F811
    cfg, seen, go = run_kd(tmp_path, tok, 5, poisoned({3}, 5))
    params, hist, _ = go()
    np.testing.assert_array_equal(seen[3], seen[2])  # the bad update was not applied
    assert not np.array_equal(seen[4], seen[3])
    assert hist[-1]["nonfinite/skipped"] == 1 and hist[2]["nonfinite/streak"] == 1 and hist[3]["nonfinite/streak"] == 0
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(params))


def test_consecutive_nan_steps_stop_the_run_with_the_last_good_state_saved(monkeypatch, tmp_path, tok):  # noqa
    cfg, seen, go = run_kd(tmp_path, tok, 20, poisoned(set(range(3, 100)), 20), max_bad_steps=3, save_every=100)
    with pytest.raises(Diverged, match=r"3 consecutive steps .*\(train.max_bad_steps=3\).*saved as step 6"):
        go()
    from dpkd_jax.checkpoint import Checkpoints
    ck = Checkpoints(str(tmp_path / "w" / "checkpoints"))
    # The guard reads each step's metrics one step late (no host sync on the step's path), so it
    # stops after step 6, whose update was skipped too: still the parameters of step 2.
    assert ck.latest.latest_step() == 6
    restored = ck.latest.restore(6)
    ck.close()
    np.testing.assert_array_equal(np.asarray(restored["state"]["params"]["blocks/mlp/up/w"]), seen[2])


# ------------------------------------------------------- checkpoints break

# --------------------------------------------------- bounded resources

def test_host_memory_does_not_grow_per_step(tmp_path, tok):  # noqa: F811
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps, cfg.train.log_every, cfg.train.save_every = "sft", 400, 10, 100
    rss = {}

    def cb(step, state):
        if step in (100, 400):
            with open("/proc/self/statm") as f:
                rss[step] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w"), callback=cb)
    assert rss[400] - rss[100] < 25, rss  # MiB over 300 steps (4 checkpoints, 30 log rows)
