"""Length-grouped batches (data/grouping.py, ``data.group_by_length``): prompts of similar length together,
cut to the narrowest width that holds them, reproducible from the seed; a run says what it saved."""

import os
import subprocess
import sys

import numpy as np

from conftest import scalars, write_config
from dpkd_jax.data import Batches, Tokenized, grouping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def left_padded(lengths, P=64, R=4):
    """A Tokenized of prompts with these lengths (left-padded to ``P``; token id = example index + 1)."""
    n = len(lengths)
    pm = (np.arange(P)[None] >= P - np.asarray(lengths)[:, None]).astype(np.int32)
    ids = pm * (np.arange(n)[:, None] + 1)
    return Tokenized(prompt_ids=ids.astype(np.int32), prompt_mask=pm, response_ids=np.ones((n, R), np.int32),
                     response_mask=np.ones((n, R), np.int32), prompts=[""] * n, references=[""] * n)


def test_widths_and_the_narrowest_that_holds_a_batch():
    assert grouping.widths_for(256) == (32, 64, 128, 256)
    assert grouping.widths_for(40) == (20, 40) and grouping.widths_for(16) == (16,)
    assert [grouping.width_of(n, (32, 64, 128)) for n in (1, 32, 33, 128)] == [32, 32, 64, 128]


def test_each_window_is_sorted_and_every_example_appears_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 64, 50)
    order = rng.permutation(50)
    batches = grouping.group(order, lengths, 4, 3, np.random.default_rng(1))
    seen = np.concatenate(batches)
    assert len(batches) == 12 and len(set(seen)) == 48  # 50 % 4 = 2 left over, as unpacked batches drop
    windows = [order[i:i + 12] for i in range(0, 48, 12)]
    for b in batches:  # each batch is a run of its window's examples sorted by length
        w = next(w for w in windows if set(b) <= set(w))
        ranked = w[np.argsort(lengths[w], kind="stable")]
        start = list(ranked).index(b[0])
        assert list(ranked[start:start + 4]) == list(b)
    again = grouping.group(order, lengths, 4, 3, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again))


def test_batches_cut_prompts_to_their_width_and_resume_the_same():
    rng = np.random.default_rng(2)
    data = left_padded(rng.integers(1, 64, 40))
    b = Batches(data, 4, seed=3)
    full, mean = b.length_grouped(window=5)
    assert full == 64 and mean < 64
    first = [b.next() for _ in range(6)]
    for batch in first:
        idx, w = batch["example_ids"], batch["prompt_ids"].shape[1]
        assert w in grouping.widths_for(64) and w >= data.prompt_mask[idx].sum(1).max()
        np.testing.assert_array_equal(batch["prompt_mask"].sum(1), data.prompt_mask[idx].sum(1))  # only padding cut
        np.testing.assert_array_equal(batch["prompt_ids"], data.prompt_ids[idx][:, -w:])
    assert len({x["prompt_ids"].shape[1] for x in first}) > 1
    state = Batches(data, 4, seed=3)
    state.length_grouped(window=5)
    state.restore({"epoch": 0, "index": 3})
    np.testing.assert_array_equal(state.next()["example_ids"], first[3]["example_ids"])


def test_a_generating_run_groups_its_batches_and_logs_the_widths(hf_pair, tmp_path):
    """gkd with length-grouped batches, sampling (and evaluating) from an int8 KV cache."""
    teacher, student, train = hf_pair
    config = write_config(tmp_path / "c.py", teacher, student, train, str(tmp_path / "work"), steps=4, method="gkd",
                          **{"data.group_by_length": 4, "train.log_every": 1, "data.dev_num": 8, "model.kv_cache": "int8",
                             "data.max_prompt_length": 128, "data.max_length": 136})
    r = subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config}"], cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("gkd: length-grouped batches (windows of 4)"))
    assert "prompt slots per row 128 -> " in line and "fewer" in line, line
    widths = scalars(tmp_path / "work" / "tb", "padding/prompt_width")
    assert len(widths) == 4 and all(w in grouping.widths_for(128) for w in widths) and min(widths) < 128, widths
