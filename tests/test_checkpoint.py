"""Checkpoints: corrupt, half-written or foreign ones named, a full disk, metadata snapshots, the work dir."""

import errno
import os

import jax
import pytest

from conftest import PIPE_VOCAB as VOCAB, tiny_setup
from conftest import train

ROOT = os.path.dirname(os.path.dirname(__file__))


def short_run(tmp_path, tok, steps=2, **over):  # noqa: F811
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "sft", steps
    for k, v in over.items():
        setattr(cfg.train, k, v)
    return lambda s=s_cfg, p=s_params, c=cfg: train(c, s, p, t_cfg, t_params, data, None,
                                                         str(tmp_path / "w"))


def test_corrupt_or_foreign_checkpoint_is_named_not_ignored(tmp_path, tok):  # noqa: F811
    from dpkd_jax.models import gpt2
    from dpkd_jax import models
    short_run(tmp_path, tok)()
    other = gpt2.tiny_config(vocab_size=VOCAB, d_model=24, n_layers=1, n_heads=2, d_ff=48, max_positions=72)
    with pytest.raises(ValueError, match=r"checkpoints/latest/2 cannot be restored.*resume=False"):
        short_run(tmp_path, tok, 4)(*models.init(other, 0))
    # Damage every array file of the saved state.
    for root, _, files in os.walk(tmp_path / "w" / "checkpoints" / "latest" / "2" / "state"):
        for f in files:
            if not f.startswith("_") and not f.endswith(".json"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(3)
    with pytest.raises(ValueError, match=r"checkpoints/latest/2 cannot be restored"):
        short_run(tmp_path, tok, 4)()


def test_a_half_written_checkpoint_is_not_used(tmp_path, tok):  # noqa: F811
    short_run(tmp_path, tok)()
    tmp = tmp_path / "w" / "checkpoints" / "latest" / "4.orbax-checkpoint-tmp-1234"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"\0" * 10)
    _, hist, _ = short_run(tmp_path, tok, 4)()
    assert [h["step"] for h in hist] == [1, 2, 3, 4]  # resumed from the complete step 2


def test_disk_full_during_save_names_the_directory_and_keeps_the_last_checkpoint(monkeypatch, tmp_path, tok):  # noqa
    import orbax.checkpoint as ocp
    real = ocp.CheckpointManager.save

    def save(self, step, *a, **k):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, *a, **k)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(RuntimeError, match=r"checkpoints/latest \(step 4\) failed.*No space left.*step 2"):
        short_run(tmp_path, tok, 6, save_every=2)()
    monkeypatch.setattr(ocp.CheckpointManager, "save", real)
    _, hist, _ = short_run(tmp_path, tok, 6, save_every=2)()
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_keeps_the_metadata_as_it_was_at_save_time(tmp_path):
    """Saves are asynchronous; the loop goes on appending to its history meanwhile."""
    from dpkd_jax.checkpoint import Checkpoints
    ck = Checkpoints(str(tmp_path / "c"))
    state = {"params": {"w": jax.numpy.ones((256, 256))}, "step": jax.numpy.array(2)}
    history = [{"step": 1}, {"step": 2}]
    ck.save(2, state, {"history": history, "data": {"pos": 2}})
    history.append({"step": 3})  # before the background write has finished, or just after
    ck.wait()
    _, extra = ck.restore_latest(state)
    ck.close()
    assert extra["history"] == [{"step": 1}, {"step": 2}]


def test_unwritable_workdir_is_named(tmp_path):
    from dpkd_jax.checkpoint import check_workdir
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"config.workdir: .*file/run.* is not writable"):
        check_workdir(str(tmp_path / "file" / "run"))



def test_workdir_lock_is_one_per_run_and_taken_by_process_0_only(tmp_path, monkeypatch):
    from dpkd_jax.checkpoint import WorkdirLock
    from dpkd_jax.errors import InputError
    with WorkdirLock(str(tmp_path)) as held:
        assert open(held.path).read() == f"pid {os.getpid()} on {__import__('socket').gethostname()}"
        # flock is per open file: a second lock in this process stands for a second run
        with pytest.raises(InputError, match=f"{tmp_path} is in use by pid {os.getpid()}"):
            WorkdirLock(str(tmp_path)).acquire()
        monkeypatch.setattr(jax, "process_index", lambda: 1)  # another host of a multi-host run: no lock of its own
        other = WorkdirLock(str(tmp_path)).acquire()
        assert other.file is None
        monkeypatch.undo()
    assert open(held.path).read() == ""  # released
    WorkdirLock(str(tmp_path)).acquire().release()
