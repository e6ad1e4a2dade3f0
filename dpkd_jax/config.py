"""The default experiment config (ml_collections) and its start-up validation.

Every ``configs/*.py`` starts from :func:`default_config`; ``--config.a.b=v``
overrides on the command line. A key that is not here is an error (ml_collections
refuses unknown keys), so a typo cannot be silently ignored.
"""

from __future__ import annotations

import os

import ml_collections

from . import data as data_lib
from . import objectives, specs, trackers
from .models.config import ATTENTION_KERNELS
from .sharding import DEFAULT_RULES
from .errors import InputError


def _model_blocks():
    """``config.teacher`` and ``config.student``."""
    # topk > 0: token-level methods (objectives.TOPK_METHODS) train from a cache of the teacher's top-k log-probs on
    # the gold responses (computed once, hash-checked), with no teacher weights in the train step
    # cache: topk (the teacher's top-k tokens with their log-probs) or sampled (RS-KD: topk draws per position from
    # the teacher, duplicates merged with counts; an unbiased forward-KL estimate, kd only)
    # cache_dir: where the offline teacher caches live (shared by several runs); empty = the run's workdir
    # quantize: none | int8 (weight-only, per output channel; the frozen teacher's projections)
    # paths: several teachers {name: path} (multi-teacher routing; replaces path): each training row names
    # its teacher in the field data.teacher_field, and each step's rows come from one teacher
    teacher = ml_collections.ConfigDict({"path": "", "dtype": "bfloat16", "topk": 0, "cache": "topk",
                                         "cache_dir": "", "quantize": "none", "paths": ml_collections.ConfigDict()})
    # lora.rank > 0: train low-rank adapters on lora.targets (a subset of q k v o gate up down) only;
    # the base weights stay frozen. Exports merge them, and also write a PEFT adapter folder.
    student = ml_collections.ConfigDict({
        "path": "", "dtype": "float32", "compute_dtype": "bfloat16",
        "lora": ml_collections.ConfigDict({"rank": 0, "alpha": 16.0, "targets": ("q", "k", "v", "o", "gate", "up",
                                                                                   "down")})})
    return teacher, student


def _loss_blocks():
    """``config.loss``: one block per method, and the feature term."""
    # One block per method, its typed hyperparameters (objectives/): --config.loss.dpkd.beta=0.5
    loss = ml_collections.ConfigDict(objectives.defaults())
    # A feature-distillation term added to any method (weight 0: off): hidden states at student:teacher layer
    # pairs ("1:3,3:11", 0-based, the residual stream after that block) on one response (gold | teacher |
    # student), a learned projection when the widths differ, mse or cosine; the weight goes from weight to
    # final_weight along schedule (constant | linear | cosine)
    loss.feature = ml_collections.ConfigDict({"layers": "", "distance": "mse", "weight": 0.0, "final_weight": 0.0,
                                              "schedule": "constant", "response": "gold"})
    return loss


def default_config():
    c = ml_collections.ConfigDict()
    c.method = "dpkd"
    c.mode = "train"            # train | eval | generate
    c.seed = 0
    c.workdir = "work_dirs/run"
    c.resume = True             # continue from checkpoints in workdir (a finished stage is reused)
    c.overwrite = False         # with resume=False: clear earlier checkpoints in workdir instead of stopping
    # the command line's persistent compilation cache (later runs of the same steps load them compiled); "" = off
    c.compile_cache = os.environ.get("DPKD_COMPILE_CACHE", os.path.join("~", ".cache", "dpkd_jax", "xla"))
    c.teacher, c.student = _model_blocks()
    c.data = _data_block()
    c.train = _train_block()
    # Device mesh (sharding.py): -1 takes the remaining devices. context splits each forward's sequence across
    # devices (attention gathers keys and values; docs/scale-out.md). shard_student=False keeps a
    # small student whole on every device (pure data parallel); the teacher is always split.
    # rules: logical axis -> mesh axes (sharding.DEFAULT_RULES), overridable per run, e.g.
    # --config.mesh.rules.kv_heads=None to replicate KV heads.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "context": 1, "tensor": 1, "shard_student": True,
                                        "rules": dict(DEFAULT_RULES)})
    # Model execution: remat none | full | dots (save matmul outputs) for long sequences; scan over layers.
    # decode_kernel: pallas uses JAX's Pallas GPU decode-attention kernel for decode steps (xla elsewhere)
    # loss_chunk_tokens: token-level losses project to the vocabulary in chunks of this many tokens (batch rows x
    # positions), recomputed in the backward pass (method.md §11); 0 = whole [B, N, V] logits (for comparisons)
    # allow_pickle: load pickle (.bin) weights, from a folder or a hub id (they can run code: off by default)
    # attention_kernel: auto | dense | blockwise | cudnn | splash (docs/models.md); blocks 0 = the backend's default
    # kv_cache: compute (the compute dtype) | int8 (one float32 scale per head and slot: ~half of bfloat16's bytes)
    c.model = ml_collections.ConfigDict({"remat": "none", "scan_layers": True, "decode_kernel": "xla", "kv_cache": "compute",
                                         "attention_kernel": "auto", "attention_block_q": 0, "attention_block_k": 0,
                                         "loss_chunk_tokens": 128, "allow_pickle": False})
    # Multi-host: jax.distributed.initialize(); empty fields are auto-detected (TPU pods, SLURM).
    c.distributed = ml_collections.ConfigDict({"enabled": False, "coordinator_address": "", "num_processes": 0,
                                               "process_id": -1})
    c.loss = _loss_blocks()
    c.gen = ml_collections.ConfigDict({
        "max_new_tokens": 256, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "teacher_mode": "online",
        "eos_token_id": -1, "pad_token_id": -1})  # -1: taken from the tokenizer
    c.eval = ml_collections.ConfigDict({
        "max_new_tokens": 256, "seeds": (10, 20, 30, 40, 50), "batch_size": 8, "temperature": 1.0, "top_k": 0,
        "top_p": 1.0, "greedy": False, "max_examples": 0, "eval_teacher": True})
    c.generate = ml_collections.ConfigDict({"prompt": "", "input_file": "", "output_file": ""})
    c.demo = ml_collections.ConfigDict({"enabled": False})
    c.experiment = ml_collections.ConfigDict({"enabled": False})  # configs/smollm2_pruned.py
    c.check = _check_block()
    c.log = _log_block()
    return c


def _log_block():
    """``config.log``: the experiment trackers (trackers.py), tensorboard | wandb (offline without WANDB_API_KEY;
    pip extra wandb) | trackio (local; pip extra trackio); each gets the scalars, the config and the final table."""
    return ml_collections.ConfigDict({"trackers": ("tensorboard",), "project": "dpkd_jax"})


def _data_block():
    """``config.data``: the training and eval sets, lengths, templates, packing and length grouping."""
    return ml_collections.ConfigDict({
        "train": "", "dev_num": 500, "eval_sets": ml_collections.ConfigDict(), "pretrain": "",
        "max_prompt_length": 256, "max_length": 512, "lm_seq_len": 512,
        # dolly: the reference code's template; chat: the tokenizer's chat template (instruct models);
        # gemma: Gemma's turn format written down (data.TURNS), for base checkpoints that ship no template
        "template": "dolly",
        # across tokenizers: the teacher's own prompt template ("" = data.template)
        "teacher_template": "",
        # multi-teacher: the field of each training row that names its teacher (a key of teacher.paths)
        "teacher_field": "",
        # teacher-forced methods: each step's examples packed end to end in rows of the data's longest row
        # (own segment ids, positions from 0; data/packing.py): the same losses, fewer padded slots
        "packing": False,
        # generating methods above all: a window of this many batches is sorted by prompt length, and each batch's
        # left-padded prompts are cut to the narrowest of P, P/2, P/4, P/8 that holds them (data/grouping.py); 0: off
        "group_by_length": 0,
        # instructions: Dolly-format JSONL (or hf:/tfds:); traces: JSONL of {prompt, thinking, answer}, the thinking
        # as a Qwen3 <think> block (data/traces.py); trace_loss: all (thinking and answer trained on) or answer
        "format": "instructions", "trace_loss": "all"})


def _train_block():
    """``config.train``: the optimizer, the schedule, logging, checkpoints and micro-batches."""
    return ml_collections.ConfigDict({
        "steps": 1000, "batch_size": 8, "grad_accum": 1, "lr": 5e-4, "weight_decay": 0.01, "warmup_steps": 0,
        "schedule": "cosine", "min_lr_ratio": 0.0, "grad_clip": 1.0, "adam_b1": 0.9, "adam_b2": 0.999,
        "adam_eps": 1e-8, "log_every": 10,
        # warn when the student's per-token NLL of its own samples exceeds this multiple of its first logged
        # value (DistiLLM-2's reward-hacking sign); 0 turns the warning off. save_every=0: no checkpoints
        # (throw-away runs such as the experiment's grid), except on SIGTERM
        "hacking_warn_ratio": 2.0, "eval_every": 0, "save_every": 500, "keep": 2, "max_bad_steps": 10,
        # rows per device in each micro-batch of a step (a scan inside the step, one update; exact): 0 = the whole
        # batch; "auto": the largest whose compiled step fits the device (memory.fit)
        "micro_batch": ml_collections.config_dict.FieldReference(0, field_type=object),
        # lm-evaluation-harness tasks (comma-separated) run on the final student after training (lm_eval_adapter.py;
        # pip extra lm_eval): lm_eval.json and lm_eval.md beside table.md. include_path: a folder of task YAMLs;
        # limit: documents per task (0: all)
        "final_lm_eval_tasks": "", "final_lm_eval_include_path": "", "final_lm_eval_limit": 0})


def _check_block():
    """``config.check``: what ``mode=check`` and the run's start-up check."""
    # devices: check the mesh for this many devices (a launch script's preflight on one host of many); 0 = here
    # memory: compile the train step on abstract shapes at start-up (run and check) and stop in one line, with what
    # would fit, when it needs more than the device has; memory_limit_gib overrides the device's capacity
    return ml_collections.ConfigDict({
        "memory": True, "devices": 0,
        "memory_limit_gib": ml_collections.config_dict.FieldReference(None, field_type=float)})


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


def lora_spec(c):
    """The student's :class:`models.LoRA` from ``config.student.lora`` (rank 0: off)."""
    from .models.config import LoRA
    lo = c.student.lora
    targets = (lo.targets,) if isinstance(lo.targets, str) else tuple(lo.targets)
    return LoRA(rank=int(lo.rank), alpha=float(lo.alpha), targets=targets)


def check_devices(c) -> int:
    """The device count the mesh is checked against: ``check.devices`` in a preflight
    (one host speaking for many), else this run's."""
    import jax
    return c.check.devices if c.mode == "check" and c.check.devices > 0 else jax.device_count()


def _fail(field, msg):
    raise InputError(f"config.{field}: {msg}")


def _check_context(c, context: int):
    """The context axis splits the teacher-forced forward's ``data.max_length`` slots in ``2 x context`` chunks
    (two per device, for the causal load balance of ``models/attention.py``)."""
    if context > 1 and c.data.max_length % (2 * context):
        _fail("mesh.context", f"{context} needs data.max_length to be a multiple of {2 * context} (two chunks of the "
                              f"sequence per device), got data.max_length={c.data.max_length}")


def validate(c):
    """Stop at start-up with one message naming the field."""
    fail = _fail
    objective = objectives.build(c.method, c.loss)  # unknown method or a bad field of its block: named
    _check_teacher_cache(c, objective)
    _check_feature(c, objective)
    _check_packing(c, objective)
    if c.mode not in ("train", "eval", "generate", "check"):
        fail("mode", f"must be train, eval, generate or check, got {c.mode!r}")
    if c.data.max_prompt_length >= c.data.max_length:
        fail("data.max_prompt_length", f"{c.data.max_prompt_length} must be < data.max_length={c.data.max_length}")
    for field, choices in (("format", ("instructions", "traces")), ("trace_loss", data_lib.traces.LOSSES)):
        if c.data[field] not in choices:
            fail(f"data.{field}", f"must be one of {', '.join(choices)}, got {c.data[field]!r}")
    for field in ("template", "teacher_template"):
        if c.data[field] not in data_lib.TEMPLATES and (field == "template" or c.data[field]):
            fail(f"data.{field}", f"must be one of {', '.join(data_lib.TEMPLATES)}, got {c.data[field]!r}")
    if c.teacher.quantize not in ("none", "int8"):
        fail("teacher.quantize", f"must be none or int8, got {c.teacher.quantize!r}")
    try:
        lora_spec(c)
    except ValueError as e:
        fail("student.lora", str(e).removeprefix("lora: "))
    if c.gen.teacher_mode not in ("online", "offline"):
        fail("gen.teacher_mode", f"must be online or offline, got {c.gen.teacher_mode!r}")
    from . import sharding
    try:
        mesh = sharding.mesh_shape(dict(c.mesh), check_devices(c))
    except ValueError as e:
        fail("mesh", str(e).removeprefix("config.mesh: "))
    dp = mesh["data"] * mesh["fsdp"]
    if c.train.batch_size % dp:
        fail("train.batch_size", f"{c.train.batch_size} is not divisible by the data-parallel size {dp} "
                                 f"(mesh data={mesh['data']} x fsdp={mesh['fsdp']})")
    _check_context(c, mesh["context"])
    if c.model.kv_cache not in ("compute", "int8"):
        fail("model.kv_cache", f"must be compute or int8, got {c.model.kv_cache!r}")
    if c.model.attention_kernel not in ATTENTION_KERNELS:
        fail("model.attention_kernel", f"unknown kernel {c.model.attention_kernel!r}; choose one of "
                                       f"{', '.join(ATTENTION_KERNELS)}")
    for f in ("attention_block_q", "attention_block_k"):
        if c.model[f] < 0:
            fail(f"model.{f}", f"must be >= 0 (0: the backend's default), got {c.model[f]}")
    if c.model.loss_chunk_tokens < 0:
        fail("model.loss_chunk_tokens", f"must be >= 0 (0: no chunking), got {c.model.loss_chunk_tokens}")
    _check_memory(c, dp, objective)
    trackers.check(c.log.trackers)
    if c.train.final_lm_eval_tasks and c.mode in ("train", "check"):
        _check_lm_eval(c.train)
    if c.train.max_bad_steps < 1:
        fail("train.max_bad_steps", f"must be >= 1, got {c.train.max_bad_steps}")
    if c.train.steps < 1:
        fail("train.steps", f"must be >= 1, got {c.train.steps}")
    if not c.demo.enabled:
        _check_model_paths(c)
    if c.experiment.enabled:
        _check_experiment(c.experiment)
    return c


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
    import importlib.util
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
    from .specs import Feature
    feature = Feature.of(c.loss.feature)
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
    import os
    from . import hub
    if not path:
        _fail(field, "is empty: point it at a hub id (org/name[@revision]), a local Hugging Face "
                     "checkpoint folder, a .gguf file or asset:<name>")
    if path.startswith("asset:"):
        from .assets import ASSETS
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
    if not experiment or c.experiment.get("cross", False):  # across tokenizers the student is its own model
        _check_model_path("student.path", c.student.path)
    if c.mode in ("train", "check") and not c.data.train and not experiment:
        _fail("data.train", "is empty: a Dolly-format JSONL path, hf:<name> or tfds:<name>")
