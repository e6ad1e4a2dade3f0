"""Long sequences on a TPU slice, by deviceless compile (issue "Long traces I"): the whole train
step of a config at each total length, with ``dense`` attention and with ``auto`` (splash on TPU),
batch 1 per replica. Needs libtpu (its own venv: ``pip install "jax[tpu]"``); no TPU.

  PYTHONPATH=. python bench/tpu_long_plan.py --config=configs/qwen25_7b_to_1p5b.py --topology=v5e:2x4 \
      --mesh=data:1,fsdp:-1,tensor:4 --lengths=8192,16384,32768 --kernels=dense,auto

Each length keeps the config's prompt length and generates the rest; the gold responses fill it too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import report  # noqa: E402


def plan_at(cfg_path, topology, mesh, length, kernel, remat, batch_per_replica):
    import importlib.util
    from dpkd_jax import planner as plan
    from dpkd_jax.runspec import RunSpec
    spec = importlib.util.spec_from_file_location("cfg", cfg_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.max_length = length
    c.gen.max_new_tokens = length - c.data.max_prompt_length
    c.model.attention_kernel, c.model.remat = kernel, remat
    devices = plan.topology_devices(topology)
    _, hbm = plan.TPU_HBM[devices[0].device_kind]
    t = time.perf_counter()
    try:
        row = plan.plan_one(RunSpec.of(c), plan.parse_mesh(mesh), devices, batch_per_replica)
        total = row["total"] / plan.GiB
        why = ""
    except Exception as e:  # noqa: BLE001 -- XLA's TPU compiler refuses a step that cannot fit its HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        total, row, why = float("inf"), {}, str(e).splitlines()[0][:300]
    return {"refused": why, "length": length, "kernel": kernel, "remat": remat, "batch_per_replica": batch_per_replica,
            "total_gib": round(total, 2), "temp_gib": round(row.get("temp", float("inf")) / plan.GiB, 2),
            "hbm_gib": hbm, "fits": total < 0.9 * hbm, "compile_s": round(time.perf_counter() - t, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--topology", required=True)
    ap.add_argument("--mesh", required=True)
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--kernels", default="dense,auto")
    ap.add_argument("--remat", default="full")
    ap.add_argument("--batch_per_replica", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    for kernel in args.kernels.split(","):
        for length in (int(x) for x in args.lengths.split(",")):
            rows.append(plan_at(args.config, args.topology, args.mesh, length, kernel, args.remat,
                                args.batch_per_replica))
            print(rows[-1], file=sys.stderr, flush=True)
    report({"config": args.config, "topology": args.topology, "mesh": args.mesh, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
