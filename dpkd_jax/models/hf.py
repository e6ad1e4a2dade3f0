"""Hugging Face checkpoint folders (config.json + safetensors) and GGUF files in,
HF folders out, through the families' weight tables and one shared loader.

Loading is tensor by tensor: one stacked parameter is assembled on the host at a
time and placed on device (with its sharding when one is given) before the next,
so a 13B checkpoint never needs twice its size in host memory. Every unreadable
file is named with what is wrong with it.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from . import decoder as split_lib
from .components import VECTOR_KINDS, init_value, quantize_int8
from .config import DTYPES, Config, LoRA
from .lora import dequantize_int8, lora_delta
from .registry import family
from .transformer import CausalLM
from .weights import assemble, disassemble, hf_names
from ..sharding import DEFAULT_RULES
from ..errors import InputError, MissingFile
from .gguf_file import GGUFSource

SAFE_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def is_gguf(path) -> bool:
    return str(path).endswith(".gguf")


def _dtype_name(dtype):
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {name}")
    return name


def read_json(path, what="file"):
    """A JSON file, or a ValueError naming it and what is wrong."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFile(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed JSON ({e}); re-download or re-export the checkpoint") from None


def read_hf_config(path) -> dict:
    """The HF config dict of a checkpoint folder (``config.json``) or a ``.gguf`` file."""
    if is_gguf(path):
        return GGUFSource(path).hf_config()
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise MissingFile(f"{cfg_file}: no config.json in the checkpoint folder {path!r}")
    hf = read_json(cfg_file, "config.json")
    if not isinstance(hf, dict) or "model_type" not in hf:
        raise InputError(f"{cfg_file}: field 'model_type' is missing")
    return hf


def load_config(path, *, dtype=jnp.float32, compute_dtype=None, scan_layers=True, **overrides) -> Config:
    """Our Config from ``path/config.json`` or a ``.gguf`` file; ``overrides`` set
    execution fields (``remat``, ``output_vocab``, ``lora``, ``quantize``)."""
    hf = read_hf_config(path)
    where = path if is_gguf(path) else os.path.join(path, "config.json")
    fam = family(hf["model_type"], where)
    try:
        cfg = fam.config_from_hf(hf, param_dtype=_dtype_name(dtype),
                                 compute_dtype=_dtype_name(compute_dtype or dtype), scan_layers=scan_layers)
        return cfg.replace(**overrides) if overrides else cfg
    except KeyError as e:
        raise InputError(f"{where}: field {e.args[0]!r} is missing") from None
    except ValueError as e:
        msg = str(e)
        raise InputError(msg if msg.startswith(("config.json", where)) else f"{where}: {msg}") from None


def _safe_open(fn):
    try:
        return safe_open(fn, "np")
    except FileNotFoundError:
        raise MissingFile(f"{fn}: shard named in the checkpoint's index is missing") from None
    except Exception as e:  # SafetensorError: truncated or corrupt header
        raise InputError(f"{fn}: truncated or corrupt safetensors file ({e}); an interrupted copy leaves this: "
                         "copy or download it again") from None


class _Reader:
    """Tensor-by-tensor access to a checkpoint's files, by HF name."""

    def __init__(self, path, allow_pickle):
        self.path = path
        self._pickled = None
        self._open = {}
        if is_gguf(path):
            self._gguf = GGUFSource(path)
            self.files = {n: path for n in self._gguf.names()}
            return
        self._gguf = None
        index = os.path.join(path, SAFE_INDEX)
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(index):
            idx = read_json(index, SAFE_INDEX)
            if not isinstance(idx, dict) or not isinstance(idx.get("weight_map"), dict):
                raise InputError(f"{index}: field 'weight_map' is missing; re-download or re-export the checkpoint")
            self.files = {name: os.path.join(path, fn) for name, fn in idx["weight_map"].items()}
            for fn in sorted(set(self.files.values())):
                if not os.path.isfile(fn):
                    raise MissingFile(f"{fn}: shard named in {index} is missing")
        elif os.path.isfile(single):
            self._open[single] = _safe_open(single)
            self.files = {name: single for name in self._open[single].keys()}
        elif any(os.path.isfile(os.path.join(path, p)) for p in PICKLE_FILES):
            if not allow_pickle:
                raise InputError(
                    f"{path}: only a pickle checkpoint (pytorch_model.bin) is here. Unpickling runs arbitrary "
                    "code, so it is refused; convert it to safetensors, or pass allow_pickle=True if you trust it.")
            self._pickled = self._load_pickle(path)
            self.files = {name: None for name in self._pickled}
        else:
            raise MissingFile(f"{path}: no model.safetensors, {SAFE_INDEX} or pytorch_model.bin")

    @staticmethod
    def _load_pickle(path):
        import torch  # only for explicitly allowed pickle checkpoints
        files = [os.path.join(path, "pytorch_model.bin")]
        idx = os.path.join(path, "pytorch_model.bin.index.json")
        if os.path.isfile(idx):
            files = sorted({os.path.join(path, v) for v in read_json(idx)["weight_map"].values()})
        out = {}
        for fn in files:
            for k, v in torch.load(fn, map_location="cpu", weights_only=False).items():
                out[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        return out

    def get(self, name):
        if self._gguf is not None:
            return self._gguf.get(name)
        if self._pickled is not None:
            return self._pickled[name]
        fn = self.files[name]
        if fn not in self._open:
            self._open[fn] = _safe_open(fn)
        try:
            return self._open[fn].get_tensor(name)
        except Exception as e:
            raise InputError(f"{fn}: tensor {name} cannot be read ({e}); the file is truncated or corrupt: "
                             "copy or download it again") from None


def _check_names(path, cfg, rows, present, ignored):
    expected = set(hf_names(rows, cfg.n_layers))
    missing = sorted(expected - present)
    if missing:
        raise InputError(f"{path}: missing weights {missing[:5]}{' …' if len(missing) > 5 else ''} "
                         f"({len(missing)} in all) for a {cfg.model_type} with this config")
    unexpected = sorted(n for n in present - expected if not any(s in n for s in ignored))
    if unexpected:
        raise InputError(f"{path}: unexpected weights {unexpected[:5]}{' …' if len(unexpected) > 5 else ''} "
                         f"({len(unexpected)} in all): the checkpoint does not match its config")


def from_pretrained(path, *, dtype=jnp.float32, compute_dtype=None, allow_pickle=False, scan_layers=True,
                    rules: tuple = DEFAULT_RULES,
                    shardings: Callable[[str, tuple], jax.sharding.Sharding] | dict | None = None,
                    seed: int = 0, **overrides) -> CausalLM:
    """Load a local HF checkpoint folder (any registered family) or a ``.gguf`` file as an
    ``nnx.Module`` (:class:`CausalLM`).

    ``dtype`` is the parameter dtype (``compute_dtype`` defaults to it). ``rules`` map the
    model's logical axes to mesh axes for its activation constraints. ``shardings`` maps our
    parameter name to a ``jax.sharding.Sharding`` (a dict, or a callable
    ``(name, logical_axes) -> Sharding``); each parameter is placed with it as soon as it is
    assembled. ``overrides``: execution fields of Config (``lora=LoRA(rank=16)`` adds
    adapters initialised from ``seed``; ``quantize="int8"`` stores the projections in int8).
    Raises ``InputError`` naming the file, tensor or field on any mismatch.
    """
    cfg = load_config(path, dtype=dtype, compute_dtype=compute_dtype, scan_layers=scan_layers, **overrides)
    source = json.dumps(read_hf_config(path), sort_keys=True)
    decoder, _ = split_lib.split(split_lib.abstract(cfg, tuple(rules), source))
    info = decoder.info
    fam = family(cfg.model_type)
    rows = [r for r in fam.weights(cfg) if r.ours in info]
    reader = _Reader(path, allow_pickle)
    _check_names(path, cfg, rows, set(reader.files), fam.IGNORED)
    place = lambda name, a: _place(a, shardings, name, info[name].axes)
    params = {}
    table = {r.ours: (info[r.ours].shape, info[r.ours].axes) for r in rows}
    host_dtype = np.dtype(DTYPES[cfg.param_dtype])
    for ours, buf in assemble(table, rows, reader.get, cfg.n_layers, host_dtype, where=str(path)):
        if info[ours].dtype == jnp.int8:  # a weight-only int8 projection: values and per-channel scales
            scale_name = ours.rsplit("/", 1)[0] + "/scale"
            n_in = len(info[ours].shape) - len(info[scale_name].shape)
            buf, scale = quantize_int8(buf, n_in, stacked=ours.startswith("blocks/"))
            params[scale_name] = place(scale_name, scale)
        params[ours] = place(ours, buf)
        del buf
    key = jax.random.PRNGKey(seed)
    for i, name in enumerate(n for n in decoder.names if n not in params):  # adapters: not in the checkpoint
        p = info[name]
        params[name] = place(name, init_value(p.kind, p.shape, p.dtype, jax.random.fold_in(key, i)))
    return decoder.module(params)


def _place(array, shardings, name, axes):
    sharding = shardings(name, axes) if callable(shardings) else (shardings or {}).get(name)
    return jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)


def hf_config_dict(cfg: Config, source: str = "") -> dict:
    """config.json: the original (``source``, JSON text) with our fields written over it."""
    out = json.loads(source) if source else {}
    out.update(family(cfg.model_type).config_to_hf(cfg))
    out["torch_dtype"] = out["dtype"] = cfg.param_dtype
    return out


def export_arrays(model: CausalLM) -> dict[str, np.ndarray]:
    """The model's weights as plain float host arrays under the base names: LoRA adapters
    merged into their projections (``w + (alpha/r) A B``), int8 projections dequantized."""
    decoder, params = split_lib.split(model)
    host = {k: np.asarray(jax.device_get(v)) for k, v in params.items()}
    out = {}
    for name, p in decoder.info.items():
        if p.kind in ("lora_a", "lora_b", "quant_scale"):
            continue
        w = host[name]
        stem = name.rsplit("/", 1)[0]
        if p.dtype == jnp.int8:
            w = dequantize_int8(w, host[stem + "/scale"], stacked=name.startswith("blocks/"))
        if p.kind == "weight" and stem + "/lora_a" in host:
            w = w.astype(np.float32) + lora_delta(host[stem + "/lora_a"], host[stem + "/lora_b"],
                                                  model.config.lora, stacked=name.startswith("blocks/"))
        out[name] = w
    return out


def save_pretrained(model: CausalLM, path, *, max_shard_bytes: int = 5 * 2**30, dtype=None):
    """Write ``config.json`` + safetensors (sharded with an index above
    ``max_shard_bytes``) that ``transformers.AutoModelForCausalLM`` loads; adapters are
    merged and int8 weights dequantized (:func:`export_arrays`). Only process 0 should call
    this in a multi-host run."""
    cfg = model.config
    fam = family(cfg.model_type)
    host = export_arrays(model)
    info = split_lib.param_info(model)
    table = {n: (info[n].shape, info[n].axes) for n in host}
    vectors = frozenset(n for n in host if info[n].kind in VECTOR_KINDS)
    out_dtype = np.dtype(DTYPES[_dtype_name(dtype or cfg.param_dtype)])
    os.makedirs(path, exist_ok=True)
    tensors = disassemble(table, fam.weights(cfg), host, cfg.n_layers, out_dtype, vectors)
    write_safetensors(tensors, path, max_shard_bytes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config_dict(cfg.replace(quantize="none", lora=LoRA()), model.source), f, indent=1,
                  sort_keys=True)


def write_safetensors(tensors, path, max_shard_bytes: int, name: str = "model", fmt: str = "pt"):
    """``(name, array)`` pairs into ``<name>.safetensors``, or shards with an index above
    ``max_shard_bytes``; older shards of that name are removed first."""
    shards, current, size = [], {}, 0
    for key, t in tensors:
        if size + t.nbytes > max_shard_bytes and current:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += t.nbytes
    shards.append(current)
    for old in os.listdir(path):
        if old.startswith(name) and (old.endswith(".safetensors") or old == f"{name}.safetensors.index.json"):
            os.remove(os.path.join(path, old))
    meta = {"format": fmt}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, f"{name}.safetensors"), metadata=meta)
        return
    weight_map = {}
    for k, shard in enumerate(shards):
        fn = f"{name}-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, fn), metadata=meta)
        weight_map.update({n: fn for n in shard})
    total = sum(t.nbytes for s in shards for t in s.values())
    with open(os.path.join(path, f"{name}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
