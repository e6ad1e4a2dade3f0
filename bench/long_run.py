"""A long run on this box, through the command line (issue "Long traces II"): kd and sft with a thin
Llama pair (teacher 2 x 64, student 2 x 32, 4 heads over 2 KV heads, RoPE to 16k), batch 4, a 64-token
prompt and gold responses of 8,192 tokens, with ``model.attention_kernel=dense`` and ``blockwise``.
Each run is its own process; the bench prints its exit status, its peak RSS, and the run's own
tokens/s over steps 3-4 (the line it logs at step 4). Dense is expected not to fit: the start-up memory
check refuses it in one line (exit status 2), which the bench reports; ``--no_check`` runs it anyway to
show the run-time out-of-memory line (exit status 4) under ``--limit_gib`` of address space.

    python bench/long_run.py --out bench/results/long_run_cpu.json
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from report import report  # noqa: E402

WRAP = ("import atexit, resource, runpy, sys; "
        "atexit.register(lambda: print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "file=sys.stderr, flush=True)); sys.argv = ['dpkd_jax.main'] + sys.argv[1:]; "
        "runpy.run_module('dpkd_jax.main', run_name='__main__')")


def thin_pair(root):
    """The pair and a training set of 8,192-token responses on the demo's tokenizer (trained here)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from dpkd_jax.demo import demo_file, train_tokenizer
    tok = train_tokenizer(os.path.join(root, "tok"), 384, [demo_file("train.jsonl")])
    paths = []
    for name, d in (("teacher", 64), ("student", 32)):
        torch.manual_seed(d)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=16384, bos_token_id=tok.eos_token_id,
                                         eos_token_id=tok.eos_token_id))
        m.save_pretrained(os.path.join(root, name))
        tok.save_pretrained(os.path.join(root, name))
        paths.append(os.path.join(root, name))
    text = " ".join(["alpha beta gamma delta"] * 2500)  # about 8,300 tokens: cut at 8,192 (counted)
    train = os.path.join(root, "long.jsonl")
    with open(train, "w") as f:
        f.writelines(json.dumps({"instruction": f"Repeat {i}.", "response": text}) + "\n" for i in range(24))
    return paths, train


def one_run(paths, train, root, method, kernel, check, limit_gib):
    work = os.path.join(root, f"{method}_{kernel}_{check}")
    flags = [f"--config.method={method}", f"--config.teacher.path={paths[0]}", f"--config.student.path={paths[1]}",
             f"--config.data.train={train}", f"--config.workdir={work}", "--config.data.pretrain=",
             "--config.data.max_prompt_length=64", f"--config.data.max_length={64 + 8192}",
             "--config.data.dev_num=4", "--config.train.batch_size=4", "--config.train.steps=4",
             "--config.train.log_every=2", "--config.train.save_every=0", "--config.teacher.dtype=float32",
             "--config.student.compute_dtype=float32", f"--config.model.attention_kernel={kernel}",
             f"--config.check.memory={check}", "--config.eval.max_examples=2", "--config.eval.max_new_tokens=8",
             "--config.eval.eval_teacher=False", "--config.compile_cache=", f"--config.loss.{method}.lm_coef=0.0"]
    pre = None
    if limit_gib:
        import resource
        pre = lambda: resource.setrlimit(resource.RLIMIT_AS, (int(limit_gib * 2**30),) * 2)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAP, "--config=configs/pair.py", *flags], cwd=ROOT, capture_output=True,
                       text=True, timeout=3600, env=dict(os.environ, JAX_PLATFORMS="cpu"), preexec_fn=pre)
    peak = re.findall(r"PEAK_RSS_KB (\d+)", r.stderr)
    tps = re.findall(rf"\[{method}\] step 4: loss [\d.]+, (\d+) tokens/s", r.stdout)
    error = next((line for line in r.stderr.splitlines() if line.startswith("error: ")), "")
    row = {"method": method, "kernel": kernel, "check": check, "exit": r.returncode,
           "peak_rss_gib": round(int(peak[-1]) / 2**20, 2) if peak else None,
           "tokens_per_s": int(tps[-1]) if tps else None, "wall_s": round(time.perf_counter() - t, 1),
           "error": error[:400], "memory_line": next((l for l in r.stdout.splitlines() if l.startswith("memory: train")),
                                                      "")}
    if r.returncode not in (0, 2, 4):
        row["stderr_tail"] = r.stderr[-1500:]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="kd,sft")
    ap.add_argument("--kernels", default="dense,blockwise")
    ap.add_argument("--no_check", action="store_true", help="also run dense with the start-up check off")
    ap.add_argument("--limit_gib", type=float, default=0.0, help="RLIMIT_AS for the --no_check dense runs")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        paths, train = thin_pair(root)
        for method in args.methods.split(","):
            for kernel in args.kernels.split(","):
                rows.append(one_run(paths, train, root, method, kernel, True, 0.0))
                if kernel == "dense" and args.no_check:
                    rows.append(one_run(paths, train, root, method, kernel, False, args.limit_gib))
    report({"machine": "CPU box, 2 cores, 24 GiB, XLA:CPU", "batch": 4, "prompt": 64, "response": 8192,
            "rows": rows}, args.out)


if __name__ == "__main__":
    main()
