"""The door: the default ConfigDict, and :func:`validate`, which turns a loaded ConfigDict into the typed
:class:`RunSpec` once and runs every cross-field check on it, top down.

Every ``configs/*.py`` starts from :func:`default_config` (the spec's fields, ``runspec.py``); ``--config.a.b=v``
overrides on the command line. A key that is not there is an error (ml_collections refuses unknown keys, and
``overrides.py`` says so in one line), so a typo cannot be silently ignored. Past this module nothing reads the
ConfigDict.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from . import data as data_lib
from . import hub, objectives, runspec, sharding, specs, trackers
from .assets import ASSETS
from .errors import InputError
from .models.config import ATTENTION_KERNELS
from .runspec import RunSpec


def default_config() -> ml_collections.ConfigDict:
    """Every field of :class:`runspec.RunSpec` at its default, typed as the spec types it."""
    return runspec.config_dict(RunSpec())


def paper_config(teacher_path, student_path, workdir):
    """The paper's Dolly setup and the reference code's DPKD hyperparameters (method.md);
    the paper configs set only their models, paths and what differs."""
    c = default_config()
    c.method = "dpkd"
    c.workdir = workdir
    c.teacher.path, c.teacher.dtype = teacher_path, "bfloat16"
    c.student.path, c.student.dtype, c.student.compute_dtype = student_path, "float32", "bfloat16"
    c.data.train = "data/dolly/train.jsonl"
    c.data.dev_num = 500
    c.data.eval_sets = {"dolly": "data/dolly/valid.jsonl", "self_inst": "data/self-inst/valid.jsonl",
                        "sinst": "data/sinst/valid.jsonl"}
    c.data.pretrain = "data/openwebtext/train.txt"
    c.data.max_prompt_length, c.data.max_length, c.data.lm_seq_len = 256, 512, 512
    c.train.steps, c.train.batch_size, c.train.lr, c.train.weight_decay = 5000, 8, 5e-4, 0.01
    c.train.grad_clip, c.train.schedule, c.train.eval_every, c.train.save_every = 1.0, "cosine", 500, 500
    c.loss.dpkd.kd_ratio, c.loss.dpkd.lm_coef, c.loss.dpkd.beta = 0.5, 0.5, 0.1
    c.gen.max_new_tokens, c.gen.temperature, c.gen.top_k, c.gen.top_p = 256, 1.0, 0, 1.0
    c.eval.seeds = (10, 20, 30, 40, 50)
    return c


def _fail(field, msg):
    raise InputError(f"config.{field}: {msg}")


def _check_context(c, context: int):
    """The context axis splits the teacher-forced forward's ``data.max_length`` slots in ``2 x context`` chunks
    (two per device, for the causal load balance of ``models/attention.py``)."""
    if context > 1 and c.data.max_length % (2 * context):
        _fail("mesh.context", f"{context} needs data.max_length to be a multiple of {2 * context} (two chunks of the "
                              f"sequence per device), got data.max_length={c.data.max_length}")


def validate(cfg: ml_collections.ConfigDict) -> RunSpec:
    """The run spec of a loaded config, checked: each field typed, then every cross-field check, top down; the
    first that fails stops the run in one line naming the field."""
    spec = RunSpec.of(cfg)
    check(spec)
    return spec


def check(c: RunSpec):
    """Every check a run makes before its first step, on the typed spec (``mode=check`` calls the same)."""
    fail = _fail
    objective = objectives.build(c.method, c.loss)  # unknown method or a bad field of its block: named
    _check_teacher_cache(c, objective)
    _check_feature(c, objective)
    _check_packing(c, objective)
    if c.mode not in ("train", "eval", "generate", "check"):
        fail("mode", f"must be train, eval, generate or check, got {c.mode!r}")
    if c.data.max_prompt_length >= c.data.max_length:
        fail("data.max_prompt_length", f"{c.data.max_prompt_length} must be < data.max_length={c.data.max_length}")
    for field, value, choices in (("format", c.data.format, ("instructions", "traces")),
                                  ("trace_loss", c.data.trace_loss, data_lib.traces.LOSSES)):
        if value not in choices:
            fail(f"data.{field}", f"must be one of {', '.join(choices)}, got {value!r}")
    for field, value in (("template", c.data.template), ("teacher_template", c.data.teacher_template)):
        if value not in data_lib.TEMPLATES and (field == "template" or value):
            fail(f"data.{field}", f"must be one of {', '.join(data_lib.TEMPLATES)}, got {value!r}")
    if c.teacher.quantize not in ("none", "int8"):
        fail("teacher.quantize", f"must be none or int8, got {c.teacher.quantize!r}")
    try:
        c.student.lora.model()
    except ValueError as e:
        fail("student.lora", str(e).removeprefix("lora: "))
    if c.gen.teacher_mode not in ("online", "offline"):
        fail("gen.teacher_mode", f"must be online or offline, got {c.gen.teacher_mode!r}")
    try:
        mesh = sharding.mesh_shape(c.mesh.as_dict(), c.check_devices())
    except ValueError as e:
        fail("mesh", str(e).removeprefix("config.mesh: "))
    dp = mesh["data"] * mesh["fsdp"]
    if c.train.batch_size % dp:
        fail("train.batch_size", f"{c.train.batch_size} is not divisible by the data-parallel size {dp} "
                                 f"(mesh data={mesh['data']} x fsdp={mesh['fsdp']})")
    _check_context(c, mesh["context"])
    _check_model(c.model)
    _check_memory(c, dp, objective)
    trackers.check(c.log.trackers)
    if c.train.final_lm_eval_tasks and c.mode in ("train", "check"):
        _check_lm_eval(c.train)
    if c.train.max_bad_steps < 1:
        fail("train.max_bad_steps", f"must be >= 1, got {c.train.max_bad_steps}")
    if c.train.steps < 1:
        fail("train.steps", f"must be >= 1, got {c.train.steps}")
    p = c.log.profile_steps
    if p and not (len(p) == 2 and 1 <= p[0] <= p[1] <= c.train.steps):
        fail("log.profile_steps", f"must be (first, last) with 1 <= first <= last <= train.steps={c.train.steps}, "
                                  f"got {p!r}")
    if not c.demo.enabled:
        _check_model_paths(c)
    if c.experiment.enabled:
        _check_experiment(c.experiment)


def _check_model(m):
    """``config.model``: the KV cache, the attention kernel and its blocks, the loss chunk."""
    if m.kv_cache not in ("compute", "int8"):
        _fail("model.kv_cache", f"must be compute or int8, got {m.kv_cache!r}")
    if m.attention_kernel not in ATTENTION_KERNELS:
        _fail("model.attention_kernel", f"unknown kernel {m.attention_kernel!r}; choose one of "
                                        f"{', '.join(ATTENTION_KERNELS)}")
    for f, value in (("attention_block_q", m.attention_block_q), ("attention_block_k", m.attention_block_k)):
        if value < 0:
            _fail(f"model.{f}", f"must be >= 0 (0: the backend's default), got {value}")
    if m.loss_chunk_tokens < 0:
        _fail("model.loss_chunk_tokens", f"must be >= 0 (0: no chunking), got {m.loss_chunk_tokens}")


def _check_memory(c, dp, objective):
    """``train.micro_batch`` (an int >= 0 dividing the batch per device, or "auto") and ``check.memory_limit_gib``."""
    mb = c.train.micro_batch
    if not (mb == "auto" or (isinstance(mb, int) and not isinstance(mb, bool) and mb >= 0)):
        _fail("train.micro_batch", f"must be an int >= 0 (0: the whole batch) or 'auto', got {mb!r}")
    if mb != "auto":
        specs.micro_batches(mb, c.train.batch_size, dp)
    if mb and objective.own_update:
        _fail("train.micro_batch", f"{c.method} runs its own PPO update in loss.{c.method}.minibatches; leave "
                                   f"train.micro_batch at 0")
    if mb == "auto" and (c.demo.enabled or c.experiment.enabled or not c.check.memory):
        _fail("train.micro_batch", "'auto' is chosen from the compiled step of the models the config names "
                                   "(check.memory=True, not the demo or the experiment); give an int")
    limit = c.check.memory_limit_gib
    if limit is not None and not limit > 0:
        _fail("check.memory_limit_gib", f"must be > 0 GiB (unset: the device's own capacity), got {limit}")


def _check_lm_eval(t):
    """``train.final_lm_eval_tasks``: lm-eval is installed and knows every task (before any weights load)."""
    if importlib.util.find_spec("lm_eval") is None:  # an optional extra: imported only when asked for
        _fail("train.final_lm_eval_tasks", "lm-eval is not installed: pip install 'dpkd_jax[lm_eval]'")
    from .lm_eval_adapter import check_tasks
    check_tasks(t.final_lm_eval_tasks, t.final_lm_eval_include_path, field="config.train.final_lm_eval_tasks")


def _check_experiment(e):
    """The experiment measures at ``eval_points`` steps spread from 0 to ``steps``; its table reads the last."""
    if e.steps < 1:
        _fail("experiment.steps", f"must be >= 1, got {e.steps}")
    if e.eval_points < 2:
        _fail("experiment.eval_points", f"must be >= 2 (step 0 and the last step are two points), got {e.eval_points}")


def _check_teacher_cache(c, objective):
    """The offline teacher cache (top-k or sampled) serves only the methods whose formula allows it."""
    if c.teacher.cache not in ("topk", "sampled"):
        _fail("teacher.cache", f"must be topk or sampled, got {c.teacher.cache!r}")
    if c.teacher.topk and c.teacher.cache == "sampled":
        if not objective.sampled_cache:
            _fail("teacher.cache", f"the sampled (RS-KD) cache estimates forward KL only and serves kd; method "
                                   f"{c.method!r} needs the teacher or the top-k cache (teacher.cache=topk)")
    elif c.teacher.topk:
        if not objective.topk:
            _fail("teacher.topk", f"the sparse teacher cache serves {', '.join(objectives.TOPK_METHODS)}; method "
                                  f"{c.method!r} with these settings needs the teacher itself (set teacher.topk=0)")
        if objective.loss_temperature != 1.0:
            _fail("teacher.topk", f"the cache holds log-probs at temperature 1, but loss.{c.method}.temperature="
                                  f"{objective.loss_temperature}")


def _check_feature(c, objective):
    """``loss.feature`` parses, and the method's step has what it reads: the teacher's weights and
    the response it names (an own-update method, MiniLLM, has no place for it)."""
    feature = specs.Feature.of(c.loss.feature)
    if feature is None:
        return
    if objective.own_update:
        _fail("loss.feature", f"{c.method} runs its own PPO update; the feature term joins the methods with one loss")
    if c.teacher.topk:
        _fail("loss.feature", "the feature term reads the teacher's hidden states; the top-k/sampled cache runs without "
                              "the teacher's weights (set teacher.topk=0)")
    needs = objective.needs
    have = {"gold": True, "teacher": needs.teacher_samples, "student": needs.student_samples}
    if not have[feature.response.value]:
        _fail("loss.feature.response", f"{c.method} does not sample the {feature.response.value}'s responses; use "
                                       f"response=gold or a method that does")


def _check_packing(c, objective):
    """``data.packing`` lays out the gold responses of a teacher-forced method's own forwards;
    ``data.group_by_length`` groups one teacher's batches by prompt length."""
    g = c.data.group_by_length
    if not isinstance(g, int) or isinstance(g, bool) or g < 0:
        _fail("data.group_by_length", f"must be an int >= 0 (batches per sorted window; 0: off), got {g!r}")
    if g and c.data.packing:
        _fail("data.group_by_length", "packed rows already hold examples end to end; use data.packing or "
                                      "data.group_by_length, not both")
    if g and c.teacher.paths:
        _fail("data.group_by_length", "each of several teachers draws its own batches; group_by_length serves "
                                      "one teacher")
    if not c.data.packing:
        return
    needs = objective.needs
    if needs.student_samples or needs.teacher_samples or objective.own_update:
        forced = sorted(m for m in objectives.OBJECTIVES if _teacher_forced(objectives.build(m, c.loss)))
        _fail("data.packing", f"{c.method} generates the responses it trains on and does not pack; packing serves the "
                              f"teacher-forced methods ({', '.join(forced)})")
    if c.train.micro_batch:
        _fail("data.packing", f"packed rows are laid out for the whole batch; train.micro_batch={c.train.micro_batch!r} "
                              "would split them (use one or the other)")


def _teacher_forced(objective) -> bool:
    needs = objective.needs
    return not (needs.student_samples or needs.teacher_samples or objective.own_update)


def _check_model_path(field, path):
    """A model path names a hub id, an asset, a GGUF file or a folder."""
    if not path:
        _fail(field, "is empty: point it at a hub id (org/name[@revision]), a local Hugging Face "
                     "checkpoint folder, a .gguf file or asset:<name>")
    if path.startswith("asset:"):
        if path[len("asset:"):] not in ASSETS:
            _fail(field, f"unknown asset {path!r}; known: {sorted('asset:' + k for k in ASSETS)}")
    elif hub.parse(path) is not None:
        pass  # a hub id, resolved when the run starts (hub.py)
    elif path.endswith(".gguf"):
        if not os.path.isfile(path):
            _fail(field, f"{path!r}: no such GGUF file")
    elif not os.path.isdir(path):
        _fail(field, f"{path!r} is not a directory")


def _check_teachers(c):
    """Multi-teacher routing: ``teacher.paths`` and ``data.teacher_field`` come together."""
    names = tuple(c.teacher.paths)
    if bool(names) != bool(c.data.teacher_field):
        _fail("data.teacher_field" if names else "teacher.paths",
              f"teacher.paths names {len(names)} teachers: set data.teacher_field to the training rows' field that "
              f"names each row's teacher" if names else
              f"data.teacher_field={c.data.teacher_field!r} routes rows to teachers, but teacher.paths is empty")
    if names and (c.experiment.enabled or c.demo.enabled):
        _fail("teacher.paths", "the demo and the experiment have one teacher each")
    for name, path in c.teacher.paths.items():
        if not isinstance(path, str):
            _fail(f"teacher.paths.{name}", f"must be a path or hub id, got {path!r}")
        _check_model_path(f"teacher.paths.{name}", path)


def _check_model_paths(c):
    """Each model path names a hub id, an asset, a GGUF file or a folder; the data path is set."""
    experiment = c.experiment.enabled  # the student is the teacher with layers removed
    _check_teachers(c)
    # generating reads the student alone; evaluating reads the teacher only when one is given
    one_model = c.mode == "generate" or (c.mode == "eval" and not c.teacher.path)
    if not c.teacher.paths and not one_model:
        _check_model_path("teacher.path", c.teacher.path)
    if not experiment or c.experiment.cross:  # across tokenizers the student is its own model
        _check_model_path("student.path", c.student.path)
    if c.mode in ("train", "check") and not c.data.train and not experiment:
        _fail("data.train", "is empty: a Dolly-format JSONL path, hf:<name> or tfds:<name>")
