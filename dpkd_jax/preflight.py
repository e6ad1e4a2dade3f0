"""``--config.mode=check``: validate everything a run needs, without loading weights or
training, in seconds on a CPU, and print a summary. The checks raise the same errors a
real run would (each an InputError naming its culprit), so a launch script can run this
on one host before paying start-up on all of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from types import SimpleNamespace

import jax
import numpy as np

from . import assets, checkpoint, hub, memory, models, objectives, sharding, specs, teachers
from . import data as data_lib
from .demo import demo_file
from .errors import InputError
from .experiment.runner import PROMPTS_DIR
from .models import gpt2, hf
from .model_options import model_options
from .pipeline import check_teacher_tokenizer, data_options
from .pruning import parse_layers
from .run import resolved
from .runspec import RunSpec


def _model_summary(role, path, cfg):
    """One line: architecture, parameter count and bytes (with the run's dtype, int8 or LoRA)."""
    info = models.param_table(cfg)
    n = sum(int(np.prod(i.shape)) for i in info.values() if i.kind not in ("lora_a", "lora_b", "quant_scale"))
    size = sum(int(np.prod(i.shape)) * np.dtype(i.dtype).itemsize for i in info.values())
    extra = f", quantization {cfg.quantize}" if role == "teacher" else ""
    if cfg.lora.rank:
        trained = sum(int(np.prod(i.shape)) for i in info.values() if i.trainable)
        extra += f", LoRA rank {cfg.lora.rank} on {','.join(cfg.lora.targets)}: {trained / 1e6:.2f}M trained"
    return (f"{role}: {path} ({cfg.model_type}, {cfg.n_layers} layers, width {cfg.d_model}, {cfg.n_heads} heads / "
            f"{cfg.kv_heads} KV heads, vocab {cfg.vocab_size}, {n / 1e6:.1f}M params, "
            f"{size / 2**30:.3f} GiB as {cfg.param_dtype}{extra})")


def check_weights(path, allow_pickle=False):
    """The weight files' headers and tensor names (no tensor is read)."""
    cfg = models.load_config(path)
    fam = models.family(cfg.model_type)
    table = models.param_table(cfg)  # base weights: what the files must hold
    rows = [r for r in fam.weights(cfg) if r.ours in table]
    reader = hf._Reader(path, allow_pickle=allow_pickle)
    hf._check_names(path, cfg, rows, set(reader.files), fam.IGNORED)
    for fn in sorted({f for f in reader.files.values() if f and f.endswith(".safetensors")}):
        hf._safe_open(fn)  # a truncated file fails its header check here
    return cfg


def _local_path(role, path, say):
    """A model path as a local folder or file, or None (said why) when an asset or hub id is not cached."""
    if path.startswith(assets.PREFIX):
        name = path[len(assets.PREFIX):]
        if not os.path.isdir(assets.path_of(name)):
            say(f"{role}: {path} is not cached yet; the run fetches it (python -m dpkd_jax.assets {name})")
            return None
        return assets.resolve(path)
    hid = hub.parse(path)
    if hid is not None:
        say(f"{role}: hub id {hub.describe(path)}")
        local = hub.cached(hid)
        if local is None:
            say(f"{role}: {path} is not cached yet; the run fetches it")
        return local
    return path


def _check_models(cfg: RunSpec, say):
    """{role: local path} of every model (each teacher of ``teacher.paths``), headers read and
    summarised; a model not fetched yet (the run fetches it) is left out, and the checks go on without it."""
    roles = {f"teacher {n}": p for n, p in cfg.teacher.paths.items()} or {"teacher": cfg.teacher.path}
    # the pruned experiment's student is the teacher with layers removed; the cross one names its own
    if not cfg.experiment.enabled or cfg.experiment.cross:
        roles["student"] = cfg.student.path
    paths = {}
    for role, where in roles.items():
        path = _local_path(role, where, say)
        if path is None:
            continue
        paths[role] = path
        check_weights(path, cfg.model.allow_pickle)
        kind = "student" if role == "student" else "teacher"
        say(_model_summary(role, path, models.load_config(path, **model_options(cfg, kind, 0))))
    return paths


def _check_demo(cfg, say):
    """The demo builds its tokenizer and models: its data, its layers and its work dir."""
    d = cfg.demo
    for name, path in (("train", cfg.data.train or demo_file("train.jsonl")), ("eval", demo_file("eval.jsonl"))):
        report = data_lib.Report(path)
        rows = data_lib.read_jsonl(path, report)
        say(f"demo {name} data: {len(rows)} rows from {path} (malformed {report.malformed})")
    n_layers = gpt2.tiny_config(vocab_size=8, **dataclasses.asdict(d.teacher)).n_layers
    keep = parse_layers(d.keep_layers, n_layers, "config.demo.keep_layers")
    say(f"demo models: a {n_layers}-layer GPT-2-shaped teacher trained here, its student keeping {len(keep)} layers; "
        f"methods {', '.join(d.methods)} x seeds {tuple(d.seeds)}")
    checkpoint.check_workdir(cfg.workdir)
    say(f"work dir: {cfg.workdir} is writable")
    say("ok")


def _check_experiment(cfg, teacher_path, say):
    """What the experiment builds: its student (the teacher's kept layers) and its prompt sets.
    Returns the student's path for the checks that follow (the teacher's: one tokenizer)."""
    e = cfg.experiment
    if not e.cross:
        n = models.load_config(teacher_path).n_layers
        keep = parse_layers(e.keep_layers, n, "config.experiment.keep_layers")
        say(f"student: built by the experiment from the teacher, keeping {len(keep)} of its {n} layers "
            f"({e.keep_layers})")
    sizes = {}
    for split in ("train", "eval"):
        path = os.path.join(e.prompts or PROMPTS_DIR, f"{split}.jsonl")
        sizes[split] = len(data_lib.read_jsonl(path, data_lib.Report(path)))
    if sizes["train"] < e.n_train + e.n_dev or sizes["eval"] < e.n_eval:
        raise InputError(f"config.experiment: n_train + n_dev = {e.n_train + e.n_dev} and n_eval = {e.n_eval} need "
                         f"that many prompts; the set has {sizes['train']} and {sizes['eval']}")
    say(f"experiment prompts: {e.n_train} train / {e.n_dev} dev of {sizes['train']}, {e.n_eval} eval of "
        f"{sizes['eval']}; methods {', '.join(e.methods)}, seeds {tuple(e.seeds)}")
    return teacher_path


def _check_vocabularies(cfg, paths, tokenizer, say):
    if cfg.teacher.paths:
        for role, path in paths.items():
            if role != "student":
                vocab = check_teacher_tokenizer(role.split()[1], path, paths["student"], tokenizer)
        say(f"vocabulary: shared by the student and {len(paths) - 1} teachers, {vocab} tokens")
        return vocab
    cross_ok = objectives.build(cfg.method, cfg.loss).cross_tokenizer
    vocab, t_vocab, t_tok = models.vocabularies(paths["teacher"], paths["student"], cross_ok=cross_ok,
                                                cross_methods=objectives.CROSS_METHODS, student_tok=tokenizer)
    say(f"vocabulary: shared, {vocab} tokens" if t_tok is None else
        f"vocabularies differ (student {vocab}, teacher {t_vocab} tokens): {cfg.method} runs across tokenizers")
    return vocab


def _check_data(cfg, tokenizer, say):
    """The training rows (and each teacher's count), the eval sets and the pre-training text.
    Returns the run's training rows (the dev split taken out), or None without training data."""
    field = cfg.data.teacher_field
    if cfg.mode != "generate" and cfg.data.train:
        full, report = data_lib.load_instructions(cfg.data.train, tokenizer, **data_options(cfg), log=False,
                                                  fields=(field,) if field else ())
        say(f"train data: {report}; {len(full) - min(cfg.data.dev_num, len(full))} train / "
            f"{min(cfg.data.dev_num, len(full))} dev")
        if field:
            routing = teachers.route(full, field, tuple(cfg.teacher.paths), cfg.data.train)
            say(f"teachers by {field!r}: {routing.describe()} (train and dev rows)")
    has_train = cfg.mode != "generate" and cfg.data.train and cfg.data.dev_num < len(full)
    train = data_lib.split_dev(full, cfg.data.dev_num, cfg.seed)[0] if has_train else None
    for name, path in cfg.data.eval_sets.items():
        _, report = data_lib.load_instructions(path, tokenizer, **data_options(cfg), log=False)
        say(f"eval set {name}: {report}")
    if cfg.data.pretrain:
        rows = data_lib.load_packed(cfg.data.pretrain, tokenizer, cfg.data.lm_seq_len)
        say(f"pre-training text: {len(rows)} rows of {cfg.data.lm_seq_len} tokens")
    return train


def _check_memory(cfg, paths, mesh, n, run_inputs, say):
    """The run's start-up memory check (``memory.fit``), on the run's own step: the same line and error."""
    if n != jax.device_count():
        say(f"memory: not checked on this host's {jax.device_count()} device(s) for a run on {n}; the run checks it at "
            "start-up (python -m dpkd_jax.tools.plan --topology=... compiles it for a TPU slice here)")
        return
    if cfg.experiment.enabled:
        return
    c = cfg.replace({"teacher.path": next(iter(paths.values())), "student.path": paths["student"]})
    vocab, train = run_inputs
    micro = memory.fit(c, cfg.mesh.sizes(), math.prod(mesh.shape[a] for a in sharding.BATCH),
                       {"vocab": vocab, "data": train})
    say("memory: the train step fits" + (f" with train.micro_batch={micro}" if micro else ""))


def _check_feature(cfg, paths, say):
    """``loss.feature``'s layers against the models' depths, as the run binds them (``Feature.bind_all``)."""
    feature = specs.Feature.of(cfg.loss.feature)
    if feature is None:
        return
    teachers = [models.load_config(p) for role, p in paths.items() if role.startswith("teacher")]
    feature.bind_all(models.load_config(paths["student"]), teachers)
    say(f"feature: layer pairs {feature.pairs} exist in the student and the teacher")


def _check_mesh(cfg: RunSpec, paths, say):
    """The mesh for the run's device count (``check.devices`` on one host of many): the batch and every fetched
    model's heads divide. Returns (device count, mesh stand-in)."""
    n = cfg.check_devices()
    mesh = SimpleNamespace(shape=sharding.mesh_shape(cfg.mesh.as_dict(), n))  # arithmetic only: no devices needed
    sharding.check_batch(cfg.train.batch_size, mesh)
    for role, path in paths.items():
        sharding.check_heads(models.load_config(path).n_heads, mesh, role)
    say(f"mesh: {mesh.shape} over {n} devices; batch and heads divide")
    return n, mesh


def _check_workdir(cfg: RunSpec, say):
    checkpoint.check_workdir(cfg.workdir)
    found = checkpoint.find_checkpoints(cfg.workdir)
    what = "none" if not found else ", ".join(f"{os.path.relpath(d, cfg.workdir)} at step {s}" for d, s in found)
    action = "" if not found else (" (the run resumes from them)" if cfg.resume else
                                   " (overwrite=True clears them)" if cfg.overwrite else
                                   " (resume=False: the run would stop; pass overwrite=True or another workdir)")
    say(f"work dir: {cfg.workdir} is writable; checkpoints: {what}{action}")


def preflight(cfg: RunSpec, out=print):
    """Run the checks; print one line each. Returns the summary lines. A model that is not fetched yet is said;
    the checks that do not read it (the student, the data, the mesh, the work dir) still run."""
    lines = []
    say = lambda s: (lines.append(s), out(f"check: {s}"))
    say(f"config: method {cfg.method}, {cfg.train.steps} steps, batch {cfg.train.batch_size}, mode check")
    if cfg.demo.enabled:
        _check_demo(cfg, say)
        return lines
    paths = _check_models(cfg, say)
    if cfg.experiment.enabled and "teacher" in paths:
        paths.setdefault("student", _check_experiment(cfg, paths["teacher"], say))
    missing = "student" not in paths or sum(r.startswith("teacher") for r in paths) < max(1, len(cfg.teacher.paths))
    train = vocab = None
    if "student" in paths:
        tokenizer = models.load_tokenizer(paths["student"])
        if not missing:
            _check_feature(cfg, paths, say)
            vocab = _check_vocabularies(cfg, paths, tokenizer, say)
        cfg = resolved(cfg, tokenizer)
        train = _check_data(cfg, tokenizer, say)
    n, mesh = _check_mesh(cfg, paths, say)
    _check_workdir(cfg, say)
    if missing:
        say("models not fetched yet: the vocabularies, the feature layers and the memory are checked by the run")
        return lines
    if cfg.check.memory:
        _check_memory(cfg, paths, mesh, n, (vocab, train), say)
    say("ok")
    return lines
