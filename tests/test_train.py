"""The step: chunked token losses train exactly as whole-vocabulary logits do, for every method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_setup
from dpkd_jax import data as D
from dpkd_jax import objectives as O
from dpkd_jax import run as run_lib
from dpkd_jax import teacher_cache
from dpkd_jax.batch import Batch
from dpkd_jax.optim import make_optimizer
from dpkd_jax.specs import Step
from dpkd_jax.train import init_state, make_step


def three_steps(cfg, data, teacher, student, chunk, extra=None, teacher_params=True):
    (t_dec, t_params), (s_dec, s_params) = teacher, student
    # Adam's ε at 1e-4: with 1e-8 a gradient entry of ~1e-9 (a rare token's embedding) becomes a whole lr-sized
    # step, so float32 summation-order noise would be compared at the scale of the update itself.
    c = run_lib.stage_config(cfg, cfg.method, "/unused", **{"model.loss_chunk_tokens": chunk, "train.adam_eps": 1e-4})
    spec = Step.of(c)
    tx = make_optimizer(c.train, spec.objective.updates_per_step)
    step = make_step(spec, s_dec, t_dec, tx, t_params if teacher_params else None, s_params)
    state = init_state(s_dec, jax.tree.map(jnp.copy, s_params), tx, spec.objective)
    batches = D.Batches(data, 4, 0, extra)
    lm = np.random.default_rng(0).integers(0, 500, (4, 12)).astype(np.int32)
    for i in range(3):
        rows = {k: v for k, v in batches.next().items() if k != "example_ids"}
        state, m = step(state, Batch.of(dict(rows, lm_ids=lm)), jax.random.PRNGKey(i))
    return state["params"], m


def assert_same(a, b, method):
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-4, atol=2e-5, err_msg=f"{method} {k}")


@pytest.mark.parametrize("method", sorted(O.OBJECTIVES))
def test_chunked_step_trains_as_the_dense_one(tmp_path, tok, method):
    cfg, data, teacher, student = tiny_setup(tmp_path, tok)
    cfg.method = method
    cfg.loss[method].lm_coef = 0.5  # the LM term, chunked too
    if method == "minillm":
        cfg.loss.minillm.ppo_epochs, cfg.loss.minillm.minibatches = 2, 2
    dense, m_dense = three_steps(cfg, data, teacher, student, 0)
    chunked, m_chunked = three_steps(cfg, data, teacher, student, 8)  # 2 positions per chunk, the last one shorter
    assert_same(chunked, dense, method)
    np.testing.assert_allclose(m_chunked["loss/total"], m_dense["loss/total"], rtol=1e-4)
    assert any(not np.allclose(chunked[k], student[1][k]) for k in chunked)  # it did train


def test_chunked_sparse_cache_step_trains_as_the_dense_one(tmp_path, tok):
    cfg, data, teacher, student = tiny_setup(tmp_path, tok)
    cfg.method = "jsd"
    cache = teacher_cache.teacher_topk(4, *teacher, data, 5)
    dense, _ = three_steps(cfg, data, teacher, student, 0, cache, teacher_params=False)
    chunked, _ = three_steps(cfg, data, teacher, student, 12, cache, teacher_params=False)
    assert_same(chunked, dense, "jsd top-5")
