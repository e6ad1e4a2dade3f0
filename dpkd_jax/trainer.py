"""The trainer: a compiled step plus hooks registered with ``every=``.

Two kinds of hook:

* **metric hooks** (logging, progress, the NaN guard, the reward-hacking watch) read a step's
  metrics. They run one step late: step n's metrics are read after step n+1 has been
  dispatched, so reading them never stalls the device (no host sync on the step's path).
* **state hooks** (checkpoints, eval, preemption, user callbacks) see the state right after
  their step, so a checkpoint of step n holds exactly n steps and the data position after n.

A hook runs when ``step % every == 0``, and on the last step when ``at_end`` is set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax


@dataclasses.dataclass
class Hook:
    fn: Callable            # metric hook: fn(step, metrics as host floats); state hook: fn(step, trainer)
    every: int = 1
    at_end: bool = True
    state: bool = False     # True: a state hook (runs at once, with the trainer's current state)

    def due(self, step: int, last: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or (self.at_end and step == last)


class Trainer:
    """Runs ``step_fn(state, batch, rng) -> (state, metrics)`` from ``start`` to ``steps``;
    ``next_batch(step)`` gives each step's (device) batch and ``rng(step)`` its key."""

    def __init__(self, step_fn: Callable, next_batch: Callable, rng: Callable, *, start: int, steps: int):
        self.step_fn, self.next_batch, self.rng = step_fn, next_batch, rng
        self.start, self.steps = start, steps
        self.hooks: list[Hook] = []
        self.state: Any = None
        self.step = start
        self._pending = None    # (step, device metrics) whose metric hooks have not run yet

    def every(self, n: int, fn: Callable, *, state: bool = False, at_end: bool = True) -> "Trainer":
        """Register ``fn`` to run every ``n`` steps (see the module docstring for its arguments)."""
        self.hooks.append(Hook(fn, n, at_end, state))
        return self

    def flush(self):
        """Run the metric hooks still owed (the last dispatched step's)."""
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        due = [h for h in self.hooks if not h.state and h.due(step, self.steps)]
        if due:
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            for h in due:
                h.fn(step, host)

    def run(self, state):
        self.state = state
        for step in range(self.start, self.steps):
            self.state, metrics = self.step_fn(self.state, self.next_batch(step), self.rng(step))
            self.step = step + 1
            self.flush()                      # the previous step's metrics: ready, or nearly
            self._pending = (self.step, metrics)
            for h in self.hooks:
                if h.state and h.due(self.step, self.steps):
                    h.fn(self.step, self)
        self.flush()
        return self.state
