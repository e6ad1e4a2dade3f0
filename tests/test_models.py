"""Every family (GPT-2, OPT, Llama, Mistral, Qwen2, Qwen3, Gemma 2/3) against PyTorch
transformers on tiny random configs, and HF checkpoint import/export.

Tolerances: float32 logits within 2e-5 absolute (measured ~1e-7); bfloat16 weights and
compute within 5e-2 absolute on logits of magnitude ~1 (bf16 has an 8-bit mantissa)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import MODEL_KINDS, VOCAB, hf_model, make_tokenizer
from dpkd_jax import models, sampling
from dpkd_jax.models import gpt2
from dpkd_jax import planner as plan
from flax import nnx


def left_padded(rng, b=3, t=10, vocab=VOCAB):
    ids = rng.integers(1, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    for r in range(1, b):
        mask[r, : 2 * r] = 0
    return ids, mask


def torch_logits(m, ids, mask):
    kw = {}
    if m.config.model_type != "opt":  # only HF OPT derives positions from the mask
        kw["position_ids"] = torch.tensor(np.maximum(mask.cumsum(1) - 1, 0))
    with torch.no_grad():
        return m(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).logits.float().numpy()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_logits_parity_float32(checkpoints, kind, rng):
    path, ref = checkpoints[kind]
    model = models.from_pretrained(path)
    ids, mask = left_padded(rng)
    ours = np.asarray(model(ids, attention_mask=mask))
    want = torch_logits(ref, ids, mask)
    assert ours.shape == want.shape == (3, 10, VOCAB)
    np.testing.assert_allclose(ours[mask == 1], want[mask == 1], atol=2e-5, rtol=1e-5)


BLOCKWISE = dict(attention_kernel="blockwise", attention_block_q=4, attention_block_k=4)  # 10 slots: 3 blocks


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_logits_parity_float32_blockwise_attention(checkpoints, kind, rng):
    """Every family with blockwise attention forced, in blocks smaller than the sequence (sliding
    windows of 4 across block edges, Gemma 2's soft-capping, GQA, left padding)."""
    path, ref = checkpoints[kind]
    model = models.from_pretrained(path, **BLOCKWISE)
    assert model.config.attention_kernel == "blockwise"
    ids, mask = left_padded(rng)
    ours = np.asarray(model(ids, attention_mask=mask))
    want = torch_logits(ref, ids, mask)
    np.testing.assert_allclose(ours[mask == 1], want[mask == 1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama3_gqa4_bias", "gemma2", "gemma3"])
def test_generation_with_blockwise_prefill_equals_dense(checkpoints, kind, rng):
    """Greedy and sampled answers (fixed key) are the same tokens with a blockwise prefill."""
    dense = models.from_pretrained(checkpoints[kind][0], attention_kernel="dense")
    block = models.with_config(dense, **BLOCKWISE)
    ids, mask = left_padded(rng, t=11)
    for greedy in (True, False):
        opts = sampling.Sampling(max_new_tokens=6, greedy=greedy, eos_token_id=-1, pad_token_id=0)
        want, _ = models.generate(dense, ids, mask, opts, rng=jax.random.PRNGKey(3))
        got, _ = models.generate(block, ids, mask, opts, rng=jax.random.PRNGKey(3))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"greedy={greedy}")


@pytest.mark.parametrize("kind", ["gpt2", "opt", "llama3_gqa4_bias", "gemma2"])
def test_logits_parity_bfloat16(checkpoints, kind, rng):
    path, ref = checkpoints[kind]
    model = models.from_pretrained(path, dtype=jnp.bfloat16)
    assert models.split(model)[1]["embed/tokens"].dtype == jnp.bfloat16
    ids, mask = left_padded(rng)
    ours = np.asarray(model(ids, attention_mask=mask).astype(jnp.float32))
    want = torch_logits(ref, ids, mask)
    # bf16 has an 8-bit mantissa: documented tolerance 0.05 absolute on logits of magnitude ~1
    np.testing.assert_allclose(ours[mask == 1], want[mask == 1], atol=5e-2)


def test_bf16_compute_with_f32_master_weights(checkpoints, rng):
    path, ref = checkpoints["gpt2"]
    model = models.from_pretrained(path, dtype=jnp.float32, compute_dtype=jnp.bfloat16)
    assert models.split(model)[1]["blocks/mlp/up/w"].dtype == jnp.float32
    ids, mask = left_padded(rng)
    out = model(ids, attention_mask=mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32)[mask == 1], torch_logits(ref, ids, mask)[mask == 1],
                               atol=5e-2)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_left_padding_invariance_and_scan_equivalence(checkpoints, kind, rng):
    model = models.from_pretrained(checkpoints[kind][0])
    ids, mask = left_padded(rng)
    batch = np.asarray(model(ids, attention_mask=mask))
    for r in range(3):
        real = ids[r][mask[r] == 1][None]
        alone = np.asarray(model(real))
        np.testing.assert_allclose(batch[r][mask[r] == 1], alone[0], atol=1e-5)
    unrolled = models.with_config(model, scan_layers=False)
    np.testing.assert_allclose(np.asarray(unrolled(ids, attention_mask=mask)), batch, atol=1e-5)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_cached_decoding_equals_recomputation(checkpoints, kind, rng):
    """Prefill then one token at a time equals the whole forward, scanned (one stacked cache) and, for
    three layouts of attention, unrolled (one cache array per layer: the same code for every family)."""
    scanned = models.from_pretrained(checkpoints[kind][0])
    ids, mask = left_padded(rng, t=12)
    P = 7
    full = np.asarray(scanned(ids, attention_mask=mask))
    pos = models.positions_from_mask(mask)
    unrolled = (models.with_config(scanned, scan_layers=False),) if kind in ("gpt2", "mistral_gqa3_window", "gemma2") else ()
    for model in (scanned, *unrolled):
        cache = model.init_cache(3, 12)
        n = model.config.n_layers
        assert ([c.shape for c in cache["k"]] == [(3, model.config.kv_heads, 12, model.config.head_size)] * n
                if isinstance(cache["k"], tuple) else cache["k"].shape[0] == n)
        logits, cache = model(ids[:, :P], attention_mask=mask, positions=pos[:, :P], cache=cache, cache_index=0)
        got = [np.asarray(logits)]
        for t in range(P, 12):
            logits, cache = model(ids[:, t:t + 1], attention_mask=mask, positions=pos[:, t:t + 1], cache=cache,
                                  cache_index=t)
            got.append(np.asarray(logits))
        got = np.concatenate(got, axis=1)
        np.testing.assert_allclose(got[mask == 1], full[mask == 1], atol=1e-5, err_msg=str(model.config.scan_layers))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_an_int8_kv_cache_stays_within_a_small_kl_of_the_float_cache(checkpoints, kind, rng):
    """``kv_cache="int8"`` (one float32 scale per head and slot): prefill then one token at a time, scanned
    and unrolled, every next-token distribution within KL(float || int8) < 2e-3 (mean < 5e-4) of the float
    cache's; the cache holds int8 values and a scale per head and slot: (K + 4) / 4K of the float32 bytes."""
    base = models.from_pretrained(checkpoints[kind][0])
    ids, mask = left_padded(rng, t=12)
    pos, P = models.positions_from_mask(mask), 5
    for scan in (True, False):
        runs = {}
        for kv in ("compute", "int8"):
            model = models.with_config(base, scan_layers=scan, kv_cache=kv)
            cache = model.init_cache(3, 12)
            logits, cache = model(ids[:, :P], attention_mask=mask, positions=pos[:, :P], cache=cache, cache_index=0)
            steps = [np.asarray(logits)]
            for t in range(P, 12):
                logits, cache = model(ids[:, t:t + 1], attention_mask=mask, positions=pos[:, t:t + 1], cache=cache,
                                      cache_index=t)
                steps.append(np.asarray(logits))
            runs[kv] = (np.concatenate(steps, axis=1), cache)
        (ref, fcache), (got, qcache) = runs["compute"], runs["int8"]
        p, q = jax.nn.log_softmax(ref[mask == 1]), jax.nn.log_softmax(got[mask == 1])
        kl = np.asarray(jnp.sum(jnp.exp(p) * (p - q), -1))
        assert kl.max() < 2e-3 and kl.mean() < 5e-4, (scan, kl.max(), kl.mean())
        assert kl.max() > 0  # the int8 cache did round
        nbytes = lambda c: sum(a.nbytes for a in jax.tree.leaves(c))
        assert {a.dtype for a in jax.tree.leaves({"k": qcache["k"], "v": qcache["v"]})} == {jnp.dtype(jnp.int8)}
        K = model.config.head_size  # per head and slot: K bytes and a 4-byte scale, against 4 K bytes of float32
        assert nbytes(qcache) * 4 * K == nbytes(fcache) * (K + 4), (nbytes(qcache), nbytes(fcache), K)
        mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"))  # the planner's table counts the same bytes
        assert plan.kv_cache_bytes(model.config, mesh, 3, 12) == nbytes(qcache)
        assert plan.kv_cache_bytes(models.with_config(base, kv_cache="compute").config, mesh, 3, 12) == nbytes(fcache)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_greedy_decoding_equals_a_no_cache_argmax_loop(checkpoints, kind, rng):
    model = models.from_pretrained(checkpoints[kind][0])
    ids, mask = left_padded(rng, t=8)
    toks, tmask = models.generate(model, ids, mask,
                                  sampling.Sampling(max_new_tokens=6, greedy=True, eos_token_id=-1, pad_token_id=0))
    seq, m = ids, mask
    for _ in range(6):
        nxt = np.asarray(model(seq, attention_mask=m))[:, -1].argmax(-1)
        seq, m = np.concatenate([seq, nxt[:, None]], 1), np.concatenate([m, np.ones((3, 1), m.dtype)], 1)
    np.testing.assert_array_equal(np.asarray(toks), seq[:, 8:])
    assert np.asarray(tmask).all()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_export_round_trip_through_transformers(checkpoints, kind, rng, tmp_path):
    path, ref = checkpoints[kind]
    model = models.from_pretrained(path)
    models.save_pretrained(model, str(tmp_path))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids, mask = left_padded(rng)
    np.testing.assert_allclose(torch_logits(back, ids, mask)[mask == 1], torch_logits(ref, ids, mask)[mask == 1],
                               atol=1e-6)
    again = models.from_pretrained(str(tmp_path))
    for k, v in models.split(model)[1].items():
        np.testing.assert_array_equal(np.asarray(models.split(again)[1][k]), np.asarray(v), err_msg=k)


def test_model_built_from_scratch_exports_to_transformers(tmp_path, rng):
    cfg = gpt2.tiny_config(vocab_size=80, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=32)
    model = models.CausalLM(cfg, rngs=nnx.Rngs(3))
    models.save_pretrained(model, str(tmp_path), max_shard_bytes=20_000)  # forces several shards + index
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = rng.integers(0, 80, (2, 9))
    with torch.no_grad():
        want = back(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), want, atol=2e-5)


def test_sharded_hf_checkpoint_with_index_loads(tmp_path, rng):
    ref = hf_model("opt")
    ref.save_pretrained(str(tmp_path), max_shard_size="30KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    ids, mask = left_padded(rng)
    ours = np.asarray(models.from_pretrained(str(tmp_path))(ids, attention_mask=mask))
    np.testing.assert_allclose(ours[mask == 1], torch_logits(ref, ids, mask)[mask == 1], atol=2e-5)


def test_pickle_checkpoint_refused_unless_allowed(tmp_path, rng):
    ref = hf_model("gpt2")
    ref.save_pretrained(str(tmp_path), safe_serialization=False)
    if not os.path.isfile(tmp_path / "pytorch_model.bin"):  # transformers 5 may always write safetensors
        for f in os.listdir(tmp_path):
            if f.endswith(".safetensors"):
                os.remove(tmp_path / f)
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        models.from_pretrained(str(tmp_path))
    ids, mask = left_padded(rng)
    ours = np.asarray(models.from_pretrained(str(tmp_path), allow_pickle=True)(ids, attention_mask=mask))
    np.testing.assert_allclose(ours[mask == 1], torch_logits(ref, ids, mask)[mask == 1], atol=2e-5)


def _copy(checkpoints, kind, tmp_path):
    dst = str(tmp_path / kind)
    shutil.copytree(checkpoints[kind][0], dst)
    return dst


def test_missing_unexpected_and_misshapen_weights_are_named(checkpoints, tmp_path):
    dst = _copy(checkpoints, "gpt2", tmp_path)
    f = os.path.join(dst, "model.safetensors")
    tensors = load_file(f)
    good = dict(tensors)
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"missing weights \['transformer.h.1.mlp.c_fc.bias'\]"):
        models.from_pretrained(dst)
    tensors = dict(good, **{"transformer.h.7.mlp.c_fc.bias": good["transformer.h.1.mlp.c_fc.bias"]})
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"unexpected weights \['transformer.h.7.mlp.c_fc.bias'\]"):
        models.from_pretrained(dst)
    tensors = dict(good, **{"transformer.h.2.attn.c_proj.weight": np.zeros((32, 31), np.float32)})
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"transformer.h.2.attn.c_proj.weight has shape \(32, 31\)"):
        models.from_pretrained(dst)


def test_bad_config_is_named(checkpoints, tmp_path):
    dst = _copy(checkpoints, "opt", tmp_path)
    cfg_file = os.path.join(dst, "config.json")
    cfg = json.load(open(cfg_file))
    json.dump(dict(cfg, model_type="bloom"), open(cfg_file, "w"))
    with pytest.raises(ValueError, match="model_type 'bloom' is not supported"):
        models.from_pretrained(dst)
    json.dump({k: v for k, v in cfg.items() if k != "ffn_dim"}, open(cfg_file, "w"))
    with pytest.raises(ValueError, match="config.json: field 'ffn_dim' is missing"):
        models.from_pretrained(dst)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.from_pretrained(str(tmp_path / "nowhere"))


def test_vocabulary_check(checkpoints, tmp_path):
    # same tokenizer; differently padded embedding matrices are fine: the real vocabulary is shared
    assert models.check_same_vocabulary(checkpoints["gpt2"][0], checkpoints["opt"][0]) <= VOCAB
    padded = str(tmp_path / "padded")
    hf_model("gpt2", vocab_size=VOCAB + 32).save_pretrained(padded)
    models.load_tokenizer(checkpoints["gpt2"][0]).save_pretrained(padded)
    n = models.check_same_vocabulary(checkpoints["gpt2"][0], padded)
    assert n == len(models.load_tokenizer(padded))
    small = str(tmp_path / "small")
    hf_model("gpt2", vocab_size=8).save_pretrained(small)
    models.load_tokenizer(checkpoints["gpt2"][0]).save_pretrained(small)
    with pytest.raises(ValueError, match=f"small/config.json: vocab_size=8 is smaller than the tokenizer's {n}"):
        models.check_same_vocabulary(checkpoints["gpt2"][0], small)
    other = str(tmp_path / "other")
    hf_model("gpt2").save_pretrained(other)
    make_tokenizer(other, corpus=["completely different words in this corpus zebra quartz"] * 20)
    with pytest.raises(ValueError, match="tokenizers differ"):
        models.check_same_vocabulary(checkpoints["gpt2"][0], other)
    tok = models.load_tokenizer(checkpoints["gpt2"][0])
    assert tok.eos_token == "<|endoftext|>" and len(tok) <= VOCAB


def test_padded_vocabulary_logits_cover_the_real_vocabulary_only(checkpoints, rng):
    model = models.from_pretrained(checkpoints["llama"][0], output_vocab=50)
    ids, mask = left_padded(rng, vocab=50)
    full = np.asarray(models.from_pretrained(checkpoints["llama"][0])(ids, attention_mask=mask))
    cut = np.asarray(model(ids, attention_mask=mask))
    assert cut.shape[-1] == 50
    np.testing.assert_allclose(cut, full[..., :50], atol=1e-6)


def test_param_table_and_flops(checkpoints):
    model = models.from_pretrained(checkpoints["opt_proj"][0])
    table = models.param_info(model)
    assert table["blocks/attn/q/w"].axes == ("layers", "embed", "heads", "head_dim")
    assert table["embed/tokens"].axes == ("vocab", "embed")
    assert table["blocks/attn/q/w"].kind == "weight" and table["blocks/attn/q/b"].kind == "bias"
    assert table["blocks/attn_norm/scale"].kind == "scale" and table["embed/positions"].kind == "position"
    for k, v in models.split(model)[1].items():
        assert len(table[k][1]) == v.ndim == len(table[k][0]), k
    n = model.num_params()
    assert n == sum(v.size for v in models.split(model)[1].values())
    f = model.flops_per_token(32)
    assert 6 * (n - models.split(model)[1]["embed/positions"].size) <= f * 1.5 and f > 0
    assert model.flops_per_token(64) > f  # attention term grows with context
    # GQA and gating counted: 2 x matmul params of one layer (+ attention and head) for a Llama
    cfg = models.load_config(checkpoints["llama3_gqa4_bias"][0])
    D, H, G, K, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
    layer = 2 * (D * K * (H + 2 * G) + H * K * D + 3 * D * F) + 4 * 16 * H * K
    assert models.forward_flops_per_token(cfg, 16) == cfg.n_layers * layer + 2 * D * cfg.vocab_size


def test_unsupported_options_are_refused_by_name(tmp_path):
    for kind, over, msg in [("llama", {"pretraining_tp": 2}, "llama option pretraining_tp=2 is not supported"),
                            ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}},
                             "rope_type='yarn' is not supported"),
                            ("qwen2", {"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5 is not supported")]:
        d = str(tmp_path / kind)
        m = hf_model(kind)
        m.save_pretrained(d)
        cfg = json.load(open(os.path.join(d, "config.json")))
        json.dump(dict(cfg, **over), open(os.path.join(d, "config.json"), "w"))
        with pytest.raises(ValueError, match=msg):
            models.load_config(d)


@pytest.mark.parametrize("kind", ["llama3_gqa4_bias", "qwen3_gqa8_headdim"])
def test_pallas_decode_kernel_equals_the_xla_path(checkpoints, kind, rng):
    """JAX's Pallas GPU decode-attention kernel (interpreted on CPU) against our XLA attention,
    through whole cached greedy generations with left padding."""
    model = models.from_pretrained(checkpoints[kind][0])
    pallas = models.with_config(model, decode_kernel="pallas")
    ids, mask = left_padded(rng, t=10)
    ids, mask = np.concatenate([ids, ids[:, :6]], 1), np.concatenate([mask, np.ones((3, 6), mask.dtype)], 1)
    kw = dict(max_new_tokens=16, greedy=True, eos_token_id=-1, pad_token_id=0)  # P + N = 32: 16-wide blocks
    a, _ = models.generate(model, ids, mask, sampling.Sampling(**kw))
    b, _ = models.generate(pallas, ids, mask, sampling.Sampling(**kw))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from dpkd_jax.models import components as C
    assert C.pallas_decode_ok(pallas.config, 1, 32) and not C.pallas_decode_ok(pallas.config, 1, 30)


def test_remat_policies_give_the_same_loss_and_gradients(checkpoints, rng):
    model = models.from_pretrained(checkpoints["llama3_gqa4_bias"][0])
    ids, mask = left_padded(rng)

    def loss(decoder, p):
        return jnp.mean(jax.nn.log_softmax(decoder(p, ids, models.positions_from_mask(mask), mask)[0]))
    decoder, params = models.split(model)
    base = jax.value_and_grad(lambda p: loss(decoder, p))(params)
    for policy in ("full", "dots"):
        other = models.split(models.with_config(model, remat=policy))[0]
        got = jax.value_and_grad(lambda p: loss(other, p))(params)
        np.testing.assert_allclose(got[0], base[0], rtol=1e-6)
        for k in base[1]:
            np.testing.assert_allclose(got[1][k], base[1][k], rtol=1e-5, atol=1e-7, err_msg=f"{policy} {k}")


def test_init_draws_equal_a_per_shape_normal_draw(monkeypatch):
    """``components.normal`` samples flat at a power-of-two size (one compile per size, not per
    shape); the numbers are jax.random.normal's for the shape, bit for bit."""
    from dpkd_jax.models import components
    key = jax.random.PRNGKey(7)
    for shape, std in [((384, 128), 0.02), ((4, 128, 512), 0.0125), ((3,), 1.0), ((), 0.5), ((7, 9, 11), 0.02)]:
        want = np.asarray(std * jax.random.normal(key, shape))
        got = np.asarray(components.normal(key, shape, std))
        assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want), shape
    monkeypatch.setattr(components, "_FLAT_MAX", 100)   # past it: drawn at its own shape, the same numbers
    assert np.array_equal(components.normal(key, (16, 9), 0.02), 0.02 * jax.random.normal(key, (16, 9)))
    monkeypatch.undo()
    # a whole model: the same params as drawing every matrix at its own shape
    cfg = gpt2.tiny_config(vocab_size=40, max_positions=12, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    _, params = models.init(cfg, 3)
    monkeypatch.setattr(components, "normal", lambda k, shape, std: std * jax.random.normal(k, shape))
    _, per_shape = models.init(cfg, 3)
    assert params.keys() == per_shape.keys()
    assert all(np.array_equal(params[k], per_shape[k]) for k in params)
    assert 0.01 < float(np.std(params["embed/tokens"])) < 0.03   # normal(0, 0.02), not zeros


@pytest.mark.parametrize("n_in", [1, 2])
def test_flat_contraction_equals_tensordot_with_its_gradients(n_in, rng):
    """``components.contract`` merges the leading axes into one 2-D matmul on XLA:CPU; its values and
    gradients equal the tensordot it replaces (q ``[D] -> [H, K]`` is n_in=1, o ``[H, K] -> [D]`` is 2)."""
    from dpkd_jax.models.components import contract
    ins, outs = ((6,), (3, 5)) if n_in == 1 else ((3, 5), (6,))
    x = jnp.asarray(rng.normal(size=(2, 7, *ins)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*ins, *outs)), jnp.float32)
    f = lambda flat: lambda x, w: jnp.sum(jnp.sin(contract(x, w, n_in, flat)))
    flat, plain = contract(x, w, n_in, True), contract(x, w, n_in, False)
    assert flat.shape == plain.shape == (2, 7, *outs)
    np.testing.assert_allclose(flat, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(f(True), (0, 1))(x, w), jax.grad(f(False), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_contraction_merges_axes_on_cpu_only_without_a_context_axis():
    """By default the 2-D form is XLA:CPU's; a ``context`` axis keeps ``[B, T]`` apart (merging a data-sharded B
    with a context-sharded T would reshard)."""
    from jax.sharding import AbstractMesh
    from dpkd_jax.models.components import contract
    x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    merged = lambda: "reshape" in str(jax.make_jaxpr(lambda: contract(x, w, 1))())
    assert merged()
    with jax.sharding.use_abstract_mesh(AbstractMesh((2,), ("data",))):
        assert merged()
    with jax.sharding.use_abstract_mesh(AbstractMesh((2, 2), ("data", "context"))):
        assert not merged()
