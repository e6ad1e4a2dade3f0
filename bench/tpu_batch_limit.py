"""The largest batch per replica whose train step fits a TPU slice, by deviceless compile.

Compiles at 1 and 8 per replica, fits the per-device total as affine in the batch, then
confirms at the predicted limit (bisecting below 8 when XLA refuses batch 8 outright); the
limit keeps the total under 90% of the chip's HBM. Needs libtpu (best in its own venv: ``pip install libtpu``);
no TPU. Runs on any revision of this project (``PYTHONPATH=<tree>``), so the "before"
column comes from a git worktree of the earlier commit:

  python bench/tpu_batch_limit.py --config=configs/qwen25_7b_to_1p5b.py --topology=v5e:2x4 \
      --mesh=data:1,fsdp:-1,tensor:4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())


def fits(cfg_path, topology, mesh, bpr, limit=256):
    from ml_collections import config_flags  # noqa: F401 -- the config files import ml_collections
    import importlib.util
    from dpkd_jax import planner as plan
    from dpkd_jax.runspec import RunSpec
    spec = importlib.util.spec_from_file_location("cfg", cfg_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    devices = plan.topology_devices(topology)
    try:
        row = plan.plan_one(RunSpec.of(mod.get_config()), plan.parse_mesh(mesh), devices, bpr)
    except Exception as e:  # noqa: BLE001 -- XLA's TPU compiler refuses a step that cannot fit its HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        _, gib = plan.TPU_HBM[devices[0].device_kind]
        return False, {"total": float("inf"), "hbm_gib": gib}
    _, gib = plan.TPU_HBM[row["kind"]]
    row["hbm_gib"] = gib
    return row["total"] < 0.9 * gib * plan.GiB, row


def largest(cfg_path, topology, mesh, cap=256):
    """Per-device memory is affine in the batch: compile at 1 and 8, predict the largest batch
    under 90% of HBM, then compile there and one above (walking on if the prediction was off)."""
    tried = {}

    def at(b):
        ok, row = fits(cfg_path, topology, mesh, b)
        tried[b] = (ok, round(row["total"] / 2**30, 2), row["hbm_gib"])
        print(f"  batch/replica {b}: {tried[b][1]} GiB per device, {'fits' if ok else 'does not fit'}", flush=True)
        return ok
    if not at(1):
        return 0, tried
    if not at(8) and tried[8][1] == float("inf"):  # the compiler refused it outright: bisect below 8
        lo, hi = 1, 8
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if at(mid) else (lo, mid)
        return lo, tried
    (_, m1, hbm), (_, m8, _) = tried[1], tried[8]
    slope = max((m8 - m1) / 7, 1e-6)
    b = max(1, min(cap, int(1 + (0.9 * hbm - m1) / slope)))
    while b < cap and (tried[b][0] if b in tried else at(b)):
        if b + 1 in tried and not tried[b + 1][0]:
            return b, tried
        b += 1
    while b > 1 and not (tried[b][0] if b in tried else at(b)):
        b -= 1
    return b, tried


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--topology", required=True)
    ap.add_argument("--mesh", required=True)
    ap.add_argument("--cap", type=int, default=256)
    args = ap.parse_args()
    t = time.perf_counter()
    best, tried = largest(args.config, args.topology, args.mesh, args.cap)
    print(json.dumps({"config": args.config, "topology": args.topology, "mesh": args.mesh,
                      "largest_batch_per_replica": best, "total_gib_by_batch": tried,
                      "seconds": round(time.perf_counter() - t)}))


if __name__ == "__main__":
    main()
