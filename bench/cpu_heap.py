"""The demo's train steps on the CPU backend as JAX runs them by default (asynchronous dispatch: each step's
temporaries are mmapped and unmapped by a worker thread's arena) against the command line's setting
(``dpkd_jax.cpu_runtime``: synchronous execution, temporaries kept mapped in glibc's main heap). The
setting is process-wide, so each measurement is a child process; the two settings alternate, round by round,
so both see the same box. Reports each setting's median step time, user and system CPU per step, minor
page faults per step and the child's peak resident memory. Cases: the demo's steps, and a kd step at SmolLM2-135M's
width and vocabulary (d 576, 8 of its 30 layers, vocabulary 49152, batch 4, 152 tokens; random weights).

    python bench/cpu_heap.py --out bench/results/cpu_heap_cpu.json
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# SmolLM2-135M's width and vocabulary, 8 of its 30 layers (scanned), batch 4 of 112 + 40 tokens
WIDE = dict(model=dict(vocab_size=49152, d_model=576, n_layers=8, n_heads=9, d_ff=1536, max_positions=152),
            batch_size=4, lengths=(112, 152))
# row: (method, demo_speed.Case's layout) - the demo teacher's SFT, two steps of its student, a wide kd step
CASES = {"sft (4 layers)": ("sft", dict(scan=False, layers=4)), "kd (2 layers)": ("kd", dict(scan=False, layers=2)),
         "dpkd (2 layers)": ("dpkd", dict(scan=False, layers=2)),
         "kd (SmolLM2 width, 8 layers)": ("kd", dict(scan=True, layers=8, **WIDE))}


def child(row, steps, heap):
    import jax
    from dpkd_jax import cpu_runtime
    if heap:
        cpu_runtime.synchronous_cpu()
        assert cpu_runtime.keep_heap_mapped()
    from demo_speed import Case
    method, layout = CASES[row]
    case = Case(method, **layout)
    for i in range(3):  # past the first steps' one-time allocations
        case(i)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    times = [case(i) for i in range(steps)]
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    print(json.dumps({"step_s": statistics.median(times), "wall_per_step_s": wall / steps,
                      "user_per_step_s": (r1.ru_utime - r0.ru_utime) / steps,
                      "sys_per_step_s": (r1.ru_stime - r0.ru_stime) / steps,
                      "minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                      "peak_rss_mb": r1.ru_maxrss / 1024, "jax": jax.__version__}))


def measure(row, steps, heap):
    cmd = [sys.executable, __file__, "--child", row, "--steps", str(steps)] + (["--heap"] if heap else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="")
    ap.add_argument("--child", choices=CASES, help="measure this row in this process")
    ap.add_argument("--heap", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps, args.heap)
    rows = {}
    for label in CASES:
        runs = {"default": [], "main_heap": []}
        for _ in range(args.rounds):
            for name in runs:
                runs[name].append(measure(label, args.steps, name == "main_heap"))
        row = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "jax"} for name, rs in runs.items()}
        row["speedup"] = row["default"]["step_s"] / row["main_heap"]["step_s"]
        rows[label] = row
        print(label, json.dumps(row), flush=True)
    from report import report
    report({"cpus": os.cpu_count(), "jax": runs["default"][0]["jax"], "rounds": args.rounds, "steps": args.steps,
            "cases": rows}, args.out)


if __name__ == "__main__":
    main()
