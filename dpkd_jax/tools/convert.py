"""Convert a GGUF file into a Hugging Face folder (config.json, safetensors, tokenizer
files with the chat template) that transformers loads with the same logits.

  python -m dpkd_jax.tools.convert IN.gguf OUT_DIR [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import sys

from ..models.convert import gguf_to_hf as convert
from . import run_tool


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dpkd_jax.tools.convert", description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args(argv)
    return run_tool(convert, args.gguf, args.out_dir, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
