"""Throughput accounting: model FLOPs of a step, device peaks, tokens/s and MFU."""

from __future__ import annotations

import time

import jax
from .models import flops_per_token, forward_flops_per_token


# Peak dense bf16 FLOP/s per device, for MFU. Unknown devices (CPU) report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device=None):
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def step_flops(needs, student, teacher, batch_size, lengths):
    """Model FLOPs of one step (for MFU): student train on scored tokens, teacher
    forward scoring, generation forwards of both. ``needs``: the objective's
    :class:`objectives.Needs`; ``lengths``: (prompt, gold response, new tokens)."""
    P, R, N = lengths
    S = P + max(R, N)
    n_resp = 1 + needs.teacher_samples + needs.student_samples
    student, teacher = student.config, teacher.config
    f = batch_size * (P + R) * flops_per_token(student, S) * n_resp
    f += batch_size * (P + R) * forward_flops_per_token(teacher, S) * (n_resp if needs.teacher_logits else 0)
    if needs.teacher_samples:
        f += batch_size * (P + N) * forward_flops_per_token(teacher, P + N)
    if needs.student_samples:
        f += batch_size * (P + N) * forward_flops_per_token(student, P + N)
    return f


class Throughput:
    """Tokens/s, step time and MFU from wall time between logged steps."""

    def __init__(self, flops_per_step, tokens_per_step):
        self.flops, self.tokens = flops_per_step, tokens_per_step
        self.peak = peak_flops()
        self.t = time.perf_counter()

    def __call__(self, steps, now=None):
        """Rates over the ``steps`` steps since the last call, which ended at ``now`` (the trainer's
        ``ready_time``; default: this moment)."""
        now = time.perf_counter() if now is None else now
        dt = (now - self.t) / max(steps, 1)
        self.t = now
        out = {"perf/step_time_s": dt, "perf/tokens_per_s": self.tokens / dt}
        if self.peak:
            out["perf/mfu"] = self.flops / dt / (self.peak * jax.device_count())
        return out
