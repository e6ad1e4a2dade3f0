"""Where each side's teacher-forced step spends its time: our ``jax.profiler`` trace (``log.profile_steps``) and
TRL's ``torch.profiler``, on bench/peer_step.py's gkd setting (lmbda=0), steps 4-6 of 8.

    python bench/peer_step.py --trl_python=... (once: it prepares --root)
    python bench/peer_profile.py --trl_python=bench/.venv-trl/bin/python [--root=/tmp/peer_step]

Ours: the XLA:CPU thunks of the step's program, summed per op kind over the window (they run on several threads,
so the sum can exceed the wall time), beside the step's wall time. TRL's: torch's op table by self CPU time.
Writes bench/results/peer_profile_cpu.md.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_step import ROOT, our_config, run_trl  # noqa: E402

FIRST, LAST, STEPS = 4, 6, 8
OP = re.compile(r"^[a-z][\w\-]*?(\.\d+)?$")  # an HLO instruction's name: its kind and a number


def ours(root, python):
    """(op kind -> (ms over the window, count), the step's wall ms per call)."""
    work = os.path.join(root, "ours_profile")
    subprocess.run(["rm", "-rf", work], check=True)
    os.makedirs(work)
    cfg = our_config(root, "gkd", 0.0, STEPS, work, os.path.join(root, "xla_gkd_0.0"))
    subprocess.run([python, "-m", "dpkd_jax.main", f"--config={cfg}", f"--config.log.profile_steps=({FIRST},{LAST})"],
                   cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    trace = glob.glob(os.path.join(work, "profile", "**", "perfetto_trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(trace))
    events = [e for e in (events["traceEvents"] if isinstance(events, dict) else events) if e.get("ph") == "X"]
    ops = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if OP.match(e["name"]) and not e["name"].startswith("end"):
            kind = e["name"].rsplit(".", 1)[0] if e["name"].rsplit(".", 1)[-1].isdigit() else e["name"]
            ops[kind][0] += e["dur"] / 1000
            ops[kind][1] += 1
    calls = {}
    for e in events:
        if e["name"] == "PjitFunction(_generic_body)":
            calls.setdefault(round(e["ts"] / 1000), e["dur"] / 1000)
    return dict(ops), sorted(calls.values())


def table(ops, walls, n=20):
    total = sum(ms for ms, _ in ops.values())
    lines = [f"Step wall time per call: {', '.join(f'{w:.0f} ms' for w in walls)}; op time summed over threads "
             f"{total:.0f} ms over {len(walls)} steps.", "", "| op kind | ms over the window | share | count |",
             "|---|---|---|---|"]
    for kind, (ms, count) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:n]:
        lines.append(f"| {kind} | {ms:.1f} | {ms / total:.1%} | {count} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trl_python", required=True)
    ap.add_argument("--ours_python", default=sys.executable)
    ap.add_argument("--root", default="/tmp/peer_step")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "peer_profile_cpu.md"))
    a = ap.parse_args()
    ops, walls = ours(a.root, a.ours_python)
    trl_table = os.path.join(a.root, "trl_profile.txt")
    run_trl_profiled = run_trl(a.root, a.trl_python, 0.0, STEPS, profile=f"{FIRST},{LAST},{trl_table}")
    text = (f"# Teacher-forced gkd step, steps {FIRST}-{LAST} of {STEPS} (bench/peer_step.py's setting)\n\n"
            f"## dpkd_jax (jax.profiler, XLA:CPU thunks)\n\n{table(ops, walls)}\n\n"
            f"## TRL (torch.profiler, self CPU time)\n\nStep wall times: "
            f"{', '.join(f'{t * 1000:.0f} ms' for t in run_trl_profiled['step_s'][FIRST - 1:LAST])}\n\n```\n"
            f"{open(trl_table).read()}\n```\n")
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
