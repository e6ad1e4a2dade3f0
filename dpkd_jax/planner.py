"""The memory planner: compile a run's train step (or its generation) on abstract shapes over a mesh of N devices
(no weights allocated) and report per-device bytes. The run's start-up check (``memory.py``) and
``python -m dpkd_jax.tools.plan`` (its command line) both call it.

Model sizes come from ``teacher.path``/``student.path`` when those folders exist, otherwise from the public configs
of the paper's models (:data:`KNOWN`) by folder name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from . import sampling, sharding, specs
from .batch import Batch, Packing
from .data import Batches
from .errors import InputError
from .model_options import attention_options, model_options
from .models import decoder_for, family, hf
from .models.config import DTYPES
from .optim import make_optimizer
from .train import init_state, make_step, step_shardings

GiB = 2**30

# Public Hugging Face config.json fields of the paper's models (no download needed).
_GPT2 = lambda d, L, H: {"model_type": "gpt2", "vocab_size": 50257, "n_embd": d, "n_layer": L, "n_head": H,
                         "n_positions": 1024}
_OPT = lambda d, L, H: {"model_type": "opt", "vocab_size": 50272, "hidden_size": d, "num_hidden_layers": L,
                        "num_attention_heads": H, "ffn_dim": 4 * d, "max_position_embeddings": 2048,
                        "word_embed_proj_dim": d}
_QWEN = lambda d, f, L, H, G, V, tied: {
    "model_type": "qwen2", "vocab_size": V, "hidden_size": d, "intermediate_size": f, "num_hidden_layers": L,
    "num_attention_heads": H, "num_key_value_heads": G, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_theta": 1e6, "tie_word_embeddings": tied}
_LLAMA3 = lambda d, f, L, factor, tied: {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": d, "intermediate_size": f, "num_hidden_layers": L,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": d // 32, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": tied,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": factor, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
_QWEN3 = lambda d, f, L, H, tied: {
    "model_type": "qwen3", "vocab_size": 151936, "hidden_size": d, "intermediate_size": f, "num_hidden_layers": L,
    "num_attention_heads": H, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": tied}
KNOWN = {"gpt2-base": _GPT2(768, 12, 12), "gpt2": _GPT2(768, 12, 12), "gpt2-medium": _GPT2(1024, 24, 16),
         "gpt2-large": _GPT2(1280, 36, 20), "gpt2-xlarge": _GPT2(1600, 48, 25), "gpt2-xl": _GPT2(1600, 48, 25),
         "opt-1.3b": _OPT(2048, 24, 32), "opt-2.7b": _OPT(2560, 32, 32), "opt-6.7b": _OPT(4096, 32, 32),
         "opt-13b": _OPT(5120, 40, 40),
         "qwen2.5-7b-instruct": _QWEN(3584, 18944, 28, 28, 4, 152064, False),
         "qwen2.5-1.5b-instruct": _QWEN(1536, 8960, 28, 12, 2, 151936, True),
         "llama-3.1-8b-instruct": _LLAMA3(4096, 14336, 32, 8.0, False),
         "llama-3.2-1b-instruct": _LLAMA3(2048, 8192, 16, 32.0, True),
         "qwen3-8b": _QWEN3(4096, 12288, 36, 32, False), "qwen3-1.7b": _QWEN3(2048, 6144, 28, 16, True)}
# The MiniLLM project's SFT checkpoints on the hub (the GPT-2 configs' defaults): GPT-2 shapes.
KNOWN.update({"teacher-gpt2-1.5b": KNOWN["gpt2-xl"], "init-gpt2-120m": KNOWN["gpt2"],
              "init-gpt2-340m": KNOWN["gpt2-medium"], "init-gpt2-760m": KNOWN["gpt2-large"]})

# HBM per device, for the "fits" column.
DEVICES = {"TPU v5e": 16, "TPU v4": 32, "A100-40G": 40, "H100": 80, "TPU v5p": 95}
# device_kind of a deviceless TPU compile -> its HBM (GiB): the plan is then for that chip.
TPU_HBM = {"TPU v5 lite": ("TPU v5e", 16), "TPU v6 lite": ("TPU v6e", 32), "TPU v4": ("TPU v4", 32),
           "TPU v5": ("TPU v5p", 95)}


def model_config(path, dtype, compute_dtype, field, scan_layers=True, **overrides):
    """A model's Config from its folder's config.json (or GGUF), else from :data:`KNOWN` by the folder's
    name; ``overrides``: execution fields as ``model_options.model_options`` gives them."""
    if os.path.isfile(os.path.join(path, "config.json")) or hf.is_gguf(path):
        return hf.load_config(path, dtype=jnp.dtype(dtype), compute_dtype=jnp.dtype(compute_dtype),
                              scan_layers=scan_layers, **overrides)
    name = os.path.basename(os.path.normpath(path)).lower().removesuffix("-sft")
    if name not in KNOWN:
        raise InputError(f"config.{field}: {path!r} has no config.json and {name!r} is not one of {sorted(KNOWN)}")
    known = KNOWN[name]
    cfg = family(known["model_type"]).config_from_hf(known, param_dtype=jnp.dtype(dtype).name,
                                                     compute_dtype=jnp.dtype(compute_dtype).name,
                                                     scan_layers=scan_layers)
    return cfg.replace(**overrides) if overrides else cfg


def run_model_configs(cfg, vocab=0, models=None):
    """(teacher, student) Configs exactly as the run builds them (``model_options.model_options``), so the
    planned step is the run's own program: its compile is the one the run loads from the persistent
    compilation cache. ``vocab`` > 0: the tokenizers' shared vocabulary, else the smaller model's rows.
    ``models``: the run's own (teacher, student) decoders, for models the caller already holds (the demo's,
    the experiment's pruned student): their Configs with ``config.model``'s execution fields applied (a
    variant the check tries changes them)."""
    if models is not None:
        return tuple(m.config.replace(remat=cfg.model.remat, **attention_options(cfg.model)) for m in models)
    paths = {"teacher": cfg.teacher.path, "student": cfg.student.path}
    if not vocab:
        raw = [model_config(paths[r], "float32", "float32", f"{r}.path").vocab_size for r in paths]
        vocab = min(raw)  # padded embeddings share the real vocabulary
    out = []
    for role, path in paths.items():
        kw = model_options(cfg, role, vocab)
        out.append(model_config(path, kw.pop("dtype"), kw.pop("compute_dtype"), f"{role}.path", **kw))
    return tuple(out)


def parse_mesh(text):
    return {k: int(v) for k, v in (kv.split(":") for kv in text.split(","))}


def topology_devices(name):
    """The devices of a TPU slice such as ``v5e:2x4`` for deviceless compilation: XLA's TPU
    compiler runs on this host (``pip install libtpu``), no TPU needed."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off Google Cloud
    from jax.experimental.topologies import get_topology_desc
    try:
        return get_topology_desc(platform="tpu", topology_name=name).devices
    except Exception as e:  # noqa: BLE001 - libtpu raises several types
        raise InputError(f"--topology: cannot describe TPU slice {name!r}: {e}. It needs libtpu "
                         "(pip install libtpu) and a name like v5e:2x4, v4:2x2x2 or v5p:2x2x2") from e


def plan_one(cfg, mesh_sizes, devices, batch_per_replica=0, vocab=0, data=None, models=None, lm_rows=None):
    """Per-device bytes of one compiled train step on ``devices`` (a count of this host's devices, or
    a list such as :func:`topology_devices` gives). ``batch_per_replica`` > 0: the global batch is that
    times the data-parallel size; ``vocab`` > 0: the real vocabulary (else the smaller model's rows);
    ``data``: the run's training rows (``data.Tokenized``), whose longest row bounds the gold forwards
    as in the run (``specs.Step.with_data``): the step then compiles to the run's own program;
    ``models``: see :func:`run_model_configs`; ``lm_rows``: whether the run reads pre-training rows (None:
    when ``data.pretrain`` names them; the demo always has its own)."""
    devices = jax.devices()[:devices] if isinstance(devices, int) else list(devices)
    placement = sharding.Placement({**cfg.mesh.as_dict(), **mesh_sizes}, devices=devices)
    mesh = placement.mesh
    t_cfg, s_cfg = run_model_configs(cfg, vocab, models)
    teacher, student = (decoder_for(c, placement.rules(role), _source(cfg, role, models))
                        for c, role in ((t_cfg, "teacher"), (s_cfg, "student")))
    spec = _planned_spec(cfg, mesh, batch_per_replica, data, (s_cfg, t_cfg))
    sharding.check_heads(t_cfg.n_heads, mesh, "teacher")
    sharding.check_heads(s_cfg.n_heads, mesh, "student")
    kinds = {n: i.kind for n, i in student.info.items()}
    kinds.update({n: "weight" for n in (spec.feature.init_params() if spec.feature else {})})
    tx = make_optimizer(cfg.train, spec.objective.updates_per_step, kinds)  # as loop.place builds it

    def abstract(decoder, shardings):  # shapes and dtypes from the NNX metadata
        return {n: jax.ShapeDtypeStruct(i.shape, i.dtype, sharding=shardings[n]) for n, i in decoder.info.items()}
    s_abs = abstract(student, placement.params(student.info, "student"))
    sh = step_shardings(placement, student, teacher, tx, s_abs, spec.objective, spec.feature)
    t_abs = abstract(teacher, sh["teacher"])
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         jax.eval_shape(lambda p: init_state(student, p, tx, spec.objective, spec.feature), s_abs),
                         sh["state"])
    B, P = spec.batch_size, cfg.data.max_prompt_length
    batch = _planned_batch(cfg, spec, sh["batch"], data, sharding.data_parallel_size(mesh), lm_rows)
    rng = jax.ShapeDtypeStruct((2,), np.uint32)  # uncommitted, as the loop's fold_in key: the run finds this compile
    # the teacher's weights (and a reference model's) are arguments, as in a run
    ref = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), s_abs, sh["ref"]) \
        if spec.objective.needs.reference else None
    t_abs = None if cfg.teacher.topk else t_abs  # a top-k or sampled cache: the step takes no teacher weights
    step = make_step(spec, student, teacher, tx, t_abs, ref, sh)
    compiled = step.lower(state, batch, rng, t_abs, ref).compile()
    mem = compiled.memory_analysis()

    def per_device(tree):
        return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree))
    kv = lambda c: kv_cache_bytes(c, mesh, B, P + spec.sampling.max_new_tokens)
    return {"devices": len(devices), "kind": devices[0].device_kind, "batch": B,
            "mesh": "x".join(f"{a}{mesh.shape[a]}" for a in sharding.AXES if a != "context" or mesh.shape[a] > 1),
            "teacher_params": per_device(t_abs), "student_params": per_device(state["params"]),
            "opt_state": per_device(state["opt_state"]), "kv_caches": kv(t_cfg) + kv(s_cfg),
            "temp": int(mem.temp_size_in_bytes),
            "total": int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                         + mem.temp_size_in_bytes)}


def plan_generation(cfg, mesh_sizes, devices, role, batch, opts: sampling.Sampling, vocab=0, models=None):
    """Per-device bytes of one model's generation (``sampling.generate_stepwise``: the prefill and the
    last, widest decode chunk, compiled as evaluation runs them) for ``batch`` prompts of
    ``data.max_prompt_length`` tokens under the sampler options ``opts``:
    ``{"total", "temp", "kv_cache"}`` of the larger program."""
    devices = jax.devices()[:devices] if isinstance(devices, int) else list(devices)
    placement = sharding.Placement({**cfg.mesh.as_dict(), **mesh_sizes}, devices=devices)
    model_cfg = run_model_configs(cfg, vocab, models)[0 if role == "teacher" else 1]
    decoder = decoder_for(model_cfg, placement.rules(role), _source(cfg, role, models))
    p_sh = placement.params(decoder.info, role)
    params = {n: jax.ShapeDtypeStruct(i.shape, i.dtype, sharding=p_sh[n]) for n, i in decoder.info.items()}
    B, P, N = batch, cfg.data.max_prompt_length, opts.max_new_tokens
    mesh = placement.mesh
    row_sh = sharding.batch_sharding(mesh) if B % sharding.data_parallel_size(mesh) == 0 else sharding.replicated(mesh)
    ids = jax.ShapeDtypeStruct((B, P), np.int32, sharding=row_sh)
    prefill = sampling._prefill_jit.lower(decoder, params, ids, ids, N).compile()
    state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                         jax.eval_shape(lambda p, i: sampling.prefill(decoder, p, i, i, N), params, ids),
                         prefill.output_shardings)
    start, stop = sampling.chunks(N)[-1]
    # the static options exactly as generate_stepwise passes them (the temperature traced), so the run finds this
    chunk = sampling._chunk_jit.lower(decoder, params, state, jax.ShapeDtypeStruct((2,), np.uint32), start=start,
                                      stop=stop, prompt_len=P, opts=opts.replace(temperature=1.0),
                                      temperature=np.float32(opts.temperature)).compile()
    rows = [_bytes(c.memory_analysis()) for c in (prefill, chunk)]
    return {**max(rows, key=lambda r: r["total"]), "kv_cache": kv_cache_bytes(model_cfg, mesh, B, P + N)}


def _bytes(mem):
    return {"temp": int(mem.temp_size_in_bytes), "total": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                                               - mem.alias_size_in_bytes + mem.temp_size_in_bytes)}


def _source(cfg, role, models=None) -> str:
    """The model's original config.json as the run's loader keeps it (part of the model's structure: the
    planned step is then the run's own jitted step), "" for models without a folder."""
    if models is not None:  # the decoders the caller holds: their own
        return models[0 if role == "teacher" else 1].abstract_module().source
    path = (cfg.teacher if role == "teacher" else cfg.student).path
    if not (os.path.isfile(os.path.join(path, "config.json")) or hf.is_gguf(path)):
        return ""
    return json.dumps(hf.read_hf_config(path), sort_keys=True)


def _planned_batch(cfg, spec, batch_sharding, data, dp, lm_rows):
    """The abstract batch the run's step reads: prompts and gold responses, pre-training rows (``lm_rows``:
    whether the run has them; None: ``data.pretrain`` says), the offline caches and the packing."""
    B, P, L = spec.batch_size, cfg.data.max_prompt_length, cfg.data.max_length
    array = lambda shape, dtype=np.int32: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    i32 = lambda *shape: array(shape)
    has_lm = bool(cfg.data.pretrain) if lm_rows is None else lm_rows
    lm = i32(B, cfg.data.lm_seq_len) if spec.objective.lm_coef > 0 and has_lm else None
    return Batch(i32(B, P), i32(B, P), i32(B, L - P), i32(B, L - P), lm_ids=lm,
                 packing=_planned_packing(cfg, spec, data, dp, i32), **_planned_caches(cfg, spec, (B, L - P), array))


def _planned_caches(cfg, spec, gold, array) -> dict:
    """The batch fields of the run's offline caches (``loop.row_extras``): the teacher's samples
    (``gen.teacher_mode=offline``) ``[B, N]``, and the top-k or sampled teacher cache ``[B, R, k]``;
    ``gold``: (B, R); ``array(shape, dtype)``: an abstract batch array."""
    (B, R), out, k = gold, {}, cfg.teacher.topk
    if spec.objective.needs.teacher_samples and cfg.gen.teacher_mode == "offline":
        out.update(teacher_ids=array((B, spec.sampling.max_new_tokens), np.int32),
                   teacher_mask=array((B, spec.sampling.max_new_tokens), np.int32))
    if k and cfg.teacher.cache == "sampled":
        out.update(teacher_sampled_ids=array((B, R, k), np.int32), teacher_sampled_counts=array((B, R, k), np.uint8))
    elif k:
        out.update(teacher_topk_ids=array((B, R, k), np.int32), teacher_topk_logps=array((B, R, k), np.float32))
    return out


def _planned_packing(cfg, spec, data, dp, i32):
    """``data.packing``: the packed rows' shapes as the run lays them out (``loop.pack``) for ``data``,
    else one row per example."""
    if not cfg.data.packing:
        return None
    length = spec.gold_length or cfg.data.max_length
    rows = Batches(data, spec.batch_size, cfg.seed).packed(length, dp) if data is not None else \
        -(-spec.batch_size // dp) * dp
    return Packing(i32(rows, length), i32(rows, length), i32(rows, length),
                   i32(spec.batch_size, cfg.data.max_length - cfg.data.max_prompt_length))


def _planned_spec(cfg, mesh, batch_per_replica, data, model_cfgs):
    """The run's step spec (``loop.train_loop`` builds the same): token ids from the resolved config
    (stand-ins for a config not yet resolved), the feature term bound to the models, the data's
    longest row, and the micro-batches."""
    spec = specs.Step.of(cfg)
    g = spec.sampling
    spec = dataclasses.replace(spec, sampling=dataclasses.replace(
        g, eos_token_id=g.eos_token_id if g.eos_token_id >= 0 else 2, pad_token_id=max(g.pad_token_id, 0)))
    if batch_per_replica:
        spec = dataclasses.replace(spec, batch_size=batch_per_replica * sharding.data_parallel_size(mesh))
    if spec.feature is not None:
        spec = dataclasses.replace(spec, feature=spec.feature.bind(*model_cfgs))
    if data is not None:  # a shorter data.max_length (a variant the check tries) cuts the rows there
        spec = dataclasses.replace(spec, gold_length=min(data.longest_row(), cfg.data.max_length))
    sharding.check_batch(spec.batch_size, mesh)
    return spec.with_micro_batch(cfg.train.micro_batch, sharding.data_parallel_size(mesh))


def kv_cache_bytes(model_cfg, mesh, batch, length):
    """One model's KV cache per device: ``[2, L, B/dp, P+N, G/tensor (G when replicated), K]`` in the compute dtype,
    or int8 with a float32 scale per head and slot (``model.kv_cache=int8``)."""
    g = model_cfg.kv_heads
    g = g // mesh.shape["tensor"] if g % mesh.shape["tensor"] == 0 else g
    per_slot = (model_cfg.head_size + 4 if model_cfg.kv_cache == "int8" else  # int8 values and a float32 scale
                model_cfg.head_size * np.dtype(DTYPES[model_cfg.compute_dtype]).itemsize)
    return 2 * model_cfg.n_layers * (batch // sharding.data_parallel_size(mesh)) * length * g * per_slot


def plan_rows(cfg, mesh_sizes, targets, batch_per_replica=0) -> list[dict]:
    """:func:`plan_one` for each target; a program XLA refuses to compile (``RESOURCE_EXHAUSTED``: too large for the
    chip, e.g. a kernel's scalar memory) is a row saying so, not a traceback."""
    rows = []
    for devices in targets:
        try:
            row = plan_one(cfg, mesh_sizes, devices, batch_per_replica)
            said = f"total {row['total'] / GiB:.2f} GiB per device"
        except Exception as e:  # noqa: BLE001 -- XLA's refusal is an XlaRuntimeError; anything else is raised
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            row = refused_row(cfg, mesh_sizes, devices, e)
            said = f"does not compile ({row['refused']})"
        rows.append(row)
        print(f"{row['devices']} devices: {said}", file=sys.stderr, flush=True)
    return rows


def refused_row(cfg, mesh_sizes, devices, error) -> dict:
    """The table row of a target whose step XLA refused: its devices, mesh and the refusal's first line."""
    n = devices if isinstance(devices, int) else len(devices)
    kind = "cpu" if isinstance(devices, int) else devices[0].device_kind
    shape = sharding.mesh_shape({**cfg.mesh.as_dict(), **mesh_sizes}, n)
    text = str(error)
    first = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), text)
    return {"devices": n, "kind": kind, "refused": first[:200],
            "mesh": "x".join(f"{a}{shape[a]}" for a in sharding.AXES if a != "context" or shape[a] > 1)}


def table(rows):
    head = ("| devices | mesh | global batch | teacher params | student params | optimizer state | KV caches (both) | "
            "temporaries (all activations) | total per device | fits |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        tpu = r["kind"] in TPU_HBM  # compiled for that chip: say whether it fits that chip
        devices = f"{r['devices']} × {TPU_HBM[r['kind']][0]}" if tpu else f"{r['devices']} (XLA:CPU)"
        if "refused" in r:
            lines.append(f"| {devices} | {r['mesh']} | | | | | | | does not compile | {r['refused']} |")
            continue
        room = lambda gib: r["total"] < 0.9 * gib * GiB
        if tpu:
            gib = TPU_HBM[r["kind"]][1]
            fits = f"{'yes' if room(gib) else 'no'} ({gib} GiB)"
        else:
            fits = ", ".join(k for k, gib in DEVICES.items() if room(gib)) or "none listed"
        g = lambda k: f"{r[k] / GiB:.2f}"
        lines.append(f"| {devices} | {r['mesh']} | {r['batch']} | {g('teacher_params')} | {g('student_params')} | "
                     f"{g('opt_state')} | {g('kv_caches')} | {g('temp')} | **{g('total')}** | {fits} |")
    return "\n".join(lines) + "\n\nGiB per device; 'fits' leaves 10% headroom."
