"""Objectives: typed per-method config blocks validated by name, their needs, GKD's
on-policy mixing, DistiLLM-2's ramp, and the reward-hacking diagnostics."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_setup
from conftest import spec_of
from dpkd_jax import objectives as O
from dpkd_jax.config import default_config
from dpkd_jax.errors import InputError
from dpkd_jax.optim import make_optimizer
from dpkd_jax.batch import Batch
from dpkd_jax.specs import Step
from dpkd_jax.train import init_state, make_step
from dpkd_jax import data as D


def test_every_method_has_a_typed_block_and_bad_fields_are_named():
    c = default_config()
    assert set(c.loss) == set(O.OBJECTIVES) | {"feature"}  # one block per method, and the feature term's
    assert c.loss.dpkd.beta == 0.1 and c.loss.gkd.lmbda == 0.5 and c.loss.distillm2.alpha == 0.1
    for method, field, value, msg in [("dpkd", "beta", -1.0, "config.loss.dpkd.beta: must be > 0"),
                                      ("gkd", "lmbda", 1.5, "config.loss.gkd.lmbda: must be in"),
                                      ("distillm2", "alpha", 1.0, "config.loss.distillm2.alpha"),
                                      ("kd", "kd_ratio", 2.0, "config.loss.kd.kd_ratio"),
                                      ("dpkd", "form", "xx", "config.loss.dpkd.form")]:
        c = default_config()
        c.loss[method][field] = value
        with pytest.raises(InputError, match=msg):
            O.build(method, spec_of(c).loss)
    with pytest.raises(InputError, match="config.method: unknown method 'dpo'"):
        O.build("dpo", spec_of(default_config()).loss)


def test_needs_declare_what_each_step_must_provide():
    loss = spec_of(default_config()).loss
    assert O.build("dpkd", loss).needs.teacher_samples and O.build("dpkd", loss).needs.student_samples
    assert not O.build("kd", loss).needs.teacher_samples and O.build("dadpo", loss).needs.reference
    assert not O.build("plad", loss).needs.teacher_logits and not O.build("sft", loss).needs.teacher_logits
    gkd = O.build("gkd", loss).needs
    assert gkd.on_policy == 0.5 and gkd.fallback is O.Response.GOLD and gkd.student_temperature == 0.9
    loss = dataclasses.replace(loss, gkd=dataclasses.replace(loss.gkd, seq_kd=True))  # the spec is frozen
    assert O.build("gkd", loss).needs.fallback is O.Response.TEACHER and O.build("gkd", loss).needs.teacher_samples


def _steps(tmp_path, tok, method, n, **block):
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method = method
    for k, v in block.items():
        cfg.loss[method][k] = v
    tx = make_optimizer(cfg.train)
    spec = Step.of(spec_of(cfg))
    step = make_step(spec, s_cfg, t_cfg, tx, t_params, s_params if spec.objective.needs.reference else None)
    state = init_state(s_cfg, jax.tree.map(jnp.copy, s_params), tx, spec.objective)
    batches = D.Batches(data, 4, 0)
    out = []
    for i in range(n):
        b = Batch.of({k: v for k, v in batches.next().items() if k != "example_ids"})
        state, m = step(state, b, jax.random.PRNGKey(i))
        out.append((b, {k: float(v) for k, v in m.items()}))
    return out


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gkd_trains_on_gold_or_on_its_own_samples(tmp_path, tok, lmbda):
    for b, m in _steps(tmp_path, tok, "gkd", 3, lmbda=lmbda):
        gold = b.response_mask.sum(1).mean()
        if lmbda == 0.0:  # never on-policy: trains on the gold responses and draws no samples at all
            assert "length/student_response" not in m and np.isfinite(m["loss/gkd"]) and gold > 0
        else:  # always the student's own samples: at most max_new_tokens each
            assert m["length/student_response"] <= 6 and "loss/gkd" in m and np.isfinite(m["loss/gkd"])


def test_gkd_on_policy_fraction_follows_lmbda(tmp_path, tok):
    runs = _steps(tmp_path, tok, "gkd", 24, lmbda=0.5)
    on = [m["length/student_response"] != pytest.approx(b.response_mask.sum(1).mean()) for b, m in runs]
    assert 4 <= sum(on) <= 20  # Binomial(24, 0.5): outside [4, 20] with probability < 0.2%


def test_distillm2_beta_ramp_reaches_0p75_by_mid_training(tmp_path, tok):
    runs = _steps(tmp_path, tok, "distillm2", 3, beta_ramp=True)
    betas = [m["distillm2/beta"] for _, m in runs]  # steps 0, 1, 2 of 3: progress 0, 1/3, 2/3
    np.testing.assert_allclose(betas, [0.5, 0.5 + 0.25 * 2 / 3, 0.75], rtol=1e-6)


def test_reward_hacking_diagnostics_are_logged(tmp_path, tok):
    _, m = _steps(tmp_path, tok, "dpkd", 1)[0]
    for k in ("hacking/student_nll_yt", "hacking/student_nll_ys", "hacking/teacher_logp_ys",
              "hacking/distinct2_ys", "hacking/length_ys"):
        assert k in m and np.isfinite(m[k]), k
    assert m["hacking/student_nll_ys"] > 0 and m["hacking/teacher_logp_ys"] < 0
    assert 0 < m["hacking/distinct2_ys"] <= 1


@pytest.mark.parametrize("method", ["kd", "dpkd", "sft"])
def test_first_token_kls_come_from_the_objectives_forwards(tmp_path, tok, method):
    """The logged first-token KLs equal two prompt-only forwards. kd and dpkd read both models' last
    prompt position from their own forwards (causal attention: it never sees a response); SFT runs no
    teacher forward, so the step adds the teacher's prompt forward and reuses the student's."""
    cfg, _, (t_dec, t_p), (s_dec, s_p) = tiny_setup(tmp_path, tok)
    b, m = _steps(tmp_path, tok, method, 1)[0]
    fkl, rkl = O.first_token_kls(s_dec, s_p, t_dec, t_p, *b.prompts)
    assert float(fkl.mean()) > 1e-3  # two different random models: a KL that can be wrong
    np.testing.assert_allclose(m["kl/first_token_forward"], float(fkl.mean()), rtol=1e-5)
    np.testing.assert_allclose(m["kl/first_token_reverse"], float(rkl.mean()), rtol=1e-5)
    if method != "dpkd":  # which forwards the objective ran (dpkd's need its samples)
        ctx = O.Context({O.Model.STUDENT: (s_dec, s_p), O.Model.TEACHER: (t_dec, t_p)}, b, {})
        O.build(method, spec_of(cfg).loss).loss(ctx)
        assert O.first_positions(ctx)[0] is not None
        assert (O.first_positions(ctx)[1] is not None) == (method == "kd")


def test_distinct_2_matches_a_python_count():
    ids = np.array([[1, 2, 1, 2, 1, 0, 0], [5, 5, 5, 5, 5, 5, 5], [3, 4, 0, 0, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7, [1, 0, 0, 0, 0, 0, 0]])
    got = np.asarray(O.distinct_2(jnp.asarray(ids), jnp.asarray(mask)))
    want = []
    for r in range(3):
        toks = ids[r][mask[r] == 1].tolist()
        bigrams = list(zip(toks, toks[1:]))
        want.append(len(set(bigrams)) / len(bigrams) if bigrams else 1.0)
    np.testing.assert_allclose(got, want)


def test_hacking_watch_warns_once_when_nll_of_own_samples_doubles(caplog):
    from dpkd_jax.loop import HackingWatch
    w = HackingWatch(2.0, [])
    for step, v in enumerate([1.0, 1.5, 2.5, 3.0], 1):
        w({"step": step, "hacking/student_nll_ys": v})
    warnings = [r for r in caplog.records if "possible reward hacking" in r.getMessage()]
    assert len(warnings) == 1 and "step 3" in warnings[0].getMessage()


def test_objectives_are_frozen_dataclasses_with_their_fields_as_config():
    for name, cls in O.OBJECTIVES.items():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name
        assert set(default_config().loss[name]) == {f.name for f in dataclasses.fields(cls)}  # the config's block


def test_mixture_sampler_draws_from_0p8_q_plus_0p2_p(checkpoints):
    from dpkd_jax import models, sampling
    s = models.from_pretrained(checkpoints["gpt2"][0])
    t = models.from_pretrained(checkpoints["opt"][0])
    # A peaked teacher (its head scaled 30x) so that the mixture is far from q alone.
    (s_dec, s_params), (t_dec, t_params) = models.split(s), models.split(t)
    key = "embed/proj_out" if "embed/proj_out" in t_params else "final_norm/scale"
    t_params = dict(t_params, **{key: 30 * t_params[key]})
    t = t_dec.module(t_params)
    mix = O.Mixture(s_dec, t_dec, 0.2)
    n = 20000
    ids = np.tile(np.array([[5, 9, 13, 2]]), (n, 1))
    toks, _ = sampling.sample_jit(mix, (s_params, t_params), ids, np.ones_like(ids), jax.random.PRNGKey(0),
                                  sampling.Sampling(max_new_tokens=1, eos_token_id=-1, pad_token_id=0))
    q = np.asarray(jax.nn.softmax(s(ids[:1])[0, -1]))
    p = np.asarray(jax.nn.softmax(t(ids[:1])[0, -1]))
    want = 0.8 * q + 0.2 * p
    freq = np.bincount(np.asarray(toks)[:, 0], minlength=len(want)) / n
    assert np.abs(freq - want).max() < 4 * np.sqrt(want.max() / n), np.abs(freq - want).max()
    assert np.abs(want - q).max() > 0.01  # the teacher really moves the distribution


def test_minillm_takes_ppo_epochs_x_minibatches_updates_per_step(tmp_path, tok):
    runs = _steps(tmp_path, tok, "minillm", 2, ppo_epochs=2, minibatches=2)
    for _, m in runs:
        for k in ("loss/minillm", "loss/minillm_reg", "minillm/reward", "minillm/importance_weight"):
            assert k in m and np.isfinite(m[k]), k
        assert 0 < m["minillm/importance_weight"] < 1 / 0.8 + 1e-6  # w = q / (0.8 q + 0.2 p) <= 1.25
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method = "minillm"
    cfg.loss.minillm.ppo_epochs, cfg.loss.minillm.minibatches = 3, 2
    tx = make_optimizer(cfg.train, O.build("minillm", spec_of(cfg).loss).updates_per_step)
    step = make_step(Step.of(spec_of(cfg)), s_cfg, t_cfg, tx, t_params)
    state = init_state(s_cfg, jax.tree.map(jnp.copy, s_params), tx)
    b = Batch.of({k: v for k, v in D.Batches(data, 4, 0).next().items() if k != "example_ids"})
    state, _ = step(state, b, jax.random.PRNGKey(0))
    counts = [int(x) for x in jax.tree.leaves(state["opt_state"]) if getattr(x, "dtype", None) == jnp.int32
              and x.shape == ()]
    assert 6 in counts and int(state["step"]) == 1  # 3 epochs x 2 minibatches = 6 Adam updates in one step
    cfg.loss.minillm.minibatches = 3
    with pytest.raises(InputError, match="config.loss.minillm.minibatches: 3 does not divide train.batch_size=4"):
        make_step(Step.of(spec_of(cfg)), s_cfg, t_cfg, tx, t_params)


def test_token_methods_train_from_the_topk_cache_without_the_teacher(tmp_path, tok, monkeypatch):
    from conftest import PIPE_VOCAB
    from dpkd_jax import teacher_cache
    from dpkd_jax.config import validate
    from conftest import train
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "kd", 2
    dense = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "dense")).history
    # k = V: the sparse loss is the dense one, step for step, though the step never sees the teacher.
    seen = {}
    real = __import__("dpkd_jax.train", fromlist=["make_step"]).make_step

    def spy(cfg_, student, teacher, tx, teacher_params, *a, **k):
        seen["teacher_params"] = teacher_params
        return real(cfg_, student, teacher, tx, teacher_params, *a, **k)
    monkeypatch.setattr("dpkd_jax.loop.make_step", spy)
    cfg.teacher.topk = PIPE_VOCAB
    sparse = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "sparse")).history
    assert seen["teacher_params"] is None
    # KL ~0.01 is a difference of entropies ~6 nats: float32 cancellation leaves ~1e-5 absolute
    for a, b in zip(dense, sparse):
        np.testing.assert_allclose(b["loss/kd"], a["loss/kd"], rtol=1e-3, atol=1e-5)
    z = np.load(tmp_path / "sparse" / f"teacher_top{PIPE_VOCAB}.npz")
    assert z["teacher_topk_ids"].shape == (len(data), data.response_ids.shape[1], PIPE_VOCAB)
    # k = 4: a real sparse cache, 8 bytes per token per k (int32 id + float32 log-prob)
    out = teacher_cache.teacher_topk(cfg.train.batch_size, t_cfg, t_params, data, 4)
    assert out["teacher_topk_ids"].nbytes + out["teacher_topk_logps"].nbytes == len(data) * 8 * 4 * 8
    cfg.method = "dpkd"
    with pytest.raises(InputError, match="config.teacher.topk: the sparse teacher cache serves kd, rkl, jsd, akl"):
        validate(cfg)
    cfg.method = "gkd"  # on-policy GKD scores the student's fresh samples: no cache can hold them
    with pytest.raises(InputError, match="method 'gkd' with these settings needs the teacher itself"):
        validate(cfg)


@pytest.mark.parametrize("method", ["akl", "skew_rkl", "gkd"])
def test_more_token_methods_train_from_the_cache_alone(tmp_path, tok, monkeypatch, method):
    from conftest import train
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps, cfg.teacher.topk = method, 2, 8
    cfg.loss.gkd.lmbda = 0.0  # off-policy GKD on the gold responses
    assert O.build(method, spec_of(cfg).loss).topk
    seen = {}
    real = __import__("dpkd_jax.train", fromlist=["make_step"]).make_step
    monkeypatch.setattr("dpkd_jax.loop.make_step", lambda c, s, t, tx, tp, *a, **k: (
        seen.setdefault("teacher_params", tp), real(c, s, t, tx, tp, *a, **k))[1])
    hist = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w")).history
    assert seen["teacher_params"] is None
    assert np.isfinite(hist[-1][f"loss/{method}"]) and hist[-1][f"loss/{method}"] > 0


# ----------------------------------------------------------- round 3: opd, taid ---

def test_opd_advantage_is_teacher_minus_sampler_and_iw_weights_are_logged(tmp_path, tok):
    runs = _steps(tmp_path, tok, "opd", 2, iw_gamma=0.5)
    for _, m in runs:
        assert np.isfinite(m["loss/opd"]) and m["opd/teacher_kl"] > 0  # q_old ≠ p: the student's own tokens
        assert 1.0 <= m["opd/mean_weight"] <= 1.5
        # one update per rollout: ρ ≡ 1, so the loss is −mean(w·A)
        assert m["loss/opd"] == pytest.approx(-m["opd/advantage"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("block", [dict(exact=True), dict(reward_scale=1.25, entropy_fkl=1.0, entropy_tau=0.0)])
def test_opd_options_train(tmp_path, tok, block):
    (_, m), = _steps(tmp_path, tok, "opd", 1, **block)
    assert np.isfinite(m["loss/total"]) and m["loss/opd"] != 0
    if "entropy_fkl" in block:
        assert m["loss/entropy_fkl"] > 0  # τ = 0: every position is gated in


def test_opd_exact_with_iw_weights_is_a_named_error():
    from dpkd_jax.errors import InputError
    c = default_config()
    c.loss.opd.exact, c.loss.opd.iw_gamma = True, 0.5
    loss = spec_of(c).loss
    with pytest.raises(InputError, match="config.loss.opd.exact"):
        O.build("opd", loss)


def _taid_lambdas(losses_, steps, t_start=0.4, t_end=1.0, alpha=0.8, beta=0.9):
    """method.md §6's schedule in plain Python: λ used at each step, from the steps' losses."""
    lam, prev, m, out = t_start, None, 0.0, []
    for n, j in enumerate(losses_):
        out.append(lam)
        if prev is not None:
            d = (prev - j) / (prev + 1e-15)
            m = beta * m + (1 - beta) * d
            lam = min(t_end, max(t_start + (t_end - t_start) * n / steps, lam + alpha * (1 / (1 + np.exp(-m))) * (1 - lam)))
        prev = j
    return out


def test_taid_lambda_follows_its_schedule_and_resumes_exactly(tmp_path, tok, capsys):
    from conftest import train
    cfg, data, (t_cfg, t_params), (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "taid", 4
    cfg.loss.taid.alpha, cfg.loss.taid.beta = 0.8, 0.9  # large enough to leave the linear ramp
    straight, h1, _ = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "a"))
    lams = [h["taid/lambda"] for h in h1]
    np.testing.assert_allclose(lams, _taid_lambdas([h["loss/taid"] for h in h1], 4), rtol=1e-5)
    assert lams[2] > 0.4 + 0.6 * 1 / 4 + 1e-3  # adaptive: above the linear ramp

    def crash(step, state):  # the run dies after step 2's checkpoint (train.save_every=2)
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "b"), callback=crash)
    resumed, h2, _ = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "b"))
    assert "resumed from step 2" in capsys.readouterr().out
    np.testing.assert_allclose([h["taid/lambda"] for h in h2], lams, rtol=1e-6)
    for k in straight:
        np.testing.assert_allclose(resumed[k], straight[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_a_models_responses_run_on_one_prompt_forward(tmp_path, tok, monkeypatch, method="dpkd",
                                                     together=("gold", "teacher", "student")):
    """The step records what the objective asks of each model (an abstract trace on zeros) and runs the
    student's responses to the batch's prompts (gold of 8 slots, samples of 6) on one prompt forward:
    the terms and the student's gradients equal those of the responses on forwards of their own."""
    from dpkd_jax import sampling
    cfg, data, (t_dec, t_p), (s_dec, s_p) = tiny_setup(tmp_path, tok)
    obj = O.build(method, spec_of(cfg).loss)
    b = Batch.of({k: v for k, v in D.Batches(data, 4, 0).next().items() if k != "example_ids"})
    rng = np.random.default_rng(0)
    sample = lambda: (jnp.asarray(rng.integers(1, 50, (4, 6))),
                      jnp.asarray((np.arange(6)[None] < rng.integers(1, 7, (4, 1))).astype(np.int32)))
    samples = {O.Response.TEACHER: sample(), O.Response.STUDENT: sample()}
    args = lambda p: ({O.Model.STUDENT: (s_dec, p), O.Model.TEACHER: (t_dec, t_p)}, b, samples)
    scored = O.scored_responses(obj, *args(s_p))
    assert {r.value for r in scored[O.Model.STUDENT]} == set(together)
    assert {r.value for r in scored[O.Model.TEACHER]} == {"teacher", "student"}  # the teacher never scores gold
    rows = []
    shared = sampling.shared_prompt_hidden
    monkeypatch.setattr(sampling, "shared_prompt_hidden", lambda d, p, pi, pm, ri, rm: rows.append(ri.shape) or
                        shared(d, p, pi, pm, ri, rm))

    def total(p, scored):
        terms, _ = obj.loss(O.Context(*args(p), scored=scored))
        return sum(w * v.mean() for w, v in terms.values())
    one, grads = jax.jit(jax.value_and_grad(lambda p: total(p, scored)))(s_p)
    assert (4 * len(together), 8) in rows  # the student's responses, padded to the gold's 8 slots
    rows.clear()
    own, own_grads = jax.jit(jax.value_and_grad(lambda p: total(p, None)))(s_p)
    assert (4 * len(together), 8) not in rows
    np.testing.assert_allclose(float(one), float(own), rtol=1e-5)
    for k in own_grads:
        np.testing.assert_allclose(grads[k], own_grads[k], atol=1e-5 * max(float(jnp.abs(own_grads[k]).max()), 1e-3),
                                   err_msg=k)
