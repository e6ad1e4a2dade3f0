"""profiling.py: ``log.profile_steps`` traces a window of train steps with jax.profiler."""

import glob
import gzip
import json

import pytest

from conftest import tiny_setup, train
from dpkd_jax.config import default_config, validate
from dpkd_jax.errors import InputError


def test_a_window_of_steps_is_traced_and_the_trace_holds_the_step(tmp_path, tok):
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps, cfg.log.profile_steps = "kd", 3, (2, 3)
    train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w"))
    traces = glob.glob(str(tmp_path / "w" / "profile" / "**" / "perfetto_trace.json.gz"), recursive=True)
    assert len(traces) == 1, traces
    events = json.load(gzip.open(traces[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    # the step's program (train._generic_body): each call is two nested events (Python's and PJRT's)
    calls = {round(e["ts"] / 1000) for e in events if e.get("ph") == "X" and e["name"] == "PjitFunction(_generic_body)"}
    assert len(calls) == 2, calls  # steps 2 and 3, not step 1


@pytest.mark.parametrize("window", [(0, 2), (2, 1), (1, 9), (3,)])
def test_a_window_outside_the_run_is_one_line(window):
    c = default_config()
    c.demo.enabled, c.train.steps, c.log.profile_steps = True, 5, window
    with pytest.raises(InputError, match=r"^config.log.profile_steps: must be \(first, last\) with 1 <= first <= "
                                         r"last <= train.steps=5"):
        validate(c)
