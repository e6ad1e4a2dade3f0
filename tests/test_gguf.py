"""GGUF files written here with the gguf package's writer (F16, Q8_0, Q4_0 tensors, a
Llama with GQA and llama.cpp's q/k row permutation) load with the same logits as
transformers' GGUF reader; the convert tool writes an HF folder transformers loads."""

import json
import os

import gguf
import numpy as np
import pytest
import torch

from conftest import hf_family_model
from dpkd_jax import models
from dpkd_jax.tools import convert

H, G, D, F, L, V = 4, 2, 64, 128, 2, 96  # row lengths are multiples of the 32-wide quant blocks


def _permute(w, heads):
    """llama.cpp's converter: rows [H*K, D] -> reshape(H, 2, K/2, D).swapaxes(1, 2)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, qtype, tokenizer_dir):
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(G)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(D // H)
    tok = json.load(open(os.path.join(tokenizer_dir, "tokenizer.json")))
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [f"<unused{i}>" for i in range(V - len(vocab))]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
           "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
           "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
           "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
           "mlp.down_proj.weight": "ffn_down.weight"}
    for hf, a in sd.items():
        if hf.startswith("model.layers."):
            _, _, i, rest = hf.split(".", 3)
            name = f"blk.{i}.{per[rest]}"
            if rest == "self_attn.q_proj.weight":
                a = _permute(a, H)
            if rest == "self_attn.k_proj.weight":
                a = _permute(a, G)
        else:
            name = names[hf]
        if a.ndim == 1:
            w.add_tensor(name, a.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a.astype(np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def llama_ref(checkpoints):
    return hf_family_model("llama", hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                           num_key_value_heads=G, vocab_size=V), checkpoints["llama"][0]


def _logits_hf(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0"])
def test_gguf_loads_like_transformers_reader(llama_ref, qtype, tmp_path, rng):
    from transformers import AutoModelForCausalLM
    ref, tok_dir = llama_ref
    path = str(tmp_path / f"tiny-{qtype}.gguf")
    write_gguf(path, ref, gguf.GGMLQuantizationType[qtype], tok_dir)
    ids = rng.integers(1, 80, (2, 11))
    ours = models.from_pretrained(path)
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=os.path.basename(path),
                                                  dtype=torch.float32).eval()
    np.testing.assert_allclose(np.asarray(ours(ids)), _logits_hf(theirs, ids), atol=2e-5)
    # The quantization really happened: Q4_0 is visibly off the float32 original, F16 is not.
    err = np.abs(np.asarray(ours(ids)) - _logits_hf(ref, ids)).max()
    assert (err < 1e-2) if qtype == "F16" else (err > 1e-4)
    cfg = ours.config
    assert (cfg.model_type, cfg.n_heads, cfg.kv_heads, cfg.n_layers, cfg.tied_head) == ("llama", H, G, L, False)


def test_convert_writes_a_folder_transformers_loads(llama_ref, tmp_path, rng):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ref, tok_dir = llama_ref
    path = str(tmp_path / "tiny.gguf")
    write_gguf(path, ref, gguf.GGMLQuantizationType.Q8_0, tok_dir)
    out = str(tmp_path / "hf")
    assert convert.main([path, out]) == 0
    ids = rng.integers(1, 80, (2, 9))
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_logits_hf(back, ids), np.asarray(models.from_pretrained(path)(ids)), atol=2e-5)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == models.load_tokenizer(path).get_vocab()


def test_bad_gguf_files_are_named(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="broken.gguf: not a readable GGUF file"):
        models.from_pretrained(str(bad))
    assert convert.main([str(bad), str(tmp_path / "out")]) == 2
    assert "broken.gguf: not a readable GGUF file" in capsys.readouterr().err
