"""Fit the machine: a run's memory known before it starts, and an out-of-memory that is one line.

:func:`fit` compiles the run's train step on abstract shapes (the planner's compile,
``planner.plan_one``: no weights are read) and compares its per-device bytes (arguments,
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

from . import objectives, planner, sharding
from .errors import InputError
from .evaluate import answer_options
from .sampling import Sampling

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


def step_need(cfg, mesh_sizes, vocab=0, devices=None, data=None, models=None, lm_rows=None, **changes) -> Need:
    """The train step's bytes per device for ``cfg`` with ``changes`` (dotted config fields, e.g.
    ``{"train.batch_size": 4}``), from the planner's compile on ``devices`` (default: this host's) of
    the run's own step (``vocab``, ``data``, ``models``, ``lm_rows``: the run's; ``planner.plan_one``)."""
    c = cfg.replace(changes)
    return _compiled_need(f"train step ({cfg.method})", lambda: planner.plan_one(
        c, mesh_sizes, devices or jax.devices(), vocab=vocab, data=data, models=models, lm_rows=lm_rows))


def _compiled_need(program: str, compile_row) -> Need:
    """The :class:`Need` of ``compile_row()`` (a planner row), or an unbounded one when XLA refuses the program
    outright (a program that cannot fit an accelerator)."""
    try:
        row = compile_row()
    except Exception as e:  # noqa: BLE001 -- the refusal is an XlaRuntimeError; anything else is raised
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return Need(program, 1 << 62, 1 << 62)
    return Need(program, int(row["total"]), int(row["temp"]))


class Fitter:
    """The step's bytes for variants of one config, against one capacity (each a compile, memoised)."""

    def __init__(self, cfg, mesh_sizes, dp: int, cap: int, devices=None, run_inputs=None):
        self.cfg, self.mesh_sizes, self.dp, self.cap, self.devices = cfg, mesh_sizes, dp, cap, devices
        self.run_inputs = run_inputs or {}  # the run's vocab, data, models, lm_rows: its own step, compiled once
        self.per_device = cfg.train.batch_size // dp
        self._seen = {}

    def need(self, **changes) -> Need:
        key = tuple(sorted(changes.items()))
        if key not in self._seen:
            self._seen[key] = step_need(self.cfg, self.mesh_sizes, devices=self.devices, **self.run_inputs,
                                        **changes)
        return self._seen[key]

    def with_micro(self, m: int, **changes) -> Need:
        return self.need(**{"train.micro_batch": 0 if m >= self.per_device else m, **changes})

    def auto_micro(self, **changes) -> int:
        """The largest micro-batch (a divisor of the batch per device) whose step fits; 0 if none."""
        if self.cfg.data.packing:  # packed rows are laid out for the whole batch (config: one or the other)
            return 0
        divisors = sorted((d for d in range(1, self.per_device + 1) if self.per_device % d == 0), reverse=True)
        return next((m for m in divisors if self.with_micro(m, **changes).total <= self.cap), 0)

    def largest_batch(self, **changes) -> int:
        """The largest batch per device that fits at this length: the step's bytes are affine in the batch
        (compiled at 1 and at the config's batch per device); the estimate is confirmed by a compile there,
        and when it does not fit, bisected between the largest batch known to fit and it."""
        at = lambda b: self.need(**{"train.micro_batch": 0, **changes,  # the config's batch: with_micro's key
                                    **({} if b == self.per_device else {"train.batch_size": b * self.dp})}).total
        if at(1) > self.cap:
            return 0
        if self.per_device == 1:
            return 1
        full = at(self.per_device)
        slope = max((full - at(1)) / (self.per_device - 1), 1)
        guess = max(1, int(1 + (self.cap - at(1)) / slope))
        lo = self.per_device if full <= self.cap else 1  # fits
        if guess <= lo or at(guess) <= self.cap:
            return max(lo, guess)
        hi = guess  # does not fit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if at(mid) <= self.cap else (lo, mid)
        return lo


def fit(cfg, mesh_sizes, dp: int, run_inputs=None, generation=True) -> int:
    """Check the run's step (and, with ``generation``, its generating programs) against the device, log
    their memory, and return the micro-batch to run (``train.micro_batch``, resolved when ``"auto"``).
    Raises :class:`InputError` (one line) when nothing asked for fits. ``run_inputs``: the run's
    ``vocab``, ``data``, in-process ``models`` and ``lm_rows`` (``planner.plan_one``), which make each compiled program
    the run's own: the run then loads it from the persistent compilation cache instead of compiling it."""
    cap, source = capacity(cfg.check.memory_limit_gib)
    run_inputs = run_inputs or {}
    f = Fitter(cfg, mesh_sizes, dp, cap, run_inputs=run_inputs)
    micro = cfg.train.micro_batch
    if micro == "auto":
        micro = f.auto_micro() or f.per_device
        logging.info("memory: train.micro_batch=auto picked %d rows per device (%s of %.2f GiB)", micro,
                     f.with_micro(micro).gib(), cap / GiB)
    need = f.with_micro(micro or f.per_device)
    _state["estimate"] = f"start-up estimate {need.gib()} per device of {cap / GiB:.2f} GiB ({source})"
    note_shapes(cfg)
    _report(need, cap, source, lambda: advice(f))
    for program, kw in generations(cfg) if generation else ():
        g = Generation(cfg, mesh_sizes, dp, cap, program, run_inputs=run_inputs, **kw)
        _report(g.need(), cap, source, g.advice)
    return 0 if micro >= f.per_device else micro


def note_shapes(cfg):
    """The run's batch and length, for a run-time out-of-memory's line (with or without the start-up check)."""
    _state["shapes"] = (f"batch {cfg.train.batch_size} x {cfg.data.max_length} tokens "
                        f"({cfg.data.max_prompt_length} prompt)")


def _report(need: Need, cap: int, source: str, what_fits):
    """One log line per program; over capacity, the one-line error with ``what_fits()``."""
    print(f"memory: {need.program} needs {need.gib()} per device (temporaries {need.temp / GiB:.2f} GiB); "
          f"capacity {cap / GiB:.2f} GiB ({source})", flush=True)
    if need.total > cap:
        raise InputError(f"{need.program}: needs {need.gib()} per device but {cap / GiB:.2f} GiB is available "
                         f"({source}); {what_fits()}")


def generations(cfg):
    """The generating programs a run executes besides its step: ``(name, Generation options)``.
    The on-policy sampler runs inside the train step (its program, checked above)."""
    out = []
    if objectives.build(cfg.method, cfg.loss).needs.teacher_samples and cfg.gen.teacher_mode == "offline":
        out.append(("the teacher's sampling (gen.teacher_mode=offline)",
                    {"role": "teacher", "sampler": "gen", "batch_field": "train.batch_size"}))
    if cfg.data.dev_num or cfg.data.eval_sets:
        out.append(("evaluation's generation", {"role": "student", "sampler": "eval", "batch_field": "eval.batch_size"}))
        if cfg.eval.eval_teacher:
            out.append(("the teacher's evaluation", {"role": "teacher", "sampler": "eval",
                                                     "batch_field": "eval.batch_size"}))
    return out


class Generation:
    """One model's generation (prefill and widest decode chunk, ``planner.plan_generation``) at batch
    sizes of one field, against one capacity (each a compile, memoised)."""

    def __init__(self, cfg, mesh_sizes, dp, cap, program, *, role, sampler, batch_field, run_inputs=None):
        """``sampler``: the config section of its options, "gen" or "eval"; ``batch_field``: its batch."""
        self.cfg, self.mesh_sizes, self.dp, self.cap, self.program = cfg, mesh_sizes, dp, cap, program
        self.role, self.sampler, self.batch_field = role, sampler, batch_field
        self.batch = int(cfg.at(batch_field))
        self.opts = answer_options(cfg.eval, cfg.gen) if sampler == "eval" else Sampling.of(cfg.gen)
        self.run_inputs = run_inputs or {}
        self._seen = {}

    def need(self, batch=0) -> Need:
        batch = batch or self.batch
        if batch not in self._seen:
            self._seen[batch] = _compiled_need(self.program, lambda: planner.plan_generation(
                self.cfg, self.mesh_sizes, jax.devices(), self.role, batch, self.opts,
                vocab=self.run_inputs.get("vocab", 0), models=self.run_inputs.get("models")))
        return self._seen[batch]

    def advice(self) -> str:
        """The largest batch that fits (bytes affine in the batch between ``dp`` rows and the asked-for
        batch, confirmed by a compile there), else the new tokens to cut."""
        one = self.need(self.dp)
        if one.total > self.cap or self.batch <= self.dp:
            return f"even {self.dp} row(s) need {one.gib()}: lower {self.sampler}.max_new_tokens or " \
                   "data.max_prompt_length"
        slope = max((self.need().total - one.total) / (self.batch - self.dp), 1)
        b = max(self.dp, int(self.dp + (self.cap - one.total) / slope) // self.dp * self.dp)
        while b > self.dp and self.need(b).total > self.cap:
            b -= self.dp
        return f"{self.batch_field}={b} fits ({self.need(b).gib()})"


def advice(f: Fitter) -> str:
    """What would fit, each from a compile of that variant."""
    cfg, out = f.cfg, []
    largest = f.largest_batch()
    if 0 < largest < f.per_device:
        out.append(f"batch per device {largest} fits at this length (train.batch_size={largest * f.dp})")
        m = f.auto_micro()
        if m:
            out.append(f"or train.micro_batch={m}")
    prompt, length = cfg.data.max_prompt_length, cfg.data.max_length
    longest = _longest_response(f, prompt, length)
    if longest:
        out.append(f"responses up to {longest} tokens fit at this batch (data.max_length={prompt + longest})")
    for key, value in (("model.remat", "full"), ("model.attention_kernel", "auto")):
        current = cfg.model.remat if key == "model.remat" else cfg.model.attention_kernel
        if current != value:
            need = f.with_micro(f.per_device, **{key: value})
            if need.total <= f.cap:
                out.append(f"{key}={value} needs {need.gib()}")
    return "; ".join(out) if out else "nothing smaller of batch, length, micro-batch, remat or kernel fits"


def _longest_response(f: Fitter, prompt, length) -> int:
    """The longest response that fits, halving from the current one (a compile each), then the
    secant between the last two lengths (the step's memory is near linear in length with an O(T)
    attention kernel)."""
    at = lambda n: f.with_micro(f.per_device, **{"data.max_length": prompt + n, "gen.max_new_tokens": n})
    hi, lo = length - prompt, (length - prompt) // 2
    while lo >= 8 and at(lo).total > f.cap:
        hi, lo = lo, lo // 2
    if lo < 8:
        return 0
    slope = max((at(hi).total - at(lo).total) / max(hi - lo, 1), 1)
    return max(lo, min(hi - 1, int(lo + (f.cap - at(lo).total) / slope)))


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


def fit_rows(cfg, mesh_sizes, devices, lengths, limit_gib=0.0):
    """For each total length: the step at the config's batch, the largest batch per device and the
    ``train.micro_batch="auto"`` choice, from the same functions (and compiles) as the run's start-up
    check (``Fitter``). Capacity: ``limit_gib``, else the TPU chip's HBM, else this host's."""
    devices = jax.devices()[:devices] if isinstance(devices, int) else list(devices)
    kind = devices[0].device_kind
    cap = int(limit_gib * GiB) if limit_gib else int(planner.TPU_HBM[kind][1] * GiB) if kind in \
        planner.TPU_HBM else capacity()[0]
    mesh = sharding.mesh_shape({**cfg.mesh.as_dict(), **mesh_sizes}, len(devices))
    dp = mesh["data"] * mesh["fsdp"]
    rows = []
    for length in lengths:
        c = cfg.replace({"data.max_length": length, "gen.max_new_tokens": length - cfg.data.max_prompt_length})
        f = Fitter(c, mesh_sizes, dp, cap, devices)
        rows.append({"length": length, "batch_per_device": f.per_device, "total": f.with_micro(f.per_device).total,
                     "largest_batch": f.largest_batch(), "auto_micro": f.auto_micro(), "cap": cap, "kind": kind,
                     "packing": bool(c.data.packing)})
    return rows


def fit_table(rows):
    g = lambda b: "refused" if b >= 1 << 60 else f"{b / GiB:.2f}"
    lines = ["| total length | step at the config's batch per device | GiB per device | largest batch per device "
             "| train.micro_batch=auto |", "|---|---|---|---|---|"]
    for r in rows:
        auto = "n/a (data.packing)" if r.get("packing") else r["auto_micro"] or "none fits"
        lines.append(f"| {r['length']} | {r['batch_per_device']} | {g(r['total'])} | {r['largest_batch']} | {auto} |")
    return "\n".join(lines) + f"\n\nCapacity {rows[0]['cap'] / GiB:.2f} GiB per device ({rows[0]['kind']})."
