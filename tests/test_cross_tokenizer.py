"""Distillation across tokenizers: responses cross as text, each model scores its own tokens,
length normalisation uses each side's own count; token-level methods stop at start-up."""

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax.batch import Batch
import pytest

from conftest import make_tokenizer, tiny_setup
from dpkd_jax import cross_tokenizer as X
from dpkd_jax import losses, models, objectives as O
from dpkd_jax.data import format_prompt
from dpkd_jax.errors import InputError
from dpkd_jax.models import gpt2

TEACHER_VOCAB = 400
TEXTS = ["hi there", "3", "Add the numbers: 1 and 2 gives 3.", "  spaced  out\nnew line", "zebra quartz ünïcode 😀"]


@pytest.fixture(scope="module")
def teacher_tok(tmp_path_factory):
    """A second byte-level BPE, trained on other text: other merges, other ids."""
    corpus = [format_prompt("Say hi.") + "hello there friend"] * 20 + ["numbers add up to sums"] * 20
    return make_tokenizer(str(tmp_path_factory.mktemp("teacher_tok")), vocab_size=TEACHER_VOCAB, corpus=corpus)


def test_texts_round_trip_exactly(tok, teacher_tok):
    assert tok.get_vocab() != teacher_tok.get_vocab()
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in TEXTS]
    rows[1] = rows[1][:-1]  # a row that stopped at the length limit: no EOS
    L = max(map(len, rows)) + 2
    ids = np.array([r + [0] * (L - len(r)) for r in rows], np.int32)
    mask = np.array([[1] * len(r) + [0] * (L - len(r)) for r in rows], np.int32)
    rt = X.Retokenizer(tok, teacher_tok, 64, src_eos=tok.eos_token_id, dst_eos=teacher_tok.eos_token_id, dst_pad=0)
    t_ids, t_mask = rt(ids, mask)
    back = X.Retokenizer(teacher_tok, tok, 64, src_eos=teacher_tok.eos_token_id, dst_eos=tok.eos_token_id, dst_pad=0)
    for i, text in enumerate(TEXTS):
        n = t_mask[i].sum()
        ended = i != 1
        assert (t_ids[i, n - 1] == teacher_tok.eos_token_id) == ended
        assert teacher_tok.decode(t_ids[i, :n - ended]) == text  # the same text in the teacher's tokens
        assert [t for t, _ in back.texts(t_ids[i:i + 1], t_mask[i:i + 1])] == [text]
    s_ids, s_mask = back(t_ids, t_mask)
    np.testing.assert_array_equal(s_mask.sum(1), mask.sum(1))  # both byte-level: the student's own tokens back
    np.testing.assert_array_equal(np.where(s_mask, s_ids, 0)[:, :L], np.where(mask, ids, 0))
    short = X.Retokenizer(tok, teacher_tok, 3, src_eos=tok.eos_token_id, dst_eos=teacher_tok.eos_token_id, dst_pad=0)
    short(ids, mask)
    assert short.truncated >= 3  # cut rows are counted, never silent


def test_dpkd_uses_each_sides_own_token_count_numpy():
    sc, sr, tc, tr = np.array([-12.0, -3.0]), np.array([-20.0, -5.0]), np.array([-9.0, -2.5]), np.array([-30.0, -4.0])
    ns_c, ns_r, nt_c, nt_r = np.array([6, 2]), np.array([8, 3]), np.array([4, 2]), np.array([10, 2])
    u = (sc / ns_c - tc / nt_c) - (sr / ns_r - tr / nt_r)
    want = -np.log(1 / (1 + np.exp(-0.5 * u)))
    got = losses.dpkd_loss(sc, sr, tc, tr, ns_c, ns_r, beta=0.5, teacher_chosen_lengths=nt_c,
                           teacher_rejected_lengths=nt_r)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    same = losses.dpkd_loss(sc, sr, tc, tr, ns_c, ns_r, beta=0.5)  # one tokenizer: the teacher's counts = the student's
    np.testing.assert_allclose(np.asarray(same), -np.log(1 / (1 + np.exp(-0.5 * ((sc - tc) / ns_c - (sr - tr) / ns_r)))),
                               rtol=1e-6)


def test_context_scores_the_teacher_in_its_own_tokens():
    """A hand-built step: DPKD through ``Context.views`` equals numpy on the same log-probs."""
    S, T = O.Model.STUDENT, O.Model.TEACHER
    rng = np.random.default_rng(0)
    mk = lambda V, seed: (lambda c: models.init(c, seed))(
        gpt2.tiny_config(vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_positions=32))
    (s_cfg, s_p), (t_cfg, t_p) = mk(50, 0), mk(70, 1)
    arr = lambda V, shape: jnp.asarray(rng.integers(1, V, shape), jnp.int32)
    ones = lambda shape: jnp.ones(shape, jnp.int32)
    batch = Batch(arr(50, (2, 5)), ones((2, 5)), arr(50, (2, 4)), ones((2, 4)))
    s_yt, s_ys = (arr(50, (2, 6)), jnp.array([[1] * 6, [1] * 3 + [0] * 3])), (arr(50, (2, 4)), ones((2, 4)))
    t_prompt = (arr(70, (2, 7)), ones((2, 7)))
    t_yt, t_ys = (arr(70, (2, 5)), jnp.array([[1] * 5, [1, 1, 0, 0, 0]])), (arr(70, (2, 3)), ones((2, 3)))
    samples = {O.Response.TEACHER: s_yt, O.Response.STUDENT: s_ys}
    views = {T: (t_prompt, {O.Response.TEACHER: t_yt, O.Response.STUDENT: t_ys})}
    ctx = O.Context({S: (s_cfg, s_p), T: (t_cfg, t_p)}, batch, samples, 0.0, views)
    obj = O.OBJECTIVES["dpkd"]()
    terms, _ = obj.loss(ctx)

    def logp(cfg, p, prompt, resp):
        from dpkd_jax.sampling import response_logits
        lg = np.asarray(response_logits(cfg, p, *prompt, *resp), np.float64)
        lp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
        ids, m = np.asarray(resp[0]), np.asarray(resp[1])
        return (np.take_along_axis(lp, ids[..., None], -1)[..., 0] * m).sum(1), m.sum(1)
    sp = batch.prompts
    (sc, nsc), (sr, nsr) = logp(s_cfg, s_p, sp, s_yt), logp(s_cfg, s_p, sp, s_ys)
    (tc, ntc), (tr, ntr) = logp(t_cfg, t_p, t_prompt, t_yt), logp(t_cfg, t_p, t_prompt, t_ys)
    u = (sc / nsc - tc / ntc) - (sr / nsr - tr / ntr)
    np.testing.assert_allclose(np.asarray(terms["dpkd"][1]), np.log1p(np.exp(-0.1 * u)), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["dpkd", "seqkd", "plad", "dadpo"])
def test_two_steps_across_tokenizers(tmp_path, tok, teacher_tok, method):
    from conftest import train
    cfg, data, _, (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps, cfg.loss.dadpo.alpha = method, 2, 0.0
    t_cfg = gpt2.tiny_config(vocab_size=TEACHER_VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=72)
    t_cfg, t_params = models.init(t_cfg, 3)
    ref = s_params if method == "dadpo" else None
    out = train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / "w"), tokenizer=tok,
                     teacher_tokenizer=teacher_tok, ref_params=ref)
    last = out.history[-1]
    assert last["step"] == 2 and np.isfinite(last["loss/total"]) and f"loss/{method}" in last
    assert "xtok/truncated" in last
    if method == "dpkd":
        assert np.isfinite(last["hacking/teacher_logp_ys"]) and np.isfinite(last["reward/margin"])
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(s_params)))


def test_token_level_methods_stop_naming_the_sequence_level_ones(tmp_path, tok, teacher_tok):
    from conftest import train
    cfg, data, _, (s_cfg, s_params) = tiny_setup(tmp_path, tok)
    cfg.method = "kd"
    t_cfg, t_params = models.init(gpt2.tiny_config(vocab_size=TEACHER_VOCAB, d_model=32, n_layers=1, n_heads=2,
                                                   d_ff=64, max_positions=72), 0)
    with pytest.raises(InputError, match="'kd' compares token distributions.*dpkd \\(every form\\), seqkd, plad"):
        train(cfg, s_cfg, s_params, t_cfg, t_params, data, None,
                   str(tmp_path / "w"), tokenizer=tok, teacher_tokenizer=teacher_tok)
    cfg.method, cfg.loss.dadpo.alpha = "dadpo", 1.0  # daDPO's KL term needs one vocabulary
    with pytest.raises(InputError, match="'dadpo' compares token distributions"):
        train(cfg, s_cfg, s_params, t_cfg, t_params, data, None,
                   str(tmp_path / "w"), tokenizer=tok, teacher_tokenizer=teacher_tok)
    for method in ("opd", "abkd", "todi", "taid"):  # round 3's token-level methods stop the same way
        cfg.method = method
        with pytest.raises(InputError, match=f"'{method}' compares token distributions"):
            train(cfg, s_cfg, s_params, t_cfg, t_params, data, None,
                  str(tmp_path / "w"), tokenizer=tok, teacher_tokenizer=teacher_tok)


def test_a_second_run_reuses_the_compiled_samplers(tmp_path, tok, teacher_tok):
    """The experiment trains many runs per process: sampling y_t and y_s compiles once, not per run."""
    from conftest import train
    from dpkd_jax import sampling
    from conftest import PIPE_VOCAB
    cfg, data, _, _ = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.steps = "plad", 1
    # shapes no other test uses, so no earlier test has compiled these samplers in this process
    s_cfg, s_params = models.init(gpt2.tiny_config(vocab_size=PIPE_VOCAB, d_model=24, n_layers=1, n_heads=2, d_ff=40,
                                                   max_positions=72), 5)
    t_cfg, t_params = models.init(gpt2.tiny_config(vocab_size=TEACHER_VOCAB, d_model=40, n_layers=1, n_heads=2,
                                                   d_ff=56, max_positions=72), 0)
    run = lambda i: train(cfg, s_cfg, s_params, t_cfg, t_params, data, None, str(tmp_path / f"w{i}"), tokenizer=tok,
                          teacher_tokenizer=teacher_tok)
    before = sampling._generate_jit._cache_size()
    run(0)
    compiled = sampling._generate_jit._cache_size()
    assert compiled >= before + 2  # y_t and y_s: the module's one compiled sampler, not a jit per run
    run(1)
    assert sampling._generate_jit._cache_size() == compiled
