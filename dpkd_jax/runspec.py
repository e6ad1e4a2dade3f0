"""The run spec: one frozen, typed :class:`RunSpec` built once from the ConfigDict at the door.

The dataclasses below are the schema, the one source of truth for every field, its type and its default:
``config.default_config()`` is :func:`config_dict` of ``RunSpec()``, so ``--config.a.b=v`` overrides exactly these
fields, and :meth:`RunSpec.of` reads a loaded ConfigDict back into them, type-checked (one line naming the field,
the value and the type expected). Past the entry points every module takes the spec or one of its sections;
nothing mutates it: a stage's variant is :meth:`RunSpec.replace`, a new spec.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping

import jax
import ml_collections

from .errors import TYPE_NAMES, InputError
from .models.config import LoRA
from .objectives import OBJECTIVES
from .sharding import AXES, DEFAULT_RULES

_LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _cli(kind, default=None, **kw):
    """A field whose command-line type is ``kind`` rather than its default's (``object``: an int or "auto";
    ``float`` for a default of None)."""
    return dataclasses.field(default=default, metadata={"cli_type": kind}, **kw)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """``config.teacher``."""
    path: str = ""
    dtype: str = "bfloat16"
    # topk > 0: token-level methods (objectives.TOPK_METHODS) train from a cache of the teacher's top-k log-probs on
    # the gold responses (computed once, hash-checked), with no teacher weights in the train step
    topk: int = 0
    # topk (the teacher's top-k tokens with their log-probs) or sampled (RS-KD: topk draws per position from the
    # teacher, duplicates merged with counts; an unbiased forward-KL estimate, kd only)
    cache: str = "topk"
    cache_dir: str = ""         # where the offline teacher caches live (shared by several runs); "": the workdir
    quantize: str = "none"      # none | int8 (weight-only, per output channel; the frozen teacher's projections)
    # several teachers {name: path} (multi-teacher routing; replaces path): each training row names its teacher in
    # the field data.teacher_field, and each step's rows come from one teacher
    paths: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """``config.student.lora``: rank > 0 trains low-rank adapters on ``targets`` (a subset of q k v o gate up
    down) only; the base weights stay frozen. Exports merge them, and also write a PEFT adapter folder."""
    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = _LORA_TARGETS

    def model(self):
        """The models' :class:`models.LoRA` (checked: a ValueError naming what is wrong)."""
        return LoRA(rank=self.rank, alpha=self.alpha, targets=self.targets)


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    """``config.student``."""
    path: str = ""
    dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    lora: LoRASpec = LoRASpec()


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """``config.data``: the training and eval sets, lengths, templates, packing and length grouping."""
    train: str = ""
    dev_num: int = 500
    eval_sets: dict[str, str] = dataclasses.field(default_factory=dict)
    pretrain: str = ""
    max_prompt_length: int = 256
    max_length: int = 512
    lm_seq_len: int = 512
    # dolly: the reference code's template; chat: the tokenizer's chat template (instruct models); gemma: Gemma's
    # turn format written down (data.TURNS), for base checkpoints that ship no template
    template: str = "dolly"
    teacher_template: str = ""  # across tokenizers: the teacher's own prompt template ("" = data.template)
    teacher_field: str = ""     # multi-teacher: the training rows' field naming each row's teacher (teacher.paths)
    # teacher-forced methods: each step's examples packed end to end in rows of the data's longest row (own
    # segment ids, positions from 0; data/packing.py): the same losses, fewer padded slots
    packing: bool = False
    # generating methods above all: a window of this many batches is sorted by prompt length, and each batch's
    # left-padded prompts are cut to the narrowest of P, P/2, P/4, P/8 that holds them (data/grouping.py); 0: off
    group_by_length: int = 0
    # instructions: Dolly-format JSONL (or hf:/tfds:); traces: JSONL of {prompt, thinking, answer}, the thinking
    # as a Qwen3 <think> block (data/traces.py); trace_loss: all (thinking and answer trained on) or answer
    format: str = "instructions"
    trace_loss: str = "all"


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """``config.train``: the optimizer, the schedule, logging, checkpoints and micro-batches."""
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    log_every: int = 10
    # warn when the student's per-token NLL of its own samples exceeds this multiple of its first logged value
    # (DistiLLM-2's reward-hacking sign); 0 turns the warning off
    hacking_warn_ratio: float = 2.0
    eval_every: int = 0
    save_every: int = 500       # 0: no checkpoints (throw-away runs such as the experiment's grid), except on SIGTERM
    keep: int = 2
    max_bad_steps: int = 10
    # rows per device in each micro-batch of a step (a scan inside the step, one update; exact): 0 = the whole
    # batch; "auto": the largest whose compiled step fits the device (memory.fit)
    micro_batch: object = _cli(object, 0)
    # lm-evaluation-harness tasks (comma-separated) run on the final student after training (lm_eval_adapter.py;
    # pip extra lm_eval): lm_eval.json and lm_eval.md beside table.md. include_path: a folder of task YAMLs;
    # limit: documents per task (0: all)
    final_lm_eval_tasks: str = ""
    final_lm_eval_include_path: str = ""
    final_lm_eval_limit: int = 0


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """``config.mesh`` (sharding.py): -1 takes the remaining devices. context splits each forward's sequence across
    devices (attention gathers keys and values; docs/scale-out.md). shard_student=False keeps a small student whole
    on every device (pure data parallel); the teacher is always split. rules: logical axis -> mesh axes
    (sharding.DEFAULT_RULES), overridable per run, e.g. --config.mesh.rules.kv_heads=None to replicate KV heads."""
    data: int = -1
    fsdp: int = 1
    context: int = 1
    tensor: int = 1
    shard_student: bool = True
    rules: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))

    def as_dict(self) -> dict:
        """The axis sizes, ``shard_student`` and ``rules``, as ``sharding.Placement`` takes them."""
        return dataclasses.asdict(self)

    def sizes(self) -> dict:
        """``{axis: size}`` of the mesh axes (-1: the remaining devices)."""
        return {a: self.__dict__[a] for a in AXES}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """``config.model``: how the models execute."""
    remat: str = "none"         # none | full | dots (save matmul outputs) for long sequences
    scan_layers: bool = True
    decode_kernel: str = "xla"  # pallas: JAX's Pallas GPU decode-attention kernel for decode steps (xla elsewhere)
    kv_cache: str = "compute"   # compute (the compute dtype) | int8 (one float32 scale per head and slot)
    attention_kernel: str = "auto"  # auto | dense | blockwise | cudnn | splash (docs/models.md)
    attention_block_q: int = 0  # 0 = the backend's default
    attention_block_k: int = 0
    # token-level losses project to the vocabulary in chunks of this many tokens (batch rows x positions),
    # recomputed in the backward pass (method.md §11); 0 = whole [B, N, V] logits (for comparisons)
    loss_chunk_tokens: int = 128
    allow_pickle: bool = False  # load pickle (.bin) weights (they can run code: off by default)


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """``config.distributed``: jax.distributed.initialize(); empty fields are auto-detected (TPU pods, SLURM)."""
    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """``config.loss.feature``: a feature-distillation term added to any method (weight 0: off): hidden states at
    student:teacher layer pairs ("1:3,3:11", 0-based, the residual stream after that block) on one response (gold |
    teacher | student), a learned projection when the widths differ, mse or cosine; the weight goes from weight to
    final_weight along schedule (constant | linear | cosine). ``specs.Feature.of`` parses it."""
    layers: str = ""
    distance: str = "mse"
    weight: float = 0.0
    final_weight: float = 0.0
    schedule: str = "constant"
    response: str = "gold"


class _Blocks:
    """``config.loss``'s blocks by method name."""

    def block(self, method: str):
        """The typed hyperparameters (the objective itself, not yet validated) of ``method``."""
        if method not in OBJECTIVES:
            raise InputError(f"config.method: unknown method {method!r}; choose from {sorted(OBJECTIVES)}")
        return self.__dict__[method]


# One block per method, the objective's own frozen dataclass with its typed defaults (objectives/):
# --config.loss.dpkd.beta=0.5
LossSpec = dataclasses.make_dataclass(
    "LossSpec", [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in OBJECTIVES.items()]
    + [("feature", FeatureSpec, dataclasses.field(default_factory=FeatureSpec))],
    bases=(_Blocks,), frozen=True)
LossSpec.__module__ = __name__
LossSpec.__doc__ = "``config.loss``: one block per method (the objective's typed hyperparameters) and the feature term."


@dataclasses.dataclass(frozen=True)
class GenSpec:
    """``config.gen``: the training-time sampler. -1 ids: taken from the tokenizer (``run.resolved``)."""
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    teacher_mode: str = "online"  # online | offline (y_t sampled once per prompt and cached)
    eos_token_id: int = -1
    pad_token_id: int = -1


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """``config.eval``: RougeL/EM evaluation, sampled once per seed."""
    max_new_tokens: int = 256
    seeds: tuple[int, ...] = (10, 20, 30, 40, 50)
    batch_size: int = 8
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    max_examples: int = 0
    eval_teacher: bool = True


@dataclasses.dataclass(frozen=True)
class GenerateSpec:
    """``config.generate`` (mode=generate)."""
    prompt: str = ""
    input_file: str = ""
    output_file: str = ""


@dataclasses.dataclass(frozen=True)
class DemoModelSpec:
    """``config.demo.teacher``: the demo teacher's shape."""
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512


@dataclasses.dataclass(frozen=True)
class DemoSpec:
    """``config.demo`` (configs/demo.py, dpkd_jax/demo.py): its own tokenizer and teacher, then each method."""
    enabled: bool = False
    vocab_size: int = 384
    teacher: DemoModelSpec = DemoModelSpec()
    teacher_steps: int = 260
    teacher_lr: float = 2e-3
    keep_layers: str = "0,3"    # the student: the trained teacher with these layers kept
    distill_steps: int = 40
    distill_lr: float = 5e-4
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = ("sft", "kd", "seqkd", "dpkd")


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    """``config.experiment`` (configs/smollm2_pruned.py, configs/smollm2_to_gemma3.py; dpkd_jax/experiment/)."""
    enabled: bool = False
    cross: bool = False         # the student has its own tokenizer (experiment/cross.py)
    scale: str = ""
    title: str = ""
    start_label: str = ""       # the table's first row ("" = the pruned student before training)
    keep_layers: str = ""       # the student: the teacher with these layers kept ("0-11,22-29")
    prompts: str = ""           # a Dolly-format JSONL ("" = the shipped prompts)
    methods: tuple[str, ...] = ()
    previous: str = ""          # an earlier results.json: its rows are reported beside this run's, not retrained
    best_of: tuple[str, ...] = ()  # rows of which only the best on dev (after its lr grid) runs every seed
    command: str = ""
    steps: int = 200
    n_train: int = 1900
    n_dev: int = 100
    n_eval: int = 200
    eval_points: int = 5
    lr_grid: tuple[float, ...] = (5e-5, 2e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1, 2)
    dpkd_betas: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)
    dpkd_kd_ratios: tuple[float, ...] = (0.5, 1.0)
    machine: str = ""


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    """``config.check``: mode=check and the run's start-up check. devices: check the mesh for this many devices (a
    launch script's preflight on one host of many; 0 = here). memory: compile the train step on abstract shapes at
    start-up and stop in one line, with what would fit, when it needs more than the device has; memory_limit_gib
    overrides the device's capacity."""
    memory: bool = True
    devices: int = 0
    memory_limit_gib: float | None = _cli(float, None)


@dataclasses.dataclass(frozen=True)
class LogSpec:
    """``config.log``: the experiment trackers (trackers.py), tensorboard | wandb (offline without WANDB_API_KEY;
    pip extra wandb) | trackio (local; pip extra trackio); each gets the scalars, the config and the final table."""
    trackers: tuple[str, ...] = ("tensorboard",)
    project: str = "dpkd_jax"
    # (first, last): a jax.profiler trace of train steps first..last (1-based) in <workdir>/profile, for
    # TensorBoard's profile plugin or Perfetto (profiling.py); (): none
    profile_steps: tuple[int, ...] = ()


def _default_compile_cache() -> str:
    return os.environ.get("DPKD_COMPILE_CACHE", os.path.join("~", ".cache", "dpkd_jax", "xla"))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The whole run, typed and frozen. ``RunSpec()`` holds the defaults; :meth:`of` reads a config."""
    method: str = "dpkd"
    mode: str = "train"         # train | eval | generate | check
    seed: int = 0
    workdir: str = "work_dirs/run"
    resume: bool = True         # continue from checkpoints in workdir (a finished stage is reused)
    overwrite: bool = False     # with resume=False: clear earlier checkpoints in workdir instead of stopping
    # the persistent compilation cache (later runs of the same steps load them compiled); "" = off
    compile_cache: str = dataclasses.field(default_factory=_default_compile_cache)
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    mesh: MeshSpec = MeshSpec()
    model: ModelSpec = ModelSpec()
    distributed: DistributedSpec = DistributedSpec()
    loss: LossSpec = dataclasses.field(default_factory=LossSpec)
    gen: GenSpec = GenSpec()
    eval: EvalSpec = EvalSpec()
    generate: GenerateSpec = GenerateSpec()
    demo: DemoSpec = DemoSpec()
    experiment: ExperimentSpec = ExperimentSpec()
    check: CheckSpec = CheckSpec()
    log: LogSpec = LogSpec()

    @classmethod
    def of(cls, cfg) -> "RunSpec":
        """The spec of a loaded config (a ConfigDict or a plain nested dict): every field type-checked, one
        ``InputError`` line naming the first that does not fit."""
        tree = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
        return _section(cls, tree, "config")

    def check_devices(self) -> int:
        """The device count the mesh is checked against: ``check.devices`` in a preflight (one host speaking for
        many), else this run's."""
        return self.check.devices if self.mode == "check" and self.check.devices > 0 else jax.device_count()

    def at(self, path: str):
        """The value at a dotted path (``"eval.batch_size"``), :meth:`replace`'s counterpart."""
        node = self
        for key in path.split("."):
            node = node[key] if isinstance(node, dict) else node.__dict__[key]
        return node

    def replace(self, changes: Mapping[str, object] = (), **top) -> "RunSpec":
        """A new spec with ``changes`` at dotted paths (``{"train.steps": 5}``) and top-level fields (``seed=1``)."""
        out = dataclasses.replace(self, **top) if top else self
        for path, value in dict(changes).items():
            out = _replace_at(out, path.split("."), value)
        return out

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (JSON: the stored spec, the trackers' config)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def _replace_at(node, path: list[str], value):
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace_at(node[head], rest, value) if rest else value}
    names = {f.name for f in dataclasses.fields(node)}
    if head not in names:
        raise KeyError(f"{type(node).__name__} has no field {head!r}")
    current = node.__dict__[head]
    return dataclasses.replace(node, **{head: _replace_at(current, rest, value) if rest else value})


def _section(cls, tree, where: str):
    """``cls`` from a nested dict, each field typed by its annotation."""
    if not isinstance(tree, Mapping):
        raise InputError(f"{where} must be a section of fields, got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(n) for n in near)}?" if near else f"its fields: {', '.join(fields)}"
            raise InputError(f"{where} has no field {key!r} ({hint})")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _typed(hints[k], v, f"{where}.{k}") for k, v in tree.items()})


def _typed(kind, value, where: str):
    """``value`` as ``kind`` (a section, a scalar, a tuple of scalars, a dict, an optional), or one line."""
    if dataclasses.is_dataclass(kind):
        return _section(kind, value, where)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        return None if value is None else _typed(next(a for a in args if a is not type(None)), value, where)
    if kind is object:
        return value
    if origin is tuple or kind is tuple:
        if isinstance(value, str):
            value = (value,)  # a bare word on the command line is a 1-tuple
        _expect(isinstance(value, (tuple, list)), tuple, value, where)
        item = args[0] if args else object
        return tuple(_typed(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or kind is dict:
        _expect(isinstance(value, Mapping), dict, value, where)
        item = args[1] if args else object
        return {k: _typed(item, v, f"{where}.{k}") for k, v in value.items()}
    if kind is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), float, value, where)
        return float(value)
    if kind is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), int, value, where)
        return int(value)
    _expect(isinstance(value, kind), kind, value, where)
    return value


def _expect(ok: bool, kind, value, where: str):
    if not ok:
        raise InputError(f"{where} must be {TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")


def config_dict(spec) -> ml_collections.ConfigDict:
    """The ConfigDict of a spec (of ``RunSpec()``: ``config.default_config()``), each field typed as the spec
    types it, so the command line refuses what :meth:`RunSpec.of` would."""
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(spec):
        value = spec.__dict__[f.name]
        if dataclasses.is_dataclass(value):
            value = config_dict(value)
        elif isinstance(value, dict):
            value = ml_collections.ConfigDict(value)
        elif "cli_type" in f.metadata:
            value = ml_collections.FieldReference(value, field_type=f.metadata["cli_type"])
        c[f.name] = value
    return c
