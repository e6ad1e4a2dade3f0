"""Fit the machine: a run's memory known before it starts, and an out-of-memory that is one line.

:func:`fit` compiles the run's train step on abstract shapes (the planner's compile,
``tools/plan.plan_one``: no weights are read) and compares its per-device bytes (arguments,
outputs and temporaries from ``memory_analysis()``) with the device's :func:`capacity`. Over
capacity it stops in one line that names what would fit, each figure from a compile of that
variant: the largest batch per device, the longest response at this batch, and
``train.micro_batch``, ``model.remat`` or ``model.attention_kernel``. ``train.micro_batch="auto"``
is resolved here: the largest micro-batch whose step fits.

:func:`where` / :func:`out_of_memory` turn an out-of-memory that still happens at run time
(a shape the estimate missed, fragmentation, another process) into one line naming where it
happened, the shapes, the start-up estimate and the advice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource

import jax

from .errors import InputError

GiB = 2**30
_state = {"where": "start-up", "shapes": "", "estimate": ""}


def capacity(limit_gib: float = 0.0) -> tuple[int, str]:
    """(bytes one device may use, where that figure comes from): ``check.memory_limit_gib`` when
    set; an accelerator's ``memory_stats()["bytes_limit"]``; on CPU the least of the cgroup limit,
    ``RLIMIT_AS`` and available memory, shared by the host's devices."""
    if limit_gib:
        return int(limit_gib * GiB), "check.memory_limit_gib"
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]), f"{dev.device_kind} memory"
    found = [(b, what) for b, what in ((_cgroup_limit(), "the cgroup limit"), (_rlimit_as(), "RLIMIT_AS"),
                                      (_available(), "available memory")) if b]
    b, what = min(found) if found else (1 << 62, "unknown")
    n = jax.local_device_count()
    return b // n, what + (f" / {n} devices" if n > 1 else "")


def _cgroup_limit() -> int:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return 0


def _rlimit_as() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return 0 if soft == resource.RLIM_INFINITY else soft


def _available() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclasses.dataclass(frozen=True)
class Need:
    """One compiled program's bytes per device."""
    program: str
    total: int
    temp: int

    def gib(self) -> str:
        return f"{self.total / GiB:.2f} GiB"


def step_need(cfg, mesh_sizes, vocab=0, **changes) -> Need:
    """The train step's bytes per device for ``cfg`` with ``changes`` (dotted config fields, e.g.
    ``{"train.batch_size": 4}``), from the planner's compile on this host's devices."""
    from .tools import plan
    c = cfg.copy_and_resolve_references()
    with c.unlocked():
        for key, value in changes.items():
            *path, last = key.split(".")
            node = c
            for part in path:
                node = node[part]
            del node[last]  # a new field, not a cast: train.micro_batch goes from "auto" to an int
            node[last] = value
    try:
        row = plan.plan_one(c, mesh_sizes, jax.devices(), vocab=vocab)
    except Exception as e:  # noqa: BLE001 -- XLA refuses a program that cannot fit an accelerator outright
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return Need("train step", 1 << 62, 1 << 62)
    return Need("train step", int(row["total"]), int(row["temp"]))


def fit(cfg, mesh_sizes, dp: int, vocab: int = 0) -> int:
    """Check the run's step against the device, log its memory, and return the micro-batch to run
    (``train.micro_batch``, resolved when ``"auto"``). Raises :class:`InputError` (one line) when
    nothing asked for fits."""
    cap, source = capacity(cfg.check.memory_limit_gib)
    per_device = cfg.train.batch_size // dp
    auto = cfg.train.micro_batch == "auto"
    micro = per_device if auto else (cfg.train.micro_batch or per_device)
    need = step_need(cfg, mesh_sizes, vocab, **{"train.micro_batch": 0 if micro == per_device else micro})
    if auto:
        for m in sorted((d for d in range(1, per_device + 1) if per_device % d == 0), reverse=True):
            need = step_need(cfg, mesh_sizes, vocab, **{"train.micro_batch": 0 if m == per_device else m})
            if need.total <= cap:
                micro = m
                logging.info("memory: train.micro_batch=auto picked %d rows per device (%s of %.2f GiB)", m,
                             need.gib(), cap / GiB)
                break
    _state["estimate"] = f"start-up estimate {need.gib()} per device of {cap / GiB:.2f} GiB ({source})"
    _state["shapes"] = (f"batch {cfg.train.batch_size} x {cfg.data.max_length} tokens "
                        f"({cfg.data.max_prompt_length} prompt)")
    print(f"memory: {need.program} needs {need.gib()} per device (temporaries {need.temp / GiB:.2f} GiB); "
          f"capacity {cap / GiB:.2f} GiB ({source})", flush=True)
    if need.total > cap:
        raise InputError(f"{need.program}: needs {need.gib()} per device but {cap / GiB:.2f} GiB is available "
                         f"({source}); {advice(cfg, mesh_sizes, vocab, cap, per_device)}")
    return 0 if micro == per_device else micro


def advice(cfg, mesh_sizes, vocab, cap, per_device) -> str:
    """What would fit, each from a compile of that variant."""
    fits = lambda **ch: step_need(cfg, mesh_sizes, vocab, **{"train.micro_batch": 0, **ch})
    dp = cfg.train.batch_size // per_device
    out = []
    one = fits(**{"train.batch_size": dp})
    if per_device > 1 and one.total <= cap:
        full = fits()
        slope = max((full.total - one.total) / (per_device - 1), 1)
        largest = max(1, min(per_device - 1, int(1 + (cap - one.total) / slope)))
        out.append(f"batch per device {largest} fits at this length (train.batch_size={largest * dp})")
        m = max((d for d in range(1, per_device) if per_device % d == 0 and d <= largest), default=1)
        if fits(**{"train.micro_batch": m}).total <= cap:
            out.append(f"or train.micro_batch={m}")
    prompt, length = cfg.data.max_prompt_length, cfg.data.max_length
    longest = _longest_response(fits, cap, prompt, length)
    if longest:
        out.append(f"responses up to {longest} tokens fit at this batch (data.max_length={prompt + longest})")
    for key, value in (("model.remat", "full"), ("model.attention_kernel", "auto")):
        current = cfg.model.remat if key == "model.remat" else cfg.model.attention_kernel
        if current != value:
            need = fits(**{key: value})
            if need.total <= cap:
                out.append(f"{key}={value} needs {need.gib()}")
    return "; ".join(out) if out else "nothing smaller of batch, length, micro-batch, remat or kernel fits"


def _longest_response(fits, cap, prompt, length) -> int:
    """The longest response that fits, halving from the current one (a compile each), then the
    secant between the last two lengths (the step's memory is near linear in length with an O(T)
    attention kernel)."""
    hi, lo, lo_need = length - prompt, (length - prompt) // 2, None
    while lo >= 8:
        lo_need = fits(**{"data.max_length": prompt + lo, "gen.max_new_tokens": lo})
        if lo_need.total <= cap:
            break
        hi, lo = lo, lo // 2
    if lo < 8 or lo_need is None:
        return 0
    hi_need = fits(**{"data.max_length": prompt + hi, "gen.max_new_tokens": hi})
    slope = max((hi_need.total - lo_need.total) / max(hi - lo, 1), 1)
    return max(lo, min(hi - 1, int(lo + (cap - lo_need.total) / slope)))


@contextlib.contextmanager
def where(place: str):
    """Name what runs (``step 12``, ``evaluation``), for an out-of-memory's line."""
    old, _state["where"] = _state["where"], place
    try:
        yield
    finally:
        _state["where"] = old


def set_where(place: str):
    _state["where"] = place


def out_of_memory(e: BaseException) -> str | None:
    """The one line for an XLA out-of-memory (``RESOURCE_EXHAUSTED``), or None for another error."""
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    first = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), text)[:240]
    parts = [f"out of memory in {_state['where']}"]
    if _state["shapes"]:
        parts.append(_state["shapes"])
    parts.append(first)
    if _state["estimate"]:
        parts.append(_state["estimate"])
    parts.append("try train.micro_batch (or auto), model.remat=full, model.attention_kernel=auto, or a smaller "
                 "train.batch_size or data.max_length; the work dir keeps its last checkpoint and a rerun resumes "
                 "from it")
    return "; ".join(parts)

