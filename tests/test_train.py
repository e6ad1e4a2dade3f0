"""The step: chunked token losses train exactly as whole-vocabulary logits do, for every method."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import lora_setup, tiny_setup
from conftest import spec_of
from dpkd_jax import data as D
from dpkd_jax import objectives as O
from dpkd_jax import run as run_lib
from dpkd_jax import teacher_cache
from dpkd_jax.batch import Batch
from dpkd_jax.optim import make_optimizer
from dpkd_jax.specs import Step
from dpkd_jax.train import init_state, make_step


def three_steps(cfg, data, teacher, student, chunk, extra=None, teacher_params=True, gold_length=None, **kw):
    """3 steps of ``cfg.method``; ``kw``: ``micro_batch`` (rows per micro-batch, 0: whole), ``samples=False``
    (the step draws y_t and y_s itself), ``packing`` (the gold forward on packed rows of that many slots)."""
    micro_batch, samples = kw.get("micro_batch", 0), kw.get("samples", True)
    (t_dec, t_params), (s_dec, s_params) = teacher, student
    # Adam's ε at 1e-4: with 1e-8 a gradient entry of ~1e-9 (a rare token's embedding) becomes a whole lr-sized
    # step, so float32 summation-order noise would be compared at the scale of the update itself.
    c = run_lib.stage_config(spec_of(cfg), cfg.method, "/unused", **{"model.loss_chunk_tokens": chunk, "train.adam_eps": 1e-4})
    spec = dataclasses.replace(Step.of(c), gold_length=gold_length).with_micro_batch(micro_batch, 1)
    tx = make_optimizer(c.train, spec.objective.updates_per_step)
    step = make_step(spec, s_dec, t_dec, tx, t_params if teacher_params else None, s_params)
    state = init_state(s_dec, jax.tree.map(jnp.copy, s_params), tx, spec.objective)
    batches = D.Batches(data, 4, 0, extra)
    if kw.get("packing"):  # the batches grouped to fit packed rows; "unpacked": the same batches, unpacked
        batches.packed(kw["packing"])
    if kw.get("grouped"):  # length-grouped batches, prompts cut; "uncut": the same batches at the full width
        batches.length_grouped(kw["grouped"])
    r = np.random.default_rng(0)
    lm = r.integers(0, 500, (4, 12)).astype(np.int32)
    widths = kw.get("widths", [])
    for i in range(3):
        rows = batches.next()
        if kw.get("uncut"):
            rows.update(prompt_ids=data.prompt_ids[rows["example_ids"]], prompt_mask=data.prompt_mask[rows["example_ids"]])
        widths.append(rows["prompt_ids"].shape[1])
        rows = {k: v for k, v in rows.items() if k != "example_ids"
                and not (kw.get("unpacked") and k.startswith("packing."))}
        given = given_samples(spec, r) if samples else {}
        state, m = step(state, Batch.of(dict(rows, lm_ids=lm, **given)), jax.random.PRNGKey(i))
    return state["params"], m


def given_samples(spec, r, n=6):
    """y_t and y_s given with the batch (as the offline cache and bench/train_step.py give them), ragged
    lengths: the step then compiles without its generation loops, which this comparison does not test
    (MiniLLM samples inside its own update and still does)."""
    needs, out = spec.objective.needs, {}
    for name, wanted in (("teacher", needs.teacher_samples), ("student", needs.student_samples)):
        if wanted and not spec.objective.own_update:
            out[f"{name}_ids"] = r.integers(1, 500, (4, n)).astype(np.int32)
            out[f"{name}_mask"] = (np.arange(n)[None] < r.integers(1, n + 1, (4, 1))).astype(np.int32)
    return out


def assert_same(a, b, method):
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-4, atol=2e-5, err_msg=f"{method} {k}")


@pytest.mark.parametrize("method", sorted(O.OBJECTIVES))
def test_every_method_trains_a_lora_student_chunked_as_dense(tmp_path, tok, method):
    """Every method, with the LM term, trains a LoRA student (Llama-shaped, GQA): 3 steps with chunked
    token losses give the dense path's parameters, the adapters move, the base weights stay bitwise."""
    cfg, data, teacher, student = lora_setup(tmp_path, tok)
    cfg.method = method
    cfg.loss[method].lm_coef = 0.5  # the LM term, chunked too
    if method == "minillm":
        cfg.loss.minillm.ppo_epochs, cfg.loss.minillm.minibatches = 2, 2
    dense, m_dense = three_steps(cfg, data, teacher, student, 0)
    chunked, m_chunked = three_steps(cfg, data, teacher, student, 8)  # 2 positions per chunk, the last one shorter
    assert_same(chunked, dense, method)
    np.testing.assert_allclose(m_chunked["loss/total"], m_dense["loss/total"], rtol=1e-4)
    s_dec, s_params = student
    trainable = set(s_dec.trainable())
    assert any(not np.allclose(chunked[k], s_params[k]) for k in trainable)  # it did train
    for k in set(chunked) - trainable:
        np.testing.assert_array_equal(np.asarray(chunked[k]), np.asarray(s_params[k]), err_msg=k)
    assert np.isfinite(float(m_chunked["loss/total"])) and "loss/lm" in m_chunked
    assert "kl/first_token_forward" in m_chunked and (method == "minillm" or f"loss/{method}" in m_chunked)
    if method == "dpkd":
        assert {"reward/margin", "reward/accuracy", "length/student_response"} <= set(m_chunked)


@pytest.mark.parametrize("method", ["sft", "kd", "dpkd"])
def test_gold_forwards_on_squeezed_rows_train_as_on_full_rows(tmp_path, tok, method):
    """The gold-response forwards on rows of the data's longest example (``Step.with_data``) give the
    full ``P + R`` rows' parameters after 3 steps: the same forward on fewer slots."""
    cfg, data, teacher, student = tiny_setup(tmp_path, tok)
    cfg.method = method
    longest = data.longest_row(multiple=1)
    assert longest < data.prompt_ids.shape[1] + data.response_ids.shape[1]  # something is squeezed out
    full, m_full = three_steps(cfg, data, teacher, student, 8)
    squeezed, m_sq = three_steps(cfg, data, teacher, student, 8, gold_length=longest)
    assert_same(squeezed, full, method)
    np.testing.assert_allclose(m_sq["loss/total"], m_full["loss/total"], rtol=1e-5)
    assert Step.of(run_lib.stage_config(spec_of(cfg), method, "/unused")).with_data(data).gold_length == data.longest_row()


@pytest.mark.parametrize("method", ["sft", "kd", "jsd", "taid"])
def test_packed_gold_forwards_train_as_unpacked(tmp_path, tok, method):
    """``data.packing``: the batch's examples packed end to end in rows of 3 x the longest row's slots (each
    its own segment, positions from 0, several to a row) give the unpacked step's loss, gradient norm and
    parameters after 3 steps, with the LM term."""
    cfg, data, teacher, student = tiny_setup(tmp_path, tok, varied=True)
    cfg.method = method
    cfg.loss[method].lm_coef = 0.5
    longest = data.longest_row()
    whole, m_whole = three_steps(cfg, data, teacher, student, 8, gold_length=longest, packing=3 * longest,
                                 unpacked=True)
    packed, m_packed = three_steps(cfg, data, teacher, student, 8, packing=3 * longest)
    for k in whole:
        np.testing.assert_allclose(np.asarray(packed[k]), np.asarray(whole[k]), atol=1e-5, err_msg=f"{method} {k}")
    for k in ("loss/total", "grad_norm", f"loss/{method}"):
        np.testing.assert_allclose(m_packed[k], m_whole[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert D.Batches(data, 4, 0).packed(3 * longest) < 4  # rows hold several examples


@pytest.mark.parametrize("method, samples", [("sft", True), ("kd", True), ("dpkd", False), ("gkd", False)])
def test_length_grouped_batches_with_cut_prompts_train_as_at_the_full_width(tmp_path, tok, method, samples):
    """``data.group_by_length``: the same grouped batches with their left-padded prompts cut to the narrowest
    width that holds them give the full width's loss and parameters after 3 steps, also when the step samples
    y_t and y_s itself (the prefill over fewer padding slots)."""
    cfg, _, teacher, student = tiny_setup(tmp_path, tok, varied=True)
    cfg.method = method
    cfg.loss[method].lm_coef = 0.5
    # prompts of 30-50 tokens at a width of 128: cut to 64 (the widths are 128, 64, 32, 16)
    cfg.data.max_prompt_length, cfg.data.max_length = 128, 136
    data, _ = D.load_instructions(str(tmp_path / "d.jsonl"), tok, max_prompt_length=128, max_length=136,
                                  pad_token_id=tok.eos_token_id)
    cut_widths, full_widths = [], []
    full, m_full = three_steps(cfg, data, teacher, student, 8, samples=samples, grouped=2, uncut=True,
                               widths=full_widths)
    cut, m_cut = three_steps(cfg, data, teacher, student, 8, samples=samples, grouped=2, widths=cut_widths)
    assert full_widths == [128] * 3 and max(cut_widths) < 128  # the prompts were cut
    for k in full:
        np.testing.assert_allclose(np.asarray(cut[k]), np.asarray(full[k]), atol=1e-5, err_msg=f"{method} {k}")
    for k in ("loss/total", "grad_norm", f"loss/{method}"):
        np.testing.assert_allclose(m_cut[k], m_full[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(m_cut["padding/prompt_width"]) == cut_widths[-1]


@pytest.mark.parametrize("method, samples", [("sft", True), ("kd", True), ("gkd", True), ("dpkd", True),
                                             ("plad", True), ("opd", True), ("dpkd", False), ("opd", False)])
def test_micro_batches_train_as_the_whole_batch(tmp_path, tok, method, samples):
    """``train.micro_batch``: 4 rows as 4 micro-batches of 1 (a scan inside the step, one update) give the
    whole batch's loss, gradient norm and parameters after 3 steps, with the LM term, on given samples
    and on samples the step draws itself (drawn once for the whole batch, then split)."""
    cfg, data, teacher, student = tiny_setup(tmp_path, tok)
    cfg.method = method
    cfg.loss[method].lm_coef = 0.5
    whole, m_whole = three_steps(cfg, data, teacher, student, 8, samples=samples)
    micro, m_micro = three_steps(cfg, data, teacher, student, 8, micro_batch=1, samples=samples)
    for k in whole:
        np.testing.assert_allclose(np.asarray(micro[k]), np.asarray(whole[k]), atol=1e-5, err_msg=f"{method} {k}")
    for k in ("loss/total", "grad_norm", f"loss/{method}"):
        np.testing.assert_allclose(m_micro[k], m_whole[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(whole["blocks/mlp/up/w"], student[1]["blocks/mlp/up/w"])  # it trained


def test_micro_batch_must_divide_the_batch_per_device(tmp_path, tok):
    cfg, *_ = tiny_setup(tmp_path, tok)
    with pytest.raises(ValueError, match=r"config.train.micro_batch: 3 does not divide the batch per device 4"):
        Step.of(run_lib.stage_config(spec_of(cfg), "sft", "/unused")).with_micro_batch(3, 1)
    assert Step.of(run_lib.stage_config(spec_of(cfg), "sft", "/unused")).with_micro_batch(2, 2).micro_batches == 1


def test_chunked_sparse_cache_step_trains_as_the_dense_one(tmp_path, tok):
    cfg, data, teacher, student = tiny_setup(tmp_path, tok)
    cfg.method = "jsd"
    cache = teacher_cache.teacher_topk(4, *teacher, data, 5)
    dense, _ = three_steps(cfg, data, teacher, student, 0, cache, teacher_params=False)
    chunked, _ = three_steps(cfg, data, teacher, student, 12, cache, teacher_params=False)
    assert_same(chunked, dense, "jsd top-5")
