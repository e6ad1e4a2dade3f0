"""cpu_runtime: with the command line's setting, repeated CPU programs stop faulting their memory in again.
Each setting is process-wide, so each case runs in a child process."""

import json
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import json, resource, sys
    import jax, jax.numpy as jnp
    from dpkd_jax import cpu_runtime
    applied = False
    if sys.argv[1] == "heap":
        cpu_runtime.synchronous_cpu()
        applied = cpu_runtime.keep_heap_mapped()
    f = jax.jit(lambda x: ((jnp.sin(x) @ jnp.cos(x)) @ (jnp.tanh(x) @ jnp.exp(-x))).sum())
    x = jnp.full((1024, 1024), 0.01)
    first = [float(f(x)) for _ in range(3)]
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    later = [float(f(x)) for _ in range(10)]
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10
    print(json.dumps({"applied": applied, "faults": faults, "values": first + later}))
""")


def run_child(setting):
    out = subprocess.run([sys.executable, "-c", PROGRAM, setting], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's (Linux)")
def test_main_heap_keeps_step_memory_mapped():
    default, heap = run_child("default"), run_child("heap")
    assert heap["applied"] and not default["applied"]
    # the default unmaps each call's buffers and faults them in again: tens of thousands of pages per call
    assert default["faults"] > 5000, default
    assert heap["faults"] < default["faults"] / 10, (heap, default)
    assert heap["values"] == default["values"]  # the same programs, the same numbers
