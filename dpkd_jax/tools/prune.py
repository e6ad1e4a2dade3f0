"""Build a smaller student by removing whole decoder layers from a model (daDPO's setting:
a pruned model recovered by distillation from the model it was cut from).

  python -m dpkd_jax.tools.prune SRC OUT_DIR --keep-layers 0-11,26-29

``SRC`` is an HF folder, a ``.gguf`` file or an ``asset:`` name; ``OUT_DIR`` gets an HF folder
(config, safetensors, tokenizer) with only the kept layers, in their order.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax.numpy as jnp

from ..errors import InputError
from . import run_tool


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
    from .. import models
    cfg = decoder.config
    idx = jnp.asarray(keep)
    windows = cfg.attention.layer_windows
    att = dataclasses.replace(cfg.attention, layer_windows=tuple(windows[i] for i in keep) if windows else ())
    module = decoder.abstract_module()
    new_decoder = models.decoder_for(cfg.replace(n_layers=len(keep), attention=att), module.rules, module.source)
    return new_decoder, {k: (v[idx] if k.startswith("blocks/") else v) for k, v in params.items()}


def prune_checkpoint(src: str, out_dir: str, keep_spec: str) -> str:
    from .. import models
    from ..assets import resolve
    src = resolve(src)
    decoder, params = models.split(models.from_pretrained(src))
    keep = parse_layers(keep_spec, decoder.config.n_layers)
    models.save_pretrained(models.merge(*prune(decoder, params, keep)), out_dir)
    models.load_tokenizer(src).save_pretrained(out_dir)
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dpkd_jax.tools.prune", description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out_dir")
    ap.add_argument("--keep-layers", required=True, help="layers to keep, e.g. 0-11,26-29")
    args = ap.parse_args(argv)
    return run_tool(prune_checkpoint, args.src, args.out_dir, args.keep_layers)


if __name__ == "__main__":
    sys.exit(main())
