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

from .config import DTYPES, Config
from .registry import family
from .transformer import CausalLM, param_table
from .weights import assemble, disassemble, hf_names
from ..errors import InputError, MissingFile

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
        from .gguf_file import GGUFSource
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
    execution fields (``rules``, ``remat``, ``output_vocab``)."""
    hf = read_hf_config(path)
    where = path if is_gguf(path) else os.path.join(path, "config.json")
    fam = family(hf["model_type"], where)
    try:
        cfg = fam.config_from_hf(hf, param_dtype=_dtype_name(dtype),
                                 compute_dtype=_dtype_name(compute_dtype or dtype), scan_layers=scan_layers)
    except KeyError as e:
        raise InputError(f"{where}: field {e.args[0]!r} is missing") from None
    except ValueError as e:
        msg = str(e)
        raise InputError(msg if msg.startswith(("config.json", where)) else f"{where}: {msg}") from None
    return cfg.replace(**overrides) if overrides else cfg


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
            from .gguf_file import GGUFSource
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
                    shardings: Callable[[str, tuple], jax.sharding.Sharding] | dict | None = None,
                    **overrides) -> CausalLM:
    """Load a local HF checkpoint folder (any registered family) or a ``.gguf`` file.

    ``dtype`` is the parameter dtype (``compute_dtype`` defaults to it).
    ``shardings`` maps our parameter name to a ``jax.sharding.Sharding`` (a dict,
    or a callable ``(name, logical_axes) -> Sharding``); each parameter is placed
    with it as soon as it is assembled. ``overrides``: execution fields of Config.
    Raises ValueError naming the file, tensor or field on any mismatch.
    """
    cfg = load_config(path, dtype=dtype, compute_dtype=compute_dtype, scan_layers=scan_layers, **overrides)
    fam = family(cfg.model_type)
    table = param_table(cfg)
    rows = [r for r in fam.weights(cfg) if r.ours in table]
    reader = _Reader(path, allow_pickle)
    _check_names(path, cfg, rows, set(reader.files), fam.IGNORED)
    params = {}
    np_dtype = np.dtype(DTYPES[cfg.param_dtype])
    for ours, buf in assemble(table, rows, reader.get, cfg.n_layers, np_dtype, where=str(path)):
        sharding = shardings(ours, table[ours][1]) if callable(shardings) else (shardings or {}).get(ours)
        params[ours] = jax.device_put(buf, sharding) if sharding is not None else jnp.asarray(buf)
        del buf
    return CausalLM(cfg, params)


def hf_config_dict(cfg: Config) -> dict:
    out = family(cfg.model_type).config_to_hf(cfg)
    out["torch_dtype"] = out["dtype"] = cfg.param_dtype
    return out


def save_pretrained(model: CausalLM, path, *, max_shard_bytes: int = 5 * 2**30, dtype=None):
    """Write ``config.json`` + safetensors (sharded with an index above
    ``max_shard_bytes``) that ``transformers.AutoModelForCausalLM`` loads.
    Only process 0 should call this in a multi-host run."""
    cfg = model.config
    fam = family(cfg.model_type)
    table = param_table(cfg)
    host = {k: np.asarray(jax.device_get(v)) for k, v in model.arrays().items()}
    out_dtype = np.dtype(DTYPES[_dtype_name(dtype or cfg.param_dtype)])
    os.makedirs(path, exist_ok=True)
    shards, current, size = [], {}, 0
    for name, t in disassemble(table, fam.weights(cfg), host, cfg.n_layers, out_dtype):
        if size + t.nbytes > max_shard_bytes and current:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.nbytes
    shards.append(current)
    for old in os.listdir(path):
        if old.endswith(".safetensors") or old == SAFE_INDEX:
            os.remove(os.path.join(path, old))
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fn = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, fn), metadata=meta)
            weight_map.update({n: fn for n in shard})
        total = sum(t.nbytes for s in shards for t in s.values())
        with open(os.path.join(path, SAFE_INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config_dict(cfg), f, indent=1, sort_keys=True)
