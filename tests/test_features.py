"""Feature distillation (``loss.feature``): the distance against numpy, the layers' outputs from the
model's one forward, the weight schedules, the projection training, gradients to the student only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_setup, train
from dpkd_jax import losses, models, objectives as O, specs
from dpkd_jax.batch import Batch
from dpkd_jax.config import default_config, validate
from dpkd_jax.errors import InputError
from dpkd_jax.models import gpt2, llama
from dpkd_jax.train import _feature_term


def np_distance(s, t, mask, proj, distance):
    s = np.einsum("kbtd,kde->kbte", s, proj) if proj is not None else s
    if distance == "mse":
        per = ((s - t) ** 2).mean(-1)
    else:
        per = 1 - (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
    per = per.mean(0)
    return (per * mask).sum(-1) / np.maximum(mask.sum(-1), 1)


@pytest.mark.parametrize("distance", ["mse", "cosine"])
@pytest.mark.parametrize("widths", [(6, 6), (4, 6)])
def test_feature_distance_matches_numpy(rng, distance, widths):
    ds, dt = widths
    s, t = rng.normal(size=(2, 3, 5, ds)), rng.normal(size=(2, 3, 5, dt))
    proj = rng.normal(size=(2, ds, dt)) if ds != dt else None
    mask = (rng.random((3, 5)) > 0.3).astype(np.float32)
    got = losses.feature_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), mask,
                                  projection=None if proj is None else jnp.asarray(proj, jnp.float32),
                                  distance=distance)
    np.testing.assert_allclose(np.asarray(got), np_distance(s, t, mask, proj, distance), rtol=1e-5, atol=1e-6)
    # the gradient w.r.t. the student's features, closed form for mse: 2 (sW − t) Wᵀ / (D_t · K · n_b)
    if distance == "mse":
        g = jax.grad(lambda x: losses.feature_distance(x, jnp.asarray(t, jnp.float32), mask, projection=None if
                                                       proj is None else jnp.asarray(proj, jnp.float32)).sum())(
            jnp.asarray(s, jnp.float32))
        sw = np.einsum("kbtd,kde->kbte", s, proj) if proj is not None else s
        back = np.einsum("kbte,kde->kbtd", sw - t, proj) if proj is not None else sw - t
        want = 2 * back / dt / s.shape[0] * (mask / np.maximum(mask.sum(-1, keepdims=True), 1))[None, :, :, None]
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_layer_outputs_come_from_the_same_forward_scanned_or_not(arch):
    mod = {"gpt2": gpt2, "llama": llama}[arch]
    cfg = mod.tiny_config(vocab_size=50, d_model=16, n_layers=3, n_heads=2, d_ff=32, max_positions=16)
    decoder, params = models.init(cfg, 0)
    unscanned, _ = models.init(models.with_config(models.merge(decoder, params), scan_layers=False).config, 0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 7)))
    pos, mask = jnp.broadcast_to(jnp.arange(7), (2, 7)), jnp.ones((2, 7), jnp.int32)
    x, feats = decoder.features(params, tokens, pos, mask, (0, 2))
    x2, feats2 = unscanned.features(params, tokens, pos, mask, (0, 2))
    assert feats.shape == (2, 2, 7, 16)
    np.testing.assert_allclose(np.asarray(x), np.asarray(decoder.hidden(params, tokens, pos, mask)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(feats), np.asarray(feats2), atol=1e-5)
    np.testing.assert_allclose(np.asarray(x2), np.asarray(x), atol=1e-5)
    final = models.merge(decoder, params).final_norm(feats[1])  # the last block's output, normed, is the hidden
    np.testing.assert_allclose(np.asarray(final), np.asarray(x), atol=1e-5)


def feature_cfg(**over):
    c = default_config()
    c.loss.feature.update({"layers": "0:1", "weight": 1.0, "final_weight": 1.0, **over})
    return c.loss.feature


def test_weight_schedules():
    at = lambda schedule, p: float(specs.Feature.of(feature_cfg(schedule=schedule, weight=2.0,
                                                                final_weight=0.5)).weight_at(p))
    assert [at("constant", p) for p in (0, 0.5, 1)] == [2.0, 2.0, 2.0]
    np.testing.assert_allclose([at("linear", p) for p in (0, 0.5, 1)], [2.0, 1.25, 0.5])
    np.testing.assert_allclose([at("cosine", p) for p in (0, 0.5, 1)], [2.0, 1.25, 0.5], atol=1e-6)
    np.testing.assert_allclose(at("cosine", 0.25), 0.5 + 1.5 * 0.5 * (1 + np.cos(np.pi / 4)), rtol=1e-6)
    assert specs.Feature.of(feature_cfg(weight=0.0, final_weight=0.0)) is None  # off


@pytest.mark.parametrize("over, match", [
    ({"loss.feature.layers": "1-3"}, "config.loss.feature.layers: '1-3' is not 'student_layer:teacher_layer'"),
    ({"loss.feature.distance": "l1"}, "config.loss.feature.distance: must be mse or cosine"),
    ({"method": "minillm"}, "config.loss.feature: minillm runs its own PPO update"),
    ({"teacher.topk": 8, "method": "kd"}, "config.loss.feature: the feature term reads the teacher's hidden states"),
    ({"loss.feature.response": "teacher", "method": "kd"}, "config.loss.feature.response: kd does not sample"),
])
def test_bad_feature_settings_are_named(over, match, tmp_path):
    c = default_config()
    c.teacher.path = c.student.path = str(tmp_path)
    c.data.train = "x.jsonl"
    c.loss.feature.update(dict(layers="0:1", weight=1.0))
    for k, v in over.items():
        head, last = k.rsplit(".", 1) if "." in k else ("", k)
        node = c
        for h in filter(None, head.split(".")):
            node = node[h]
        node[last] = v
    with pytest.raises(InputError, match=match):
        validate(c)


def test_gradients_reach_the_student_and_projection_never_the_teacher(tmp_path, tok):
    _, data, (t_dec, t_params), (s_dec, s_params) = tiny_setup(tmp_path, tok)
    f = specs.Feature.of(feature_cfg(layers="0:0,0:1", distance="cosine")).bind(s_dec.config, t_dec.config)
    proj = jnp.asarray(f.init_params()["feature/projection"])
    assert proj.shape == (2, 16, 32)
    batch = Batch(*(jnp.asarray(a[:4]) for a in (data.prompt_ids, data.prompt_mask, data.response_ids,
                                                 data.response_mask)))
    layers = {O.Model.STUDENT: f.student_layers, O.Model.TEACHER: f.teacher_layers}

    def term(sp, tp, w):
        ctx = O.Context({O.Model.STUDENT: (s_dec, sp), O.Model.TEACHER: (t_dec, tp)}, batch, {}, feature_layers=layers)
        return _feature_term(ctx, f, w).mean()
    gs, gt, gw = jax.grad(term, argnums=(0, 1, 2))(s_params, t_params, proj)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(gt))
    assert float(jnp.abs(gw).max()) > 0
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(gs)) > 0


def test_the_projection_trains_with_kd_and_resumes_exactly(tmp_path, tok):
    cfg, data, (t_dec, t_params), (s_dec, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps, cfg.train.save_every = "kd", 4, 2
    cfg.loss.feature.update(dict(layers="0:1", weight=5.0, final_weight=1.0, schedule="linear", distance="cosine"))
    seen = []
    straight = train(cfg, s_dec, s_params, t_dec, t_params, data, None, str(tmp_path / "a"),
                     callback=lambda step, state: seen.append(np.asarray(state["feature"]["feature/projection"])))
    h = straight.history
    assert [round(x["feature/weight"], 4) for x in h] == [5.0, 4.0, 3.0, 2.0]  # linear 5 -> 1 over 4 steps
    assert h[-1]["loss/feature"] < h[0]["loss/feature"] and "loss/kd" in h[-1]
    assert not np.allclose(seen[0], seen[-1])  # the projection moved
    cfg.loss.feature.schedule = "constant"  # the run length is part of a decaying schedule: a 2-step run differs
    straight = train(cfg, s_dec, s_params, t_dec, t_params, data, None, str(tmp_path / "a2"))
    cfg.train.steps = 2
    train(cfg, s_dec, s_params, t_dec, t_params, data, None, str(tmp_path / "b"))
    cfg.train.steps = 4
    resumed = train(cfg, s_dec, s_params, t_dec, t_params, data, None, str(tmp_path / "b"))
    for k in straight.params:
        np.testing.assert_allclose(resumed.params[k], straight.params[k], rtol=1e-6, atol=1e-7, err_msg=k)
    with pytest.raises(InputError, match="teacher layer 5 does not exist"):
        cfg.loss.feature.layers = "0:5"
        train(cfg, s_dec, s_params, t_dec, t_params, data, None, str(tmp_path / "c"))
