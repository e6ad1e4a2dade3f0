"""``log.profile_steps``: a ``jax.profiler`` trace of a window of train steps, for TensorBoard's profile plugin,
Perfetto (``perfetto_trace.json.gz``) or ``bench/peer_profile.py``'s op table."""

from __future__ import annotations

import os

import jax


class ProfileWindow:
    """A state hook that traces steps ``first`` to ``last`` (1-based, inclusive) into ``out_dir``: started before
    step ``first`` is dispatched, stopped once step ``last``'s state is computed; :meth:`close` stops a trace
    that a run ending early left open."""

    def __init__(self, first: int, last: int, out_dir: str, start_step: int):
        self.first, self.last, self.out_dir, self.active = first, last, out_dir, False
        if first == start_step + 1:  # the window opens with the run's first step: before it is dispatched
            self._start()

    def _start(self):
        os.makedirs(self.out_dir, exist_ok=True)
        jax.profiler.start_trace(self.out_dir, create_perfetto_trace=True)
        self.active = True

    def __call__(self, step: int, trainer):
        if step == self.first - 1 and not self.active:
            self._start()
        elif step == self.last and self.active:
            jax.block_until_ready(trainer.state)
            self.close()

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
