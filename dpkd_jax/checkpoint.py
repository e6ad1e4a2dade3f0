"""Orbax checkpoints: student params, optimizer state, step, data position.

One manager keeps the last ``keep`` checkpoints (resume reads the latest);
a second keeps the single best by dev RougeL. Saves are atomic (orbax writes
to a temporary directory and renames on commit).
"""

from __future__ import annotations

import contextlib
import copy
import os

import jax
import orbax.checkpoint as ocp


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

    def _restore(self, manager, step, like_state):
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        try:
            out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 extra=ocp.args.JsonRestore()))
        except Exception as e:  # a checkpoint from another config, or a corrupt one
            raise ValueError(f"checkpoint {manager.directory}/{step} cannot be restored into this run's state "
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
        self.latest.close()
        self.best.close()
