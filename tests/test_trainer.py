"""The trainer: a compiled step plus hooks with ``every=``; metric hooks read a step's
metrics one step late (no host sync on the step's path), state hooks see their own step."""

import jax
import jax.numpy as jnp
import pytest

from dpkd_jax.trainer import Trainer


def make(events, steps=5, start=0):
    @jax.jit
    def step_fn(state, batch, rng):
        return state + batch, {"loss": state * 1.0}

    def traced(state, batch, rng):
        events.append(("step", int(batch)))
        return step_fn(state, batch, rng)
    return Trainer(traced, lambda step: jnp.int32(step + 1), lambda step: None, start=start, steps=steps)


def test_metric_hooks_run_one_step_late_and_state_hooks_at_once():
    events = []
    tr = make(events)
    tr.every(1, lambda step, m: events.append(("metrics", step, m["loss"])))
    tr.every(2, lambda step, t: events.append(("state", step, int(t.state))), state=True, at_end=False)
    final = tr.run(jnp.int32(0))
    assert int(final) == 1 + 2 + 3 + 4 + 5
    assert events == [("step", 1), ("step", 2), ("metrics", 1, 0.0), ("state", 2, 3),
                      ("step", 3), ("metrics", 2, 1.0), ("step", 4), ("metrics", 3, 3.0), ("state", 4, 10),
                      ("step", 5), ("metrics", 4, 6.0), ("metrics", 5, 10.0)]


def test_every_and_at_end():
    seen = []
    tr = make([], steps=7)
    tr.every(3, lambda step, m: seen.append(step))
    tr.every(3, lambda step, m: seen.append(-step), at_end=False)
    tr.run(jnp.int32(0))
    assert sorted(seen, key=abs) == [3, -3, 6, -6, 7]


def test_metrics_are_read_only_on_steps_a_hook_wants(monkeypatch):
    reads = []
    real = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: (reads.append(1), real(x))[1])
    tr = make([], steps=10)
    tr.every(5, lambda step, m: None)
    tr.run(jnp.int32(0))
    assert len(reads) == 2  # steps 5 and 10, not every step


def test_a_state_hook_can_flush_the_current_steps_metrics():
    """A checkpoint hook flushes first, so the history saved with step n includes step n."""
    history, saved = [], []
    tr = make([], steps=4)
    tr.every(1, lambda step, m: history.append(step))
    tr.every(2, lambda step, t: (t.flush(), saved.append(list(history))), state=True)
    tr.run(jnp.int32(0))
    assert saved == [[1, 2], [1, 2, 3, 4]] and history == [1, 2, 3, 4]


def test_resumes_from_start_and_a_hook_can_stop_the_run():
    tr = make([], steps=10, start=6)
    done = []
    tr.every(1, lambda step, t: done.append(step), state=True)

    def stop(step, t):
        if step == 8:
            raise KeyboardInterrupt
    tr.every(1, stop, state=True)
    with pytest.raises(KeyboardInterrupt):
        tr.run(jnp.int32(0))
    assert done == [7, 8] and tr.step == 8


def test_each_logged_interval_is_timed_to_the_end_of_its_own_steps():
    """Metric hooks run one step late; ``ready_time`` is still when their own step finished, so the rates of
    every interval (the last one too, flushed right after the one before) cover exactly the steps they name."""
    import time
    from dpkd_jax.throughput import Throughput
    naps = {1: 0.05, 2: 0.15, 3: 0.05, 4: 0.3}

    def step_fn(state, batch, rng):  # synchronous: its outputs are computed when it returns
        time.sleep(naps[int(batch)])
        out = jax.block_until_ready(state + batch)
        return out, {"loss": out * 1.0}
    tr = Trainer(step_fn, lambda step: jnp.int32(step + 1), lambda step: None, start=0, steps=4)
    rates, seen = Throughput(1.0, 100), {}
    tr.every(1, lambda step, m: seen.update({step: rates(1, tr.ready_time)["perf/step_time_s"]}))
    tr.run(jnp.int32(0))
    assert seen[1] >= naps[1]  # the first interval also holds the start-up (here the add's compile)
    for step in (2, 3, 4):
        assert naps[step] <= seen[step] < naps[step] + 0.04, (step, seen)
