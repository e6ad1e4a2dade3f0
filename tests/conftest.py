"""Shared fixtures: tiny random Hugging Face checkpoints written with save_pretrained."""

import json
import os
import tempfile
import textwrap

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The command line's persistent compilation cache (config.compile_cache) off: the suite writes nothing under
# ~/.cache, and a CLI test compiles what it tests (the cache's own test sets a directory of its own).
os.environ["DPKD_COMPILE_CACHE"] = ""
# The suite compiles hundreds of small steps, where XLA:CPU's code generation is most of the time:
# * LLVM level 0 halves a step test's wall time (66 s -> 27 s for test_train's dpkd case);
# * the classic loop emitters instead of the MLIR fusion emitters (xla_cpu_use_fusion_emitters=false) take
#   another ~40% off: `pytest -n 0 tests/test_train.py -k "lora and (dpkd or seqkd or kd)"`, 6 tests, 88/80 s ->
#   54/47 s (two runs each, interleaved, CPU box).
# Both change code generation only: the HLO passes and float32 semantics stay, and the compiled-memory tests still
# pass under them. Subprocesses (the CLI tests) inherit them. Benchmarks and real runs keep XLA's defaults.


_FAST_COMPILE = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}


def _jaxlib_knows(flag):
    """XLA aborts on an unknown flag, and flags come and go: look for the name in jaxlib's library."""
    import importlib.util
    import mmap
    lib = os.path.join(importlib.util.find_spec("jaxlib").submodule_search_locations[0], "libjax_common.so")
    if not os.path.isfile(lib):
        return False
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(flag.encode()) >= 0


def _fast_compile_flags():
    """``XLA_FLAGS`` with the flags above added (LLVM's level always; the emitters where jaxlib knows the flag)."""
    have = os.environ.get("XLA_FLAGS", "")
    add = [f"--{k}={v}" for k, v in _FAST_COMPILE.items()
           if k not in have and (k == "xla_backend_optimization_level" or _jaxlib_knows(k))]
    return " ".join([have, *add]).strip()


os.environ["XLA_FLAGS"] = _fast_compile_flags()

# trackio (log.trackers) writes its database under TRACKIO_DIR, read when it is first imported: a test run's own
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="trackio-"))

import jax
import numpy as np
import pytest

from dpkd_jax import models
from dpkd_jax.config import default_config
from dpkd_jax.data import format_prompt, load_instructions
from dpkd_jax.models import gpt2, llama

VOCAB = 96


def make_tokenizer(path, vocab_size=VOCAB, corpus=None):
    """A byte-level BPE tokenizer trained on a few lines, saved as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60] if vocab_size < 128 else pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus or ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


_LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8}  # tests run past 8 tokens
_BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
# Tiny random configs of every family, together exercising each option: GQA ratios 1, 3, 4, 8
# and MQA; RoPE default/linear/llama3 past the original context; qkv and MLP biases; q/k norms;
# explicit head_dim; tied and untied heads; Gemma soft-caps, (1 + w) norms, sandwich norms,
# sliding windows (4) shorter than the test sequences (10-12), local and global RoPE.
FAMILY_VARIANTS = {
    "llama": ("Llama", dict(num_key_value_heads=4)),
    "llama3_gqa4_bias": ("Llama", dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                                       rope_parameters=_LLAMA3, attention_bias=True, mlp_bias=True,
                                       tie_word_embeddings=True)),
    "llama_mqa_linear": ("Llama", dict(num_key_value_heads=1, rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})),
    "mistral_gqa3_window": ("Mistral", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                            sliding_window=4)),
    "qwen2": ("Qwen2", dict()),
    "qwen3_gqa8_headdim": ("Qwen3", dict(num_attention_heads=8, num_key_value_heads=1, head_dim=16)),
    "gemma2": ("Gemma2", dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                              final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3", dict(num_key_value_heads=1, head_dim=8, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                  "rope_theta": 1e6},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}


def hf_family_model(kind, **over):
    import torch
    import transformers
    name, kw = FAMILY_VARIANTS[kind]
    config_cls = getattr(transformers, "Gemma3TextConfig" if name == "Gemma3" else f"{name}Config")
    model_cls = getattr(transformers, f"{name}ForCausalLM")
    torch.manual_seed(0)
    return _spread(model_cls(config_cls(**{**_BASE, **kw, **over})))


def _spread(m):
    import torch
    # spread the random norm/bias params so parity checks exercise them
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def hf_model(kind, **over):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM
    if kind in FAMILY_VARIANTS:
        return hf_family_model(kind, **over)
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
        cfg.update(over)
        m = GPT2LMHeadModel(GPT2Config(**cfg))
    else:
        cfg = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64,
                   max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        variants = {"opt": {}, "opt_post_ln": {"do_layer_norm_before": False},
                    "opt_proj": {"word_embed_proj_dim": 16}}
        cfg.update(variants[kind])
        cfg.update(over)
        m = OPTForCausalLM(OPTConfig(**cfg))
    return _spread(m)


MODEL_KINDS = ["gpt2", "opt", "opt_post_ln", "opt_proj", *FAMILY_VARIANTS]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{kind: (folder, torch model)} for every supported variant."""
    out = {}
    tok = make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))
    for kind in MODEL_KINDS:
        path = str(tmp_path_factory.mktemp(kind))
        m = hf_model(kind)
        m.save_pretrained(path)
        tok.save_pretrained(path)  # one tokenizer shared by all: BPE training is not bit-reproducible
        out[kind] = (path, m)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)


DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dpkd_jax", "data", "demo")


@pytest.fixture(scope="session")
def hf_pair(tmp_path_factory):
    """Tiny GPT-2 teacher and student folders sharing a tokenizer trained on the demo data."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from dpkd_jax.demo import train_tokenizer
    root = tmp_path_factory.mktemp("hf_pair")
    tok = train_tokenizer(str(root / "tok"), 384, [os.path.join(DEMO, "train.jsonl")])
    out = []
    for name, (d, L) in {"teacher": (32, 2), "student": (16, 1)}.items():
        torch.manual_seed(len(name))
        m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=L, n_head=2, n_positions=160,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
        m.save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        out.append(str(root / name))
    rows = open(os.path.join(DEMO, "train.jsonl")).readlines()[:200]
    (root / "train.jsonl").write_text("".join(rows))
    return out[0], out[1], str(root / "train.jsonl")


# ------------------------------------------------ tiny training setups (pipeline, objectives, trainer)

PIPE_VOCAB = 700  # enough merges that the long template becomes ~30-50 tokens


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    corpus = ([format_prompt("Add the numbers.", "1 and 2") + "3", format_prompt("Say hi.") + "hi there"] * 30
              + [f"Say {i}. {i}" for i in range(30)])
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")), vocab_size=PIPE_VOCAB, corpus=corpus)


def load_config(name):
    """A shipped config as ``--config=configs/<name>`` loads it: ``"demo.py"`` or ``"smollm2_pruned.py:cpu"``."""
    import importlib.util
    file, _, arg = name.partition(":")
    spec = importlib.util.spec_from_file_location(file.removesuffix(".py"), os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def tiny_setup(tmp_path, tok, n=24, varied=False):
    """A config, ``n`` short examples (``varied``: prompts and responses of several lengths) and a tiny GPT-2
    teacher (2 x 32) and student (1 x 16) on them."""
    rows = [{"instruction": "Say hi.", "response": "hi there"},
            {"instruction": "Add the numbers.", "context": "1 and 2", "response": "3"}] * (n // 2)
    if varied:
        rows = [{"instruction": "Say " + " ".join(["hi"] * (1 + i % 3)) + ".",
                 "response": " ".join(["hi there"] * (1 + i % 5))} for i in range(n)]
    cfg = default_config()
    cfg.data.max_prompt_length, cfg.data.max_length = 56, 64
    cfg.gen.max_new_tokens = 6
    cfg.gen.eos_token_id, cfg.gen.pad_token_id = tok.eos_token_id, tok.eos_token_id
    cfg.train.batch_size, cfg.train.log_every, cfg.train.save_every = 4, 1, 2
    cfg.train.lr, cfg.train.steps, cfg.train.schedule = 3e-3, 3, "constant"
    for name, block in cfg.loss.items():
        if name != "feature":
            block.lm_coef = 0.0
    data, _ = load_instructions(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_prompt_length=56,
                                  max_length=64, pad_token_id=tok.eos_token_id)
    mk = lambda d, L, seed: (lambda c: models.init(c, seed))(
        gpt2.tiny_config(vocab_size=PIPE_VOCAB, d_model=d, n_layers=L, n_heads=2, d_ff=2 * d, max_positions=72))
    return cfg, data, mk(32, 2, 0), mk(16, 1, 1)


def lora_setup(tmp_path, tok):
    """tiny_setup's config, data and teacher with a Llama-shaped LoRA student (rank 4 on q, v, o, up, down)."""
    cfg, data, teacher, _ = tiny_setup(tmp_path, tok)
    arch = llama.tiny_config(vocab_size=PIPE_VOCAB, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                             max_positions=72, lora=models.LoRA(rank=4, alpha=8.0, targets=("q", "v", "o", "up",
                                                                                           "down")))
    return cfg, data, teacher, models.init(arch, 1)


def write_config(path, teacher, student, train, workdir, steps=2, **over):
    """A config file for CLI runs on the ``hf_pair`` models; ``over``: ``{"train.lr": 1e-3, ...}``."""
    lines = "\n".join(f"    c.{k} = {v!r}" for k, v in over.items())
    path.write_text(textwrap.dedent(f"""
        from dpkd_jax.config import default_config
        def get_config():
            c = default_config()
            c.teacher.path, c.student.path, c.data.train = {teacher!r}, {student!r}, {train!r}
            c.teacher.dtype, c.student.compute_dtype = "float32", "float32"
            c.workdir = {workdir!r}
            c.data.dev_num, c.data.max_prompt_length, c.data.max_length = 20, 96, 128
            c.data.pretrain, c.data.lm_seq_len = {os.path.join(DEMO, "pretrain.txt")!r}, 32
            c.train.steps, c.train.batch_size, c.train.save_every, c.train.log_every = {steps}, 4, 4, 2
            c.train.lr = 1e-3
            c.gen.max_new_tokens = 6
            c.eval.max_new_tokens, c.eval.seeds, c.eval.max_examples, c.eval.batch_size = 6, (1,), 4, 4
            c.eval.eval_teacher = False
        """) + lines + "\n    return c\n")
    return str(path)


def spec_of(cfg):
    """The typed run spec of a test's ConfigDict (as the entry point builds it; a spec passes through)."""
    from dpkd_jax.runspec import RunSpec
    return cfg if isinstance(cfg, RunSpec) else RunSpec.of(cfg)


def train(cfg, student, params, teacher, teacher_params, data, lm_rows, workdir, **kw):
    """``loop.train_loop`` on a :class:`run.Run` of these pieces, with ``cfg`` as the stage's config;
    ``kw``: the run's ``tokenizer``/``teacher_tokenizer``, and train_loop's own keywords."""
    from dpkd_jax import run as run_lib, sharding
    from dpkd_jax.loop import train_loop
    c = run_lib.stage_config(spec_of(cfg), cfg.method, workdir)
    run = run_lib.Run(c, kw.pop("tokenizer", None), sharding.Placement(c.mesh.as_dict()), (teacher, teacher_params), data,
                      lm_rows=lm_rows, teacher_tokenizer=kw.pop("teacher_tokenizer", None))
    return train_loop(run, c, student, params, **kw)


def against_gguf_reader(path, ids):
    """(our model from ``path``, transformers' model from its ``model.gguf``, max |Δ logit| on ``ids``)."""
    import torch
    from transformers import AutoModelForCausalLM
    ours = models.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, gguf_file="model.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    return ours, ref, float(np.abs(np.asarray(ours(ids)) - want).max())


def greedy_text(model, tok, ids, n):
    """Our greedy continuation of ``ids`` ``[1, P]``, ``n`` new tokens, decoded."""
    import jax.numpy as jnp
    from dpkd_jax import sampling
    toks, mask = models.generate(model, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)),
                                 sampling.Sampling(max_new_tokens=n, greedy=True, eos_token_id=tok.eos_token_id,
                                                   pad_token_id=tok.pad_token_id))
    return tok.decode(np.asarray(toks)[0][np.asarray(mask)[0] == 1], skip_special_tokens=True)


@pytest.fixture(autouse=True)
def fresh_compiled_steps():
    """Each test compiles its own steps: the process-wide cache (one compiled step per method across
    seeds) must not carry executables from one test's shapes and shardings into another's checks."""
    from dpkd_jax import train
    train._compiled.cache_clear()
    train._state_initializer.cache_clear()
    yield
    _release_executables_near_the_map_limit()


def _mapped_regions() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def _map_limit() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


_MAP_LIMIT = _map_limit()


def _release_executables_near_the_map_limit():
    """Every XLA:CPU executable maps its code in several regions, and a worker that has run ~500 tests holds
    thousands of executables: the worker that ran test_models.py and test_sampling.py reached 51,717 of Linux's
    65,530 (vm.max_map_count). Past the limit, the next compile's mmap fails and XLA segfaults (CI crashed so,
    at 85-98% of the suite). Past a third of the limit, drop JAX's compiled executables (tests recompile what
    they use next)."""
    if _MAP_LIMIT and _mapped_regions() > _MAP_LIMIT // 3:
        import gc
        jax.clear_caches()
        gc.collect()


def scalars(tb_dir, tag):
    """A tag's values in the TensorBoard event files (TFRecord framing: length, its CRC, the record, its CRC)."""
    import glob
    import struct
    from tensorboardX.proto import event_pb2
    out = []
    for fn in glob.glob(os.path.join(str(tb_dir), "events.*")):
        data, i = open(fn, "rb").read(), 0
        while i < len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            out += [v.simple_value for v in event.summary.value if v.tag == tag]
            i += 16 + n
    return out
