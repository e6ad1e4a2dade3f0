"""Convert a GGUF file into a Hugging Face folder (config.json, safetensors, tokenizer
files with the chat template) that transformers loads with the same logits.

  python -m dpkd_jax.tools.convert IN.gguf OUT_DIR [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import os
import sys
from ..errors import InputError
from . import run_tool


def convert(gguf_path: str, out_dir: str, dtype: str = "float32") -> str:
    import jax.numpy as jnp
    from .. import models
    if not models.is_gguf(gguf_path) or not os.path.isfile(gguf_path):
        raise InputError(f"{gguf_path}: not a .gguf file")
    model = models.from_pretrained(gguf_path, dtype=jnp.dtype(dtype))
    tok = models.load_tokenizer(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    models.save_pretrained(model, out_dir)
    tok.save_pretrained(out_dir)  # tokenizer.json + tokenizer_config.json with the chat template
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dpkd_jax.tools.convert", description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args(argv)
    return run_tool(convert, args.gguf, args.out_dir, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
