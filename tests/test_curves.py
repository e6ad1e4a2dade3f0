"""The stages' curve figures, drawn on the curves worker."""

import os

import pytest

from dpkd_jax import curves


def _history(steps=(10, 20)):
    return [{"step": s, "loss/total": 1.0 / s, "loss/dpkd": 0.5 / s, "reward/chosen": 0.1 * s,
             "kl/first_token_forward": 0.2, "kl/first_token_reverse": 0.3} for s in steps]


def test_plot_later_writes_the_png_by_wait(tmp_path):
    paths = [str(tmp_path / f"curves{i}.png") for i in range(3)]
    for p in paths:
        curves.plot_later(_history(), p, "dpkd seed 0")
    curves.wait()
    assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_a_drawing_error_is_raised_by_wait(tmp_path):
    curves.plot_later([], str(tmp_path / "empty.png"))   # no history: nothing to draw
    with pytest.raises(IndexError):
        curves.wait()
    curves.wait()   # raised once; nothing left pending
    assert not os.path.exists(tmp_path / "empty.png")
