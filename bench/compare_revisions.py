"""One benchmark, this tree against an earlier git revision, side by side in one run.

  python bench/compare_revisions.py --base 153651d --rounds 3 --key ours_step_s --key ours_nogen_step_s \
      -- bench/train_step.py --no-torch
  python bench/compare_revisions.py --base 153651d --rounds 3 --key ours_tokens_per_s -- bench/generate.py --no-torch

The base revision is checked out into a temporary git worktree; each round runs the
benchmark script in the base tree, then in this one (alternating which goes first), each
in a fresh process with its own tree first on ``PYTHONPATH``, and reads the JSON the
script prints. Reported: each key's median per tree and the median of the per-round
ratios (this tree / base), with their range, since this kind of machine drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in(tree: str, script_args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, *script_args], cwd=tree, env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"{tree}: {' '.join(script_args)} failed:\n{out.stderr[-3000:]}")
    text = out.stdout
    return json.loads(text[text.index("{\n"):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--key", action="append", required=True, help="a numeric key of the script's JSON")
    ap.add_argument("--out", default="")
    ap.add_argument("script", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    script = [a for a in args.script if a != "--"]
    base = tempfile.mkdtemp(prefix="dpkd_base_")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base, args.base], check=True,
                   capture_output=True)
    trees = {"base": base, "this": ROOT}
    got = {name: {k: [] for k in args.key} for name in trees}
    try:
        for r in range(args.rounds):
            order = ("base", "this") if r % 2 == 0 else ("this", "base")
            for name in order:
                res = run_in(trees[name], script)
                for k in args.key:
                    got[name][k].append(float(res[k]))
                print(f"round {r + 1} {name}: " + ", ".join(f"{k}={got[name][k][-1]:.4g}" for k in args.key),
                      file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base], check=False, capture_output=True)
    import jax
    summary = {"device": jax.devices()[0].device_kind, "base": args.base, "script": script, "rounds": args.rounds}
    for k in args.key:
        ratios = [t / b for t, b in zip(got["this"][k], got["base"][k])]
        summary[k] = {"base_median": statistics.median(got["base"][k]),
                      "this_median": statistics.median(got["this"][k]),
                      "ratio_this_over_base_median": statistics.median(ratios),
                      "ratio_range": [min(ratios), max(ratios)], "base": got["base"][k], "this": got["this"][k]}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
