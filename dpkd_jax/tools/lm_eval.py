"""Run lm-evaluation-harness tasks on a student that training wrote, with our JAX models (no torch).

  python -m dpkd_jax.tools.lm_eval --model=WORKDIR_OR_EXPORT --tasks=hellaswag,arc_easy [--include_path=DIR]
      [--limit=N] [--num_fewshot=K] [--batch_size=8] [--max_length=0] [--output=DIR]

``--model`` is an export folder (config.json, safetensors, tokenizer) or a run's work dir (its
``export/final``, or a demo method's ``export``). Prints lm-eval's table and writes ``lm_eval.json`` and
``lm_eval.md`` to ``--output`` (default: the model folder). Needs ``pip install 'dpkd_jax[lm_eval]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ..errors import InputError
from . import run_tool

EXPORTS = ("export/final", "export", ".")


def export_dir(model: str) -> str:
    """The export folder ``--model`` names: the folder itself, or a work dir's ``export/final`` or ``export``."""
    if not os.path.isdir(model):
        raise InputError(f"--model: {model!r} is not a directory (an export folder or a run's work dir)")
    for sub in EXPORTS:
        if os.path.isfile(os.path.join(model, sub, "config.json")):
            return os.path.normpath(os.path.join(model, sub))
    raise InputError(f"--model: {model!r} holds no exported model (config.json in it, export/final/ or export/)")


def evaluate(args) -> str:
    if importlib.util.find_spec("lm_eval") is None:
        raise InputError("lm-eval is not installed: pip install 'dpkd_jax[lm_eval]'")
    from .. import lm_eval_adapter as adapter, models
    tasks = adapter.check_tasks(args.tasks, args.include_path)  # before any weights load
    path = export_dir(args.model)
    decode, params = models.split(models.from_pretrained(path))
    lm = adapter.JaxLM(decode, params, models.load_tokenizer(path), batch_size=args.batch_size,
                       max_length=args.max_length)
    results = adapter.run_tasks(lm, tasks, include_path=args.include_path, limit=args.limit,
                                num_fewshot=args.num_fewshot)
    out = args.output or path
    return adapter.write(results, out) + f"\nwritten: {os.path.join(out, 'lm_eval.json')} and lm_eval.md"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dpkd_jax.tools.lm_eval", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an export folder or a run's work dir")
    ap.add_argument("--tasks", required=True, help="comma-separated lm-eval task (or group) names")
    ap.add_argument("--include_path", default="", help="a folder of extra task YAMLs")
    ap.add_argument("--limit", type=int, default=0, help="at most this many documents per task (0: all)")
    ap.add_argument("--num_fewshot", type=int, default=None)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=0, help="longest row in tokens (0: the model's positions)")
    ap.add_argument("--output", default="", help="where lm_eval.json and lm_eval.md go (default: the model folder)")
    return run_tool(evaluate, ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
