"""Command line: ``python -m dpkd_jax.main --config=configs/X.py [--config.a.b=value ...]``.

Exit statuses: 0 done (or preempted after a checkpoint), 2 configuration or input error
(one line on stderr, no traceback; ``--traceback`` shows it), 3 divergence, 143 a second
SIGTERM. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from . import overrides
from .errors import EXIT_DIVERGED, EXIT_INPUT, EXIT_OOM, InputError, one_line

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config file", lock_config=True)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "show the full traceback of configuration and input errors")


def init_distributed(cfg):
    """``jax.distributed.initialize`` when the config or ``DPKD_DISTRIBUTED=1`` asks for it;
    empty fields are auto-detected by JAX (TPU pods, SLURM)."""
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


def _process_index():
    try:
        import jax
        return jax.process_index()
    except Exception:  # noqa: BLE001 - before or without a backend: a single process
        return 0


def fail(message: str, status: int):
    """One line on stderr (process 0 only in a multi-host run: every process fails alike)
    and the same exit status on every process."""
    if _process_index() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    # The error is reported: a library's leftover background work (orbax's unawaited restore coroutines
    # after a failed restore) must not print "Exception ignored ..." tracebacks after it at shutdown.
    sys.unraisablehook = lambda unraisable: None
    sys.exit(status)


def compile_cache(path):
    """JAX's persistent compilation cache at ``path`` (``config.compile_cache``; "" leaves JAX's own setting):
    steps compiled by an earlier run of the same shapes are loaded instead of compiled."""
    if not path:
        return
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_compilation_cache_max_size", 4 << 30)  # least recently used entries go beyond 4 GiB
    # JAX caches only programs that took 1 s or more to compile; a run's sampler chunks, its caches' and its
    # evaluation's programs take less, and were compiled again by every run (about 2 s of a warm start-up:
    # docs/performance.md)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(cfg):
    """The ConfigDict becomes the validated :class:`runspec.RunSpec` here, once; everything below takes the spec."""
    from .config import validate
    spec = validate(cfg)
    compile_cache(spec.compile_cache)
    if spec.mode == "check":
        from .preflight import preflight
        return preflight(spec)
    if spec.mode == "train":  # one training run per work dir
        from .checkpoint import WorkdirLock
        with WorkdirLock(spec.workdir):
            return _dispatch(spec)
    return _dispatch(spec)


def _dispatch(spec):
    if spec.experiment.enabled:
        from .experiment import run_experiment
        return run_experiment(spec)
    if spec.demo.enabled:
        from .demo import run_demo
        return run_demo(spec)
    from .pipeline import run as run_pipeline
    return run_pipeline(spec)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}", EXIT_INPUT)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    cfg = _CONFIG.value
    from .loop import Diverged, Preempted
    from . import cpu_runtime
    try:
        cpu_runtime.synchronous_cpu()
        init_distributed(cfg)
        cpu_runtime.keep_heap_mapped()
        run(cfg)
    except Preempted as e:
        print(e, flush=True)
        sys.exit(0)
    except Diverged as e:
        fail(str(e), EXIT_DIVERGED)
    except InputError as e:
        if _TRACEBACK.value:
            raise
        fail(one_line(e), EXIT_INPUT)
    except Exception as e:  # noqa: BLE001 -- only XLA's out-of-memory becomes one line; the rest keep a traceback
        from .memory import out_of_memory
        line = out_of_memory(e)
        if line is None or _TRACEBACK.value:
            raise
        fail(line, EXIT_OOM)


def parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override (``--config.trian.steps``)
    as one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except SystemExit:
        # absl prints the help and exits 1; asking for help is not an error
        if any(a in ("--help", "-h", "-?", "--helpshort", "--helpfull") for a in argv[1:]):
            sys.exit(0)
        raise
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        if "--traceback" in argv:
            raise
        line = overrides.explain_argv(argv)  # an unknown field or a wrong type, in plain words
        if line is None:
            msg = one_line(e)
            key = msg.split("'")[1] if msg.count("'") >= 2 else None
            culprit = next((a for a in argv[1:] if key and a.startswith("--") and f".{key}" in a), None)
            line = f"{culprit + ': ' if culprit else ''}{msg}"
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INPUT)


def entry():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
