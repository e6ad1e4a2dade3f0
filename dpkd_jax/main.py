"""Command line: ``python -m dpkd_jax.main --config=configs/X.py [--config.a.b=value ...]``."""

from __future__ import annotations

import logging

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config file", lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .config import validate
    cfg = validate(_CONFIG.value)
    if cfg.demo.enabled:
        from .demo import run_demo
        run_demo(cfg)
    else:
        from .pipeline import run
        run(cfg)


def entry():
    app.run(main)


if __name__ == "__main__":
    entry()
