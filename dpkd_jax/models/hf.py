"""Hugging Face checkpoint folders in and out: config.json + safetensors.

Loading is tensor by tensor: one stacked parameter is assembled on the host at
a time and placed on device (with its sharding when one is given) before the
next, so a 13B checkpoint never needs twice its size in host memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from . import gpt2, opt
from .params import hf_names
from .transformer import DTYPES, CausalLM, Config, param_shapes

FAMILIES = {"gpt2": gpt2, "opt": opt}
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _family(model_type, where):
    if model_type not in FAMILIES:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported (supported: {sorted(FAMILIES)})")
    return FAMILIES[model_type]


def _dtype_name(dtype):
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name}")
    return name


def load_config(path, *, dtype=jnp.float32, compute_dtype=None, scan_layers=True) -> Config:
    """Our Config from ``path/config.json``."""
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{cfg_file}: no config.json in the checkpoint folder {path!r}")
    with open(cfg_file) as f:
        hf = json.load(f)
    if "model_type" not in hf:
        raise ValueError(f"{cfg_file}: field 'model_type' is missing")
    fam = _family(hf["model_type"], cfg_file)
    try:
        return fam.config_from_hf(hf, param_dtype=_dtype_name(dtype),
                                  compute_dtype=_dtype_name(compute_dtype or dtype), scan_layers=scan_layers)
    except KeyError as e:
        raise ValueError(f"{cfg_file}: field {e.args[0]!r} is missing") from None


class _Reader:
    """Tensor-by-tensor access to the checkpoint's files, by HF name."""

    def __init__(self, path, allow_pickle):
        self.path = path
        index = os.path.join(path, SAFE_INDEX)
        single = os.path.join(path, "model.safetensors")
        self._pickled = None
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {name: os.path.join(path, fn) for name, fn in weight_map.items()}
        elif os.path.isfile(single):
            with safe_open(single, "np") as f:
                self.files = {name: single for name in f.keys()}
        elif any(os.path.isfile(os.path.join(path, p)) for p in PICKLE_FILES):
            if not allow_pickle:
                raise ValueError(
                    f"{path}: only a pickle checkpoint (pytorch_model.bin) is here. Unpickling runs arbitrary "
                    "code, so it is refused; convert it to safetensors, or pass allow_pickle=True if you trust it.")
            self._pickled = self._load_pickle(path)
            self.files = {name: None for name in self._pickled}
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors, {SAFE_INDEX} or pytorch_model.bin")
        self._open = {}

    @staticmethod
    def _load_pickle(path):
        import torch  # only for explicitly allowed pickle checkpoints
        files = [os.path.join(path, "pytorch_model.bin")]
        idx = os.path.join(path, "pytorch_model.bin.index.json")
        if os.path.isfile(idx):
            with open(idx) as f:
                files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
        out = {}
        for fn in files:
            for k, v in torch.load(fn, map_location="cpu", weights_only=False).items():
                out[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        return out

    def get(self, name):
        if self._pickled is not None:
            return self._pickled[name]
        fn = self.files[name]
        if fn not in self._open:
            self._open[fn] = safe_open(fn, "np")
        return self._open[fn].get_tensor(name)


def from_pretrained(path, *, dtype=jnp.float32, compute_dtype=None, allow_pickle=False, scan_layers=True,
                    shardings: Callable[[str, tuple], jax.sharding.Sharding] | dict | None = None) -> CausalLM:
    """Load a local HF GPT-2 / OPT checkpoint folder as a :class:`CausalLM`.

    ``dtype`` is the parameter dtype (``compute_dtype`` defaults to it).
    ``shardings`` maps our parameter name to a ``jax.sharding.Sharding``
    (a dict, or a callable ``(name, logical_axes) -> Sharding``); each
    parameter is placed with it as soon as it is assembled.
    Raises ValueError naming the tensor or field on any mismatch.
    """
    cfg = load_config(path, dtype=dtype, compute_dtype=compute_dtype, scan_layers=scan_layers)
    fam = FAMILIES[cfg.model_type]
    table = param_shapes(cfg)
    rows = [r for r in fam.WEIGHTS if r.ours in table]
    reader = _Reader(path, allow_pickle)
    expected = set(hf_names(rows, cfg.n_layers))
    present = set(reader.files)
    missing = sorted(expected - present)
    if missing:
        raise ValueError(f"{path}: missing weights {missing[:5]}{' …' if len(missing) > 5 else ''} "
                         f"({len(missing)} in all) for a {cfg.model_type} with this config.json")
    unexpected = sorted(n for n in present - expected if not any(s in n for s in fam.IGNORED))
    if unexpected:
        raise ValueError(f"{path}: unexpected weights {unexpected[:5]}{' …' if len(unexpected) > 5 else ''} "
                         f"({len(unexpected)} in all): the checkpoint does not match its config.json")

    np_dtype = np.dtype(DTYPES[cfg.param_dtype])
    params = {}
    for ours, (shape, axes) in table.items():
        buf = np.empty(shape, np_dtype)
        for row in (r for r in rows if r.ours == ours):
            for i in (range(cfg.n_layers) if row.per_layer else [None]):
                name = row.hf.format(i=i)
                dst = buf if i is None else buf[i]
                dst = dst[row.sub] if row.sub else dst
                src = reader.get(name)
                try:
                    dst[...] = row.to_ours(src, dst.shape)
                except ValueError:
                    raise ValueError(f"{path}: weight {name} has shape {tuple(src.shape)}, which does not fit "
                                     f"our {ours}{list(shape)} (expected {int(np.prod(dst.shape))} elements "
                                     f"as {dst.shape}{' after a transpose' if row.transpose else ''})") from None
        sharding = shardings(ours, axes) if callable(shardings) else (shardings or {}).get(ours)
        params[ours] = jax.device_put(buf, sharding) if sharding is not None else jnp.asarray(buf)
        del buf
    return CausalLM(cfg, params)


def _hf_config(cfg: Config) -> dict:
    fam = FAMILIES[cfg.model_type]
    out = json.loads(cfg.hf_config) if cfg.hf_config else {}
    out.update(fam.config_to_hf(cfg))
    out["torch_dtype"] = out["dtype"] = cfg.param_dtype
    return out


def save_pretrained(model: CausalLM, path, *, max_shard_bytes: int = 5 * 2**30, dtype=None):
    """Write ``config.json`` + safetensors (sharded with an index above
    ``max_shard_bytes``) that ``transformers.AutoModelForCausalLM`` loads.
    Only process 0 should call this in a multi-host run."""
    cfg = model.config
    fam = FAMILIES[cfg.model_type]
    table = param_shapes(cfg)
    params = model.arrays()
    out_dtype = np.dtype(DTYPES[_dtype_name(dtype or cfg.param_dtype)])
    os.makedirs(path, exist_ok=True)
    shards, current, size = [], {}, 0
    for row in (r for r in fam.WEIGHTS if r.ours in table):
        full = np.asarray(jax.device_get(params[row.ours])).astype(out_dtype)
        for i in (range(cfg.n_layers) if row.per_layer else [None]):
            part = full if i is None else full[i]
            part = part[row.sub] if row.sub else part
            t = row.to_hf(part)
            if size + t.nbytes > max_shard_bytes and current:
                shards.append(current)
                current, size = {}, 0
            current[row.hf.format(i=i)] = t
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
        json.dump(_hf_config(cfg), f, indent=1, sort_keys=True)


# ----------------------------------------------------------- tokenizers ---

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def load_tokenizer(path):
    """The tokenizer saved beside the checkpoint, via ``transformers.AutoTokenizer``."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def _vocab_digest(path):
    """Hash of the tokenizer's vocabulary files (tokenizer.json, or vocab+merges)."""
    for group in (("tokenizer.json",), ("vocab.json", "merges.txt")):
        files = [os.path.join(path, g) for g in group]
        if all(os.path.isfile(f) for f in files):
            h = hashlib.sha256()
            if group == ("tokenizer.json",):
                with open(files[0]) as f:
                    tok = json.load(f)
                h.update(json.dumps(tok.get("model", {}), sort_keys=True).encode())
                h.update(json.dumps(tok.get("added_tokens", []), sort_keys=True).encode())
            else:
                for fn in files:
                    with open(fn, "rb") as f:
                        h.update(f.read())
            return "+".join(group), h.hexdigest()
    return None, None


def check_same_vocabulary(teacher_path, student_path):
    """Raise ValueError explaining how teacher and student vocabularies differ, if they do."""
    t_cfg, s_cfg = load_config(teacher_path), load_config(student_path)
    if t_cfg.vocab_size != s_cfg.vocab_size:
        raise ValueError(
            f"teacher and student vocabularies differ in size: {teacher_path}/config.json has vocab_size="
            f"{t_cfg.vocab_size}, {student_path}/config.json has vocab_size={s_cfg.vocab_size}. DPKD compares "
            "log-probabilities of the same token ids under both models, so they must share a tokenizer.")
    (t_kind, t_hash), (s_kind, s_hash) = _vocab_digest(teacher_path), _vocab_digest(student_path)
    if t_hash is None or s_hash is None:
        missing = teacher_path if t_hash is None else student_path
        raise ValueError(f"{missing}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt) to compare")
    if t_kind == s_kind and t_hash != s_hash:
        raise ValueError(
            f"teacher and student tokenizers differ: {t_kind} in {teacher_path} and {student_path} have the same "
            "vocab_size but different contents, so the same id means different text in the two models.")
    if t_kind != s_kind:
        t_tok, s_tok = load_tokenizer(teacher_path), load_tokenizer(student_path)
        if t_tok.get_vocab() != s_tok.get_vocab():
            raise ValueError(f"teacher and student tokenizers differ: the token→id maps of {teacher_path} and "
                             f"{student_path} are not the same")
