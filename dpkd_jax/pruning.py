"""Removing whole decoder layers from a model (daDPO's setting: a pruned model recovered by distillation from
the model it was cut from); the demo, the experiment and ``tools/prune.py`` build their students with it."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from . import models
from .errors import InputError


def parse_layers(spec: str, n_layers: int, where: str = "--keep-layers") -> tuple[int, ...]:
    """``"0-11,26,28-29"`` -> (0, ..., 11, 26, 28, 29): sorted, unique, each in [0, n_layers)."""
    keep = set()
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            lo, _, hi = part.partition("-")
            keep.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise InputError(f"{where}: {spec!r} is not a list of layers such as 0-11,26-29") from None
    bad = sorted(i for i in keep if not 0 <= i < n_layers)
    if bad or not keep:
        raise InputError(f"{where}: {spec!r} names layers outside 0-{n_layers - 1} (the model has {n_layers})"
                         if bad else f"{where}: no layer kept")
    return tuple(sorted(keep))


def prune(decoder, params: dict, keep: tuple[int, ...]):
    """(decode call, params) of the model with only the decoder layers ``keep``: block
    parameters are stacked over a leading layer axis, so this is one gather per array;
    per-layer attention windows follow their layers."""
    cfg = decoder.config
    idx = jnp.asarray(keep)
    windows = cfg.attention.layer_windows
    att = dataclasses.replace(cfg.attention, layer_windows=tuple(windows[i] for i in keep) if windows else ())
    module = decoder.abstract_module()
    new_decoder = models.decoder_for(cfg.replace(n_layers=len(keep), attention=att), module.rules, module.source)
    return new_decoder, {k: (v[idx] if k.startswith("blocks/") else v) for k, v in params.items()}
