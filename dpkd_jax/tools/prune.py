"""Build a smaller student by removing whole decoder layers from a model (daDPO's setting:
a pruned model recovered by distillation from the model it was cut from).

  python -m dpkd_jax.tools.prune SRC OUT_DIR --keep-layers 0-11,26-29

``SRC`` is an HF folder, a ``.gguf`` file or an ``asset:`` name; ``OUT_DIR`` gets an HF folder
(config, safetensors, tokenizer) with only the kept layers, in their order.
"""

from __future__ import annotations

import argparse
import sys

from .. import models
from ..assets import resolve
from ..pruning import parse_layers, prune  # noqa: F401  (tools.prune.parse_layers, as before)
from . import run_tool


def prune_checkpoint(src: str, out_dir: str, keep_spec: str) -> str:
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
