"""The documentation stays true: every command block marked ``<!-- test: run -->`` in the README and
docs/ runs as written on tiny stand-in models, every ``<!-- test: check -->`` block (GPU or pod
commands) passes ``--config.mode=check``, the library example is a doctest, and the site builds
with ``mkdocs build --strict`` (a broken link or API reference fails it)."""

import doctest
import glob
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

import gguf
import pytest

from conftest import DEMO, hf_family_model, load_config
from test_configs import STANDINS, hub_cache  # noqa: F401 -- hub_cache: the hub stand-ins fixture
from test_gguf import write_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
BLOCK = re.compile(r"<!-- test: (run|check) -->\s*```bash\n(.*?)```", re.S)


def commands(text):
    """The block's commands: backslash continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def marked_blocks():
    out = []
    for page in PAGES:
        for i, m in enumerate(BLOCK.finditer(open(page).read())):
            out.append(pytest.param(m.group(1), commands(m.group(2)), id=f"{os.path.basename(page)}-{i}"))
    return out


def test_the_documented_commands_cover_the_tools():
    text = " ".join(" ".join(c) for _, c, in (p.values[:2] for p in marked_blocks()))
    for piece in ("dpkd_jax.main --help", "--config.mode=check", "--config.mode=generate", "--config.mode=eval",
                  "dpkd_jax.tools.plan", "--devices=1", "dpkd_jax.tools.prune", "dpkd_jax.tools.convert", "dpkd_jax.tools.lm_eval",
                  "dpkd_jax.assets --list"):
        assert piece in text, piece


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, hub_cache):
    """$TEACHER, $STUDENT (one tokenizer), $DATA (the demo's rows), $GGUF (a tiny Llama) and $WORK."""
    from transformers import GPT2Config, GPT2LMHeadModel
    import torch
    from dpkd_jax.demo import train_tokenizer
    root = tmp_path_factory.mktemp("docs")
    tok = train_tokenizer(str(root / "tok"), 384, [os.path.join(DEMO, "train.jsonl")])
    env = {}
    for name, (d, L) in {"TEACHER": (32, 2), "STUDENT": (16, 1)}.items():
        torch.manual_seed(len(name))
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=L, n_head=2, n_positions=600,
                                   bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
                        ).save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        env[name] = str(root / name)
    from test_gguf import D, F, G, H, L as LAYERS, V
    from conftest import make_tokenizer
    llama_tok = make_tokenizer(str(root / "llama_tok"))
    ref = hf_family_model("llama", hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
                          num_attention_heads=H, num_key_value_heads=G, vocab_size=V)
    write_gguf(str(root / "tiny.gguf"), ref, gguf.GGMLQuantizationType.Q8_0, str(root / "llama_tok"))
    del llama_tok
    (root / "work").mkdir()
    shutil.copy(os.path.join(DEMO, "pretrain.txt"), root / "work" / "owt.txt")
    hub, _ = hub_cache
    return dict(env, DATA=os.path.join(DEMO, "train.jsonl"), GGUF=str(root / "tiny.gguf"), WORK=str(root / "work"),
                HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub))


def for_check(cmd):
    """A GPU/pod command checked here: ``--config.mode=check`` over the config's devices, its eval
    sets pointed at the demo's rows (the paper configs name data this machine does not have)."""
    name = re.search(r"--config=configs/(\S+)", cmd).group(1)
    cfg = load_config(name)
    fixed = math.prod(v for v in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if v > 0)
    extra = [f"--config.data.eval_sets.{k}=$DATA" for k in cfg.data.eval_sets]
    if "--config.data.pretrain" not in cmd and cfg.data.pretrain:
        extra.append("--config.data.pretrain=$WORK/owt.txt")
    return " ".join([cmd, "--config.mode=check", f"--config.check.devices={fixed}", *extra])


@pytest.mark.parametrize("kind, cmds", marked_blocks())
def test_documented_block_runs(kind, cmds, stand_ins):
    env = dict(os.environ, **stand_ins)
    for cmd in cmds:
        cmd = for_check(cmd) if kind == "check" else cmd
        assert cmd.startswith("python "), cmd
        line = cmd.replace("python ", f"{shlex.quote(sys.executable)} ", 1)
        out = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{cmd}\n{out.stderr[-2000:]}"
        if "--config.mode=check" in cmd:
            assert out.stdout.strip().splitlines()[-1] == "check: ok", out.stdout[-1500:]


def test_the_library_example_is_a_working_doctest():
    result = doctest.testfile(os.path.join(ROOT, "docs", "library.md"), module_relative=False)
    assert result.attempted >= 10 and result.failed == 0


def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isfile(tmp_path / "site" / "api" / "index.html")
