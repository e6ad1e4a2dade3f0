"""Command line: ``python -m dpkd_jax.main --config=configs/X.py [--config.a.b=value ...]``."""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config file", lock_config=True)


def init_distributed(cfg):
    """``jax.distributed.initialize`` when the config or ``DPKD_DISTRIBUTED=1`` asks for it;
    empty fields are auto-detected by JAX (TPU pod slices, SLURM)."""
    d = cfg.distributed
    if not (d.enabled or os.environ.get("DPKD_DISTRIBUTED") == "1"):
        return
    import jax
    # Cross-process collectives for the CPU backend (tests, CPU clusters); GPU/TPU ignore it.
    # Set before the first backend use.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if d.coordinator_address:
        kw["coordinator_address"] = d.coordinator_address
    if d.num_processes > 0:
        kw["num_processes"] = d.num_processes
    if d.process_id >= 0:
        kw["process_id"] = d.process_id
    jax.distributed.initialize(**kw)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    cfg = _CONFIG.value
    init_distributed(cfg)
    from .config import validate
    from .loop import Diverged, Preempted
    cfg = validate(cfg)
    try:
        if cfg.demo.enabled:
            from .demo import run_demo
            run_demo(cfg)
        else:
            from .pipeline import run
            run(cfg)
    except Preempted as e:
        print(e, flush=True)
        sys.exit(0)
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


def entry():
    app.run(main)


if __name__ == "__main__":
    entry()
