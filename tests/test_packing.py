"""Packing (data/packing.py): a step's examples end to end in fewer rows, each its own segment with
positions from 0, and every response token mapped back to the slot that predicts it."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import scalars, write_config
from dpkd_jax import models, sampling
from dpkd_jax.batch import Packing
from dpkd_jax.data import packing
from dpkd_jax.models import llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def masks(rng, B=6, P=8, R=10):
    """Left-padded prompts and right-padded responses of random lengths."""
    p = rng.integers(1, P + 1, B)
    r = rng.integers(0, R + 1, B)
    return ((np.arange(P)[None] >= P - p[:, None]).astype(np.int32),
            (np.arange(R)[None] < r[:, None]).astype(np.int32))


def test_first_fit_fills_bins_and_refuses_an_example_longer_than_a_row():
    bins = packing.first_fit([5, 3, 7, 2, 4], 8)
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 7, 2, 4][i] for i in b) <= 8 for b in bins) and len(bins) == 3
    with pytest.raises(ValueError, match="an example of 9 tokens is longer than the packed rows' 8 slots"):
        packing.first_fit([9], 8)


def test_group_makes_batches_that_fit_their_rows_and_loses_no_example_silently():
    rng = np.random.default_rng(3)
    lengths = rng.integers(10, 200, 101)
    order = rng.permutation(101)
    rows = packing.rows_for(lengths, 8, 200)
    batches, left = packing.group(order, lengths, 8, 200, rows)
    assert rows < 8 and all(len(b) == 8 for b in batches)
    assert all(len(packing.first_fit(lengths[b], 200)) <= rows for b in batches)  # each fits, as planned
    seen = np.concatenate(batches)
    assert len(set(seen)) == len(seen) and len(seen) + left == 101  # disjoint; the rest counted
    again, _ = packing.group(order, lengths, 8, 200, rows)
    assert all((a == b).all() for a, b in zip(batches, again))  # a function of the order


def test_the_plan_puts_each_example_in_one_segment_and_picks_its_predictors():
    rng = np.random.default_rng(0)
    pm, rm = masks(rng)
    B, P, R, L = pm.shape[0], pm.shape[1], rm.shape[1], 18
    plan = packing.plan(pm, rm, L, rows=B)
    tokens = np.concatenate([np.arange(B * P).reshape(B, P), 10_000 + np.arange(B * R).reshape(B, R)], 1)
    flat_tokens = tokens.reshape(-1)
    seg, pos = plan["segments"], plan["positions"]
    assert (seg > 0).sum() == pm.sum() + rm.sum()  # every real token once, nothing else
    for b in range(B):
        real = np.concatenate([tokens[b, :P][pm[b] > 0], tokens[b, P:][rm[b] > 0]])
        where = np.nonzero(seg.reshape(-1) == b + 1)[0]
        assert len(set(where // L)) == 1  # one row
        np.testing.assert_array_equal(flat_tokens[plan["src"].reshape(-1)[where]], real)
        np.testing.assert_array_equal(pos.reshape(-1)[where], np.arange(len(real)))
        p, r = pm[b].sum(), rm[b].sum()
        for i in range(r):  # the slot holding the token before response token i
            assert plan["picks"][b, i] == where[p - 1 + i]
    assert np.mean(seg > 0) == (pm.sum() + rm.sum()) / seg.size  # the efficiency the step logs


@pytest.mark.parametrize("features", [False, True])
def test_packed_forward_gives_the_unpacked_hidden_states(features):
    """A Llama (RoPE, GQA) forward on packed rows equals the row-per-example forward at every response position."""
    rng = np.random.default_rng(1)
    pm, rm = masks(rng)
    B, P, R = pm.shape[0], pm.shape[1], rm.shape[1]
    decode, params = models.init(llama.tiny_config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                                   d_ff=64, max_positions=64), 0)
    prompt = rng.integers(1, 64, (B, P)).astype(np.int32) * pm
    response = rng.integers(1, 64, (B, R)).astype(np.int32) * rm
    plan = packing.plan(pm, rm, 20, rows=B)
    pk = Packing(**{k: jax.numpy.asarray(v) for k, v in plan.items()})
    if features:
        want, want_f = sampling.response_features(decode, params, prompt, pm, response, rm, (0, 1))
        got, got_f = sampling.packed_hidden(decode, params, prompt, response, pk, (0, 1))
        keep = rm[None, :, :, None] > 0
        np.testing.assert_allclose(np.where(keep, got_f, 0), np.where(keep, want_f, 0), atol=2e-5)
    else:
        want = sampling.response_hidden(decode, params, prompt, pm, response, rm)
        got = sampling.packed_hidden(decode, params, prompt, response, pk)
    keep = rm[:, :, None] > 0
    assert np.count_nonzero(plan["segments"][:, 1:] != plan["segments"][:, :-1]) > 3  # rows hold several examples
    np.testing.assert_allclose(np.where(keep, got, 0), np.where(keep, want, 0), atol=2e-5)


def test_a_packed_sft_run_says_what_it_saved_and_logs_its_efficiency(hf_pair, tmp_path):
    """Responses of varied lengths (one in eight long): a packed sft run says its rows and logs its efficiency."""
    teacher, student, _ = hf_pair
    train = tmp_path / "varied.jsonl"
    text = lambda i: " ".join(["alpha beta gamma"] * (60 if i % 8 == 0 else 1 + i % 5))
    train.write_text("".join(f'{{"instruction": "Repeat {i}.", "response": "{text(i)}"}}\n' for i in range(48)))
    config = write_config(tmp_path / "c.py", teacher, student, str(train), str(tmp_path / "work"), method="sft",
                          compile_cache=str(tmp_path / "xla"),
                          **{"data.packing": True, "train.log_every": 1, "data.max_length": 512, "data.dev_num": 8})
    r = subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config}"], cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1"), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the start-up memory check compiled the packed step the run executes: the run compiles it no more
    assert "memory: train step (sft) needs" in r.stdout
    assert r.stderr.count("Finished XLA compilation of jit(_generic_body)") == 1
    line = next(line for line in r.stdout.splitlines() if line.startswith("sft: packing 4 examples per step into"))
    rows, slots = int(line.split(" into ")[1].split()[0]), int(line.split(" rows of ")[1].split()[0])
    assert rows < 4 and f"({rows * slots} slots instead of {4 * slots})" in line, line
    eff = scalars(tmp_path / "work" / "tb", "packing/efficiency")
    assert len(eff) == 2 and all(0 < e <= 1 for e in eff), eff
