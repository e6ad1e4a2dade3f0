"""Compiled train-step temporaries against the response length, dense attention against the
O(T) kernels (issue "Long traces I").

The thin Qwen2-shaped pair of bench/vocab_memory.py (width 64, 4 heads over 2 KV heads,
2 layers each, V = 4096), batch 8, prompt 64, N new tokens (and N-token gold responses), one
XLA:CPU device, through the planner's own compile (``tools/plan.plan_one``): parameters are
abstract, the figure is ``memory_analysis().temp_size_in_bytes``.

  python bench/context_memory.py --out bench/results/context_memory_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vocab_memory import qwen_folder  # noqa: E402
from report import report  # noqa: E402

GiB = 2**30


def measure(method, n, kernel, root):
    from dpkd_jax.config import default_config
    from dpkd_jax.planner import plan_one
    from dpkd_jax.runspec import RunSpec
    c = default_config()
    c.method = method
    c.teacher.path, c.student.path = qwen_folder(root, "t", 4096), qwen_folder(root, "s", 4096)
    c.teacher.dtype, c.student.dtype, c.student.compute_dtype = "float32", "float32", "float32"
    c.train.batch_size, c.data.max_prompt_length, c.data.max_length, c.gen.max_new_tokens = 8, 64, 64 + n, n
    c.data.pretrain = ""
    c.model.attention_kernel = kernel
    t0 = time.perf_counter()
    row = plan_one(RunSpec.of(c), {"data": 1, "fsdp": 1, "tensor": 1}, 1)
    return {"method": method, "new_tokens": n, "kernel": kernel, "temp_gib": row["temp"] / GiB,
            "total_gib": row["total"] / GiB, "compile_s": round(time.perf_counter() - t0, 1)}


def growth(rows, method, kernel, lengths):
    got = {r["new_tokens"]: r["temp_gib"] for r in rows if r["method"] == method and r["kernel"] == kernel}
    lo, hi = min(lengths), max(lengths)
    return {"method": method, "kernel": kernel, "length_ratio": hi / lo, "temp_ratio": got[hi] / got[lo]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="sft,kd,dpkd")
    ap.add_argument("--lengths", default="512,2048,8192,32768")
    ap.add_argument("--kernels", default="dense,auto")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for method in args.methods.split(","):
            for kernel in args.kernels.split(","):
                for n in lengths:
                    rows.append(measure(method, n, kernel, root))
                    print(rows[-1], file=sys.stderr, flush=True)
    ratios = [growth(rows, m, k, lengths) for m in args.methods.split(",") for k in args.kernels.split(",")]
    report({"machine": "CPU box, 2 cores, XLA:CPU, 1 device", "rows": rows, "growth": ratios}, args.out)


if __name__ == "__main__":
    main()
