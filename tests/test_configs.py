"""Every shipped config passes ``--config.mode=check``.

The paper configs name their models by hub id: here a hub cache laid out on disk holds tiny
stand-ins of each id (the right family, head counts that the config's mesh splits), and the data
paths point at a small file. A config meant for many devices is checked with
``--config.check.devices=N``, its mesh's fixed size."""

import math
import os
import subprocess
import sys

import pytest

from conftest import DEMO, hf_model, load_config, make_tokenizer, write_jsonl
from test_hub import lay_out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# hub id -> tiny stand-in (family kind, overrides): tensor=4 or 8 must divide the heads
WIDE = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=8)
STANDINS = {
    "MiniLLM/teacher-gpt2-1.5B": ("gpt2", {}), "MiniLLM/init-gpt2-120M": ("gpt2", {}),
    "MiniLLM/init-gpt2-340M": ("gpt2", {}), "facebook/opt-13b": ("opt", {}), "facebook/opt-1.3b": ("opt", {}),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2", WIDE), "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2", WIDE),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", WIDE), "meta-llama/Llama-3.2-1B-Instruct": ("llama", WIDE),
    "Qwen/Qwen3-8B": ("qwen3_gqa8_headdim", dict(max_position_embeddings=16384)),
    "Qwen/Qwen3-1.7B": ("qwen3_gqa8_headdim", dict(max_position_embeddings=16384)),
}
CONFIGS = ["demo.py", "gpt2_xl_to_base.py", "gpt2_xl_to_medium.py", "opt13b_to_1p3b.py", "qwen25_7b_to_1p5b.py",
           "llama31_8b_to_llama32_1b.py", "smollm2_pruned.py", "smollm2_pruned.py:cpu", "pair.py",
           "smollm2_to_gemma3.py:cpu", "qwen3_long_traces.py"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    tok = make_tokenizer(str(root / "tok"), vocab_size=300, corpus=[l for l in open(os.path.join(DEMO, "train.jsonl"))])
    tok.chat_template = CHAT
    for repo, (kind, over) in STANDINS.items():
        folder = root / "models" / repo.replace("/", "--")
        hf_model(kind, vocab_size=len(tok), **over).save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        lay_out(root / "hub", repo, folder)
    rows = [l for l in open(os.path.join(DEMO, "train.jsonl"))][:40]
    write_jsonl(root / "traces.jsonl", [{"prompt": f"Add {i} and 2.", "thinking": f"{i} plus 2.\n\nThat is {i + 2}.",
                                         "answer": str(i + 2)} for i in range(40)])
    return root / "hub", write_jsonl(root / "train.jsonl", [l.strip() for l in rows])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes_mode_check(name, hub_cache, tmp_path, monkeypatch):
    """In process, the same validate + preflight as ``--config.mode=check`` (the CLI path itself is
    run below and by tests/test_docs.py); a subprocess per config would cost an import each."""
    from dpkd_jax.config import validate
    from dpkd_jax.preflight import preflight
    hub, rows = hub_cache
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    cfg = load_config(name)
    cfg.mode, cfg.workdir = "check", str(tmp_path / "work")
    if not cfg.demo.enabled and not cfg.experiment.enabled:  # the paper configs: small data in place of theirs
        cfg.data.train, cfg.data.pretrain = rows, os.path.join(DEMO, "pretrain.txt")
        if cfg.data.format == "traces":
            cfg.data.train, cfg.data.pretrain = os.path.join(os.path.dirname(rows), "traces.jsonl"), ""
            cfg.data.dev_num = 8
        for k in cfg.data.eval_sets:
            cfg.data.eval_sets[k] = rows
    if name == "pair.py":  # your own pair: any two models (here the GPT-2 stand-ins)
        cfg.teacher.path, cfg.student.path = "MiniLLM/teacher-gpt2-1.5B", "MiniLLM/init-gpt2-120M"
    fixed = math.prod(v for v in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if v > 0)
    cfg.check.devices = fixed if fixed > 1 else 0
    lines = preflight(validate(cfg), out=lambda line: None)
    fetched_by_the_run = any("is not cached yet; the run fetches it" in l for l in lines)  # the SmolLM2 asset
    assert lines[-1] == "ok" or fetched_by_the_run, lines
    if fixed > 1:
        assert any(f"over {fixed} devices; batch and heads divide" in l for l in lines), lines
    if cfg.experiment.get("cross", False) and not fetched_by_the_run:  # two real models, two tokenizers
        assert any("vocabularies differ (student 262144, teacher 49152 tokens)" in l for l in lines), lines
    elif cfg.experiment.enabled and not fetched_by_the_run:
        assert any("built by the experiment from the teacher, keeping 20 of its 30 layers" in l for l in lines)


def test_a_pod_config_on_one_host_names_the_flag_that_checks_it(hub_cache):
    hub, rows = hub_cache
    out = subprocess.run([sys.executable, "-m", "dpkd_jax.main", "--config=configs/qwen25_7b_to_1p5b.py",
                          "--config.mode=check", f"--config.data.train={rows}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub)))
    assert out.returncode == 2 and "--config.check.devices=N" in out.stderr.strip().splitlines()[-1]
