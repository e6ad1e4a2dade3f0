"""Orbax checkpoints: student params, optimizer state, step, data position.

One manager keeps the last ``keep`` checkpoints (resume reads the latest);
a second keeps the single best by dev RougeL. Saves are atomic (orbax writes
to a temporary directory and renames on commit).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory, keep=2):
        directory = os.path.abspath(directory)
        self.latest = ocp.CheckpointManager(
            os.path.join(directory, "latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(directory, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m["rougeL"],
                                                 best_mode="max"))

    def save(self, step, state, extra: dict, best_metric=None):
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
        self.latest.save(step, args=args, force=True)
        if best_metric is not None:
            self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         extra=ocp.args.JsonSave(extra)),
                           metrics={"rougeL": float(best_metric)}, force=True)

    def restore_latest(self, like_state):
        """(state, extra) from the latest checkpoint, or None when there is none."""
        step = self.latest.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        try:
            out = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     extra=ocp.args.JsonRestore()))
        except Exception as e:  # a checkpoint from another config, or a corrupt one
            raise ValueError(f"checkpoint {self.latest.directory}/{step} cannot be restored into this run's state "
                             f"({type(e).__name__}: {str(e)[:300]}). Start fresh with --config.resume=False or "
                             "another --config.workdir.") from e
        return out["state"], out["extra"]

    def wait(self):
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self):
        self.latest.close()
        self.best.close()
