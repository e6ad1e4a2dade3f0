"""The trainer: a compiled step plus hooks registered with ``every=``.

Two kinds of hook:

* **metric hooks** (logging, progress, the NaN guard, the reward-hacking watch) read a step's
  metrics. They run one step late: step n's metrics are read after step n+1 has been
  dispatched, so reading them never stalls the device (no host sync on the step's path).
* **state hooks** (checkpoints, eval, preemption, user callbacks) see the state right after
  their step, so a checkpoint of step n holds exactly n steps and the data position after n.

A hook runs when ``step % every == 0``, and on the last step when ``at_end`` is set.

``ready_time`` is when the step whose metrics the hooks are reading finished: the moment ``step_fn``
returned when its outputs were already computed then (synchronous dispatch, as the command line runs CPU
steps), else the moment its metrics were read (they wait for the step). Throughput is timed from it, so an
interval covers exactly the steps it names.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax


def _computed(metrics) -> bool:
    """Whether a step's device metrics are already computed (one program's outputs: all or none)."""
    first = next((x for x in jax.tree.leaves(metrics) if isinstance(x, jax.Array)), None)
    return first is not None and first.is_ready()


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
        self._pending = None    # (step, device metrics, ready time or None) whose metric hooks have not run yet
        self.ready_time = time.perf_counter()  # when the step the metric hooks read finished

    def every(self, n: int, fn: Callable, *, state: bool = False, at_end: bool = True) -> "Trainer":
        """Register ``fn`` to run every ``n`` steps (see the module docstring for its arguments)."""
        self.hooks.append(Hook(fn, n, at_end, state))
        return self

    def flush(self):
        """Run the metric hooks still owed (the last dispatched step's)."""
        if self._pending is None:
            return
        step, metrics, ready = self._pending
        self._pending = None
        due = [h for h in self.hooks if not h.state and h.due(step, self.steps)]
        if due:
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            self.ready_time = ready or time.perf_counter()
            for h in due:
                h.fn(step, host)

    def run(self, state):
        self.state = state
        for step in range(self.start, self.steps):
            self.state, metrics = self.step_fn(self.state, self.next_batch(step), self.rng(step))
            ready = time.perf_counter() if _computed(metrics) else None
            self.step = step + 1
            self.flush()                      # the previous step's metrics: ready, or nearly
            self._pending = (self.step, metrics, ready)
            for h in self.hooks:
                if h.state and h.due(self.step, self.steps):
                    h.fn(self.step, self)
        self.flush()
        return self.state
