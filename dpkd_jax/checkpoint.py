"""Orbax checkpoints: student params, optimizer state, step, data position.

One manager keeps the last ``keep`` checkpoints (resume reads the latest);
a second keeps the single best by dev RougeL. Saves are atomic (orbax writes
to a temporary directory and renames on commit).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import os
import shutil
import socket

import jax
import orbax.checkpoint as ocp
from .errors import InputError


class Checkpoints:
    def __init__(self, directory, keep=2):
        directory = os.path.abspath(directory)
        self.latest = ocp.CheckpointManager(
            os.path.join(directory, "latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True))
        self.best = ocp.CheckpointManager(
            os.path.join(directory, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m["rougeL"],
                                                 best_mode="max", cleanup_tmp_directories=True))

    def save(self, step, state, extra: dict, best_metric=None):
        """Asynchronous save; a failure (a full disk) names the directory and leaves the
        previous checkpoint as the latest (orbax commits a step only once it is whole)."""
        # The JSON is written in the background: snapshot it, or rows the loop appends while the
        # save is in flight land in this step's checkpoint (and repeat after a resume).
        extra = copy.deepcopy(extra)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
        with self._errors("save", step):
            self.latest.save(step, args=args, force=True)
            if best_metric is not None:
                self.best.save(step, args=args, metrics={"rougeL": float(best_metric)}, force=True)

    @contextlib.contextmanager
    def _errors(self, what, step=None):
        try:
            yield
        except OSError as e:
            prev = self.latest.latest_step()
            raise RuntimeError(f"checkpoint {what} in {self.latest.directory} (step {step}) failed: {e}. "
                               f"The latest complete checkpoint is step {prev}; free space or change "
                               "--config.workdir, then rerun to resume from it.") from e

    def _check_params(self, manager, step, like_state):
        """Compare the stored parameters' names and shapes with this run's before restoring: a
        mismatch is named at once, and orbax never starts reads it would abandon (their callbacks
        into a closed event loop printed tracebacks after the error)."""
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)  # orbax warns that a metadata file it does not need is absent
        try:
            meta = ocp.StandardCheckpointer().metadata(os.path.join(manager.directory, str(step), "state"))
        except Exception:  # noqa: BLE001 -- unreadable metadata: the restore itself names the problem
            return
        finally:
            absl_logger.setLevel(level)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)  # orbax versions differ here
        if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
            return
        stored = {k: tuple(v.shape) for k, v in tree["params"].items()}
        wanted = {k: tuple(v.shape) for k, v in like_state["params"].items()}
        diff = sorted(set(stored) ^ set(wanted)) or [k for k in wanted if stored[k] != wanted[k]]
        if diff:
            k = diff[0]
            raise InputError(f"checkpoint {manager.directory}/{step} cannot be restored into this run's state "
                             f"(parameter {k}: stored {stored.get(k, 'absent')}, this run {wanted.get(k, 'absent')}; "
                             f"{len(diff)} parameters differ). Start fresh with --config.resume=False or another "
                             "--config.workdir.")

    def _restore(self, manager, step, like_state):
        self._check_params(manager, step, like_state)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        try:
            out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 extra=ocp.args.JsonRestore()))
        except Exception as e:  # a checkpoint from another config, or a corrupt one
            raise InputError(f"checkpoint {manager.directory}/{step} cannot be restored into this run's state "
                             f"({type(e).__name__}: {str(e)[:300]}). Start fresh with --config.resume=False or "
                             "another --config.workdir.") from e
        return out["state"], out["extra"]

    def restore_latest(self, like_state):
        """(state, extra) from the latest checkpoint, or None when there is none."""
        step = self.latest.latest_step()
        return None if step is None else self._restore(self.latest, step, like_state)

    def has_best(self):
        return self.best.best_step() is not None

    def restore_best_params(self, like_state):
        return self._restore(self.best, self.best.best_step(), like_state)[0]["params"]

    def wait(self):
        with self._errors("write"):
            self.latest.wait_until_finished()
            self.best.wait_until_finished()

    def close(self):
        """Finish background writes and stop the managers' threads (also on an error path, so no
        background work outlives the run and prints 'Event loop is closed' at exit)."""
        for manager in (self.latest, self.best):
            try:
                manager.close()
            except Exception as e:  # noqa: BLE001 -- a failed write was reported already; closing must go on
                logging.warning("closing checkpoints in %s: %s", manager.directory, e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WorkdirLock:
    """One run per work dir: ``<workdir>/.lock`` held with ``fcntl.flock`` for the run's life,
    holding the owner's pid and host. A second run stops with one line naming the work dir and
    the holder. The OS drops the lock when its process dies, so a lock left by a killed run is
    taken over (logged). Multi-host runs lock once, from process 0."""

    def __init__(self, workdir):
        self.path = os.path.join(os.path.abspath(workdir), ".lock")
        self.file = None

    def acquire(self):
        if jax.process_index() != 0:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise InputError(f"config.workdir: {os.path.dirname(self.path)} is in use by {holder}; wait for it, "
                             "stop it, or choose another --config.workdir") from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            logging.warning("work dir lock %s: taking over a stale lock (%s is gone)", self.path, previous)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        self.file = f
        return self

    def release(self):
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_workdir(path):
    """Create the work dir and prove it writable, or stop naming config.workdir."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise InputError(f"config.workdir: {path!r} is not writable ({e.strerror or e})") from e


def find_checkpoints(workdir) -> list[tuple[str, int]]:
    """Every ``checkpoints`` folder under ``workdir`` (one per stage) with its latest complete step."""
    out = []
    for root, dirs, _ in os.walk(workdir):
        if os.path.basename(root) == "checkpoints":
            latest = os.path.join(root, "latest")
            steps = [int(d) for d in (os.listdir(latest) if os.path.isdir(latest) else []) if d.isdigit()]
            if steps:
                out.append((root, max(steps)))
            dirs[:] = []
    return sorted(out)


def prepare_workdir(cfg) -> list[tuple[str, int]]:
    """Decide at start-up what earlier checkpoints in the work dir mean, never at the first save:
    ``resume=True`` continues from them (a finished stage is reused), ``overwrite=True`` clears
    them, and otherwise the run stops naming the work dir and the ways on."""
    wd = cfg.workdir
    check_workdir(wd)
    found = find_checkpoints(wd)
    if not found:
        return found
    desc = ", ".join(f"{os.path.relpath(d, wd)} at step {s}" for d, s in found)
    if cfg.resume:
        print(f"resuming from the checkpoints in {wd}: {desc}")
        return found
    if not cfg.overwrite:
        raise InputError(f"config.workdir: {wd!r} holds checkpoints of an earlier run ({desc}) and resume=False: "
                         "choose another --config.workdir, or pass --config.overwrite=True to clear them "
                         "(--config.resume=True continues from them)")
    if jax.process_index() == 0:
        for d, _ in found:
            shutil.rmtree(d)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("overwrite checkpoints")
    print(f"overwrite: cleared the checkpoints in {wd} ({desc}); starting fresh")
    return []
