"""Specs built once from the config: hashable, equal across seeds, so a method's step compiles once."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from conftest import tiny_setup
from conftest import spec_of
from dpkd_jax import data as D
from dpkd_jax import run as run_lib
from dpkd_jax.batch import Batch
from dpkd_jax.optim import make_optimizer
from dpkd_jax.specs import Sampling, Step
from dpkd_jax.train import init_state, make_step


def test_sampling_spec_holds_the_seven_options():
    from dpkd_jax.config import default_config
    g = default_config().gen
    s = Sampling.of(g)
    assert dataclasses.asdict(s) == dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                                         top_p=g.top_p, eos_token_id=g.eos_token_id, pad_token_id=g.pad_token_id,
                                         greedy=False)
    assert s.replace(temperature=0.5).temperature == 0.5 and hash(s) == hash(Sampling.of(g))


def test_every_seed_of_a_method_shares_one_compiled_step(tmp_path, tok):
    cfg, data, (t_dec, t_params), (s_dec, s_params) = tiny_setup(tmp_path, tok)
    cfg.method = "kd"
    stages = [run_lib.stage_config(spec_of(cfg), "kd", str(tmp_path / f"s{seed}"), seed=seed) for seed in (0, 1, 2)]
    specs = [Step.of(c) for c in stages]
    assert specs[0] == specs[1] == specs[2] and hash(specs[0]) == hash(specs[2])
    txs = [make_optimizer(c.train) for c in stages]
    assert txs[0] is txs[1]  # equal settings: the same optax object
    steps = [make_step(s, s_dec, t_dec, tx, t_params) for s, tx in zip(specs, txs)]
    assert steps[0].jitted is steps[1].jitted is steps[2].jitted
    batch = Batch.of({k: v for k, v in D.Batches(data, 4, 0).next().items() if k != "example_ids"})
    for i, step in enumerate(steps):
        state = init_state(s_dec, jax.tree.map(jnp.copy, s_params), txs[i])
        step(state, batch, jax.random.PRNGKey(i))
    assert steps[0].jitted._cache_size() == 1
    # another learning rate is another schedule: its own step
    other = Step.of(run_lib.stage_config(spec_of(cfg), "kd", str(tmp_path / "x"), lr=1e-5))
    assert other != specs[0] and dataclasses.replace(other, schedule=specs[0].schedule) == specs[0]
    assert np.isfinite(float(Step.of(spec_of(cfg)).schedule(0)))


def test_stage_configs_and_the_resolved_config_are_copies(tok):
    from dpkd_jax.config import default_config
    cfg = default_config()
    before = cfg.to_json()
    c = run_lib.stage_config(spec_of(cfg), "dpkd", "/tmp/w", seed=3, loss={"beta": 0.5}, **{"train.save_every": 0})
    assert (c.seed, c.loss.dpkd.beta, c.train.save_every, c.workdir) == (3, 0.5, 0, "/tmp/w")
    r = run_lib.resolved(spec_of(cfg), tok)
    assert r.gen.eos_token_id == tok.eos_token_id and r.gen.pad_token_id >= 0
    assert cfg.to_json() == before  # the run's own config is never written
