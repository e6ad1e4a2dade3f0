"""Our step against TRL's, side by side, both as whole processes on the same models, tokens and settings.

    python -m venv bench/.venv-trl && bench/.venv-trl/bin/pip install "trl==1.16.0" "torch==2.13.0"
    python bench/peer_step.py --trl_python=bench/.venv-trl/bin/python [--steps=12 --rounds=2]

The setting (issue 45): a random Llama teacher 6x512 and student 4x256, vocabulary 8192, fp32, AdamW, batch 4,
a 64-token prompt and a 192-token response, every row the same example. Both sides load the same safetensors
and tokenizer; TRL's chat template renders our prompt template, and the bench checks that the token ids are
equal. Settings on both sides: fp32, no gradient checkpointing (TRL's GKD defaults to it and to bf16; with
checkpointing it generates without a KV cache), constant lr, grad clip 1.0.

Comparisons, each in rounds A,B,A,B (medians over rounds of each side's median step after the first):
our ``gkd`` vs TRL's ``GKDTrainer`` teacher-forced (lmbda=0); the same with generation (lmbda=1, 192 sampled
tokens per row at temperature 0.9); our ``kd`` vs TRL's teacher-forced GKD; our ``opd`` with the exact reverse KL
per position vs TRL's ``DistillationTrainer`` at beta=1 (reverse KL; it covers only lmbda=1 at temperature 1),
both on 192 tokens sampled from the student at temperature 1. The last line is
``peer step: dpkd_jax <x>x trl teacher-forced, <y>x with generation`` (TRL's step time over ours, gkd vs gkd).
Fixed cost is a process's wall time less its steps: start-up, loading, compiling, the final eval and export
(TRL's run has neither). Ours is given cold (round 0: its persistent compilation cache emptied, as on a
machine's first run) and warm (the later rounds load the compiled programs, as every later run does).
"""

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT, RESPONSE, VOCAB = 64, 192, 8192
# PEER_SCAN_LAYERS=False: our layers unrolled, each its own ops as torch runs them (run 4 in docs/performance.md)
SCAN_LAYERS = os.environ.get("PEER_SCAN_LAYERS", "True") == "True"


def chat_template():
    """A Jinja chat template that renders a user turn as our Dolly prompt and an assistant turn as response + EOS."""
    from dpkd_jax.data.instructions import PROMPT_NO_INPUT
    head, tail = PROMPT_NO_INPUT.split("{instruction}")
    lit = lambda s: "{{ " + json.dumps(s) + " }}"
    return ("{% for m in messages %}{% if m['role'] == 'user' %}" + lit(head) + "{{ m['content'] }}" + lit(tail)
            + "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def fill(tok, render, target, words):
    """Text of words whose rendering is exactly ``target`` tokens (filled up one short word at a time)."""
    out, i = [], 0
    while len(tok.encode(render(" ".join(out + [words[i % len(words)]])))) <= target:
        out.append(words[i % len(words)])
        i += 1
    while len(tok.encode(render(" ".join(out)))) < target:
        out.append("a")
    if len(tok.encode(render(" ".join(out)))) != target:
        raise SystemExit(f"could not fill {target} tokens exactly")
    return " ".join(out)


def prepare(root):
    """The tokenizer (BPE, 8192 ids), the two random Llamas as safetensors, and train.jsonl (one example, 64 rows)."""
    import random
    from dpkd_jax import models
    from dpkd_jax.data.instructions import format_prompt
    from dpkd_jax.demo import demo_file, train_tokenizer
    from dpkd_jax.models import llama
    rnd = random.Random(0)
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:  # the demo's text and random words: enough pairs for 8192 merges
        f.write(open(demo_file("pretrain.txt")).read())
        for _ in range(20000):
            f.write(" ".join("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 7)))
                             for _ in range(12)) + "\n")
    tok = train_tokenizer(os.path.join(root, "tok"), VOCAB, [demo_file("train.jsonl"), corpus])
    tok.chat_template = chat_template()
    words = open(demo_file("pretrain.txt")).read().split()
    instruction = fill(tok, format_prompt, PROMPT, words)
    response = fill(tok, lambda r: r, RESPONSE - 1, words[500:])  # + EOS
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        f.write((json.dumps({"instruction": instruction, "context": "", "response": response}) + "\n") * 64)
    for name, (d, L, H, seed) in {"teacher": (512, 6, 8, 0), "student": (256, 4, 4, 1)}.items():
        arch = llama.tiny_config(vocab_size=len(tok), d_model=d, n_layers=L, n_heads=H, n_kv_heads=H, d_ff=4 * d,
                                 max_positions=PROMPT + RESPONSE + 64)
        decoder, params = models.init(arch, seed)
        models.save_pretrained(models.merge(decoder, params), os.path.join(root, name))
        tok.save_pretrained(os.path.join(root, name))
    return tok


def our_ids(root, tok):
    """Our tokenization of the example: (prompt ids, prompt + response ids)."""
    from dpkd_jax.data import load_instructions
    data, _ = load_instructions(os.path.join(root, "train.jsonl"), tok, max_prompt_length=PROMPT,
                                max_length=PROMPT + RESPONSE, pad_token_id=tok.eos_token_id)
    p, r = data.prompt_ids[0].tolist(), data.response_ids[0][data.response_mask[0] == 1].tolist()
    return p, p + r


def our_config(root, method, lmbda, steps, work, cache=""):
    path = os.path.join(work, "config.py")
    with open(path, "w") as f:
        f.write(f"""from dpkd_jax.config import default_config
def get_config():
    c = default_config()
    c.method, c.workdir, c.seed, c.compile_cache = {method!r}, {work!r}, 0, {cache!r}
    c.teacher.path, c.student.path = {os.path.join(root, 'teacher')!r}, {os.path.join(root, 'student')!r}
    c.teacher.dtype, c.student.dtype, c.student.compute_dtype = "float32", "float32", "float32"
    c.model.scan_layers = {SCAN_LAYERS}
    c.data.train, c.data.dev_num, c.data.max_prompt_length, c.data.max_length = {os.path.join(root, 'train.jsonl')!r}, 4, {PROMPT}, {PROMPT + RESPONSE}
    c.train.steps, c.train.batch_size, c.train.lr, c.train.schedule = {steps}, 4, 5e-4, "constant"
    c.train.weight_decay, c.train.grad_clip, c.train.log_every, c.train.save_every = 0.01, 1.0, 1, 0
    c.gen.max_new_tokens, c.gen.temperature = {RESPONSE}, 0.9
    c.loss.gkd.lmbda, c.loss.gkd.beta, c.loss.gkd.temperature, c.loss.gkd.kd_ratio, c.loss.gkd.lm_coef = {lmbda}, 0.5, 0.9, 1.0, 0.0
    c.loss.kd.kd_ratio, c.loss.kd.lm_coef, c.loss.kd.temperature = 1.0, 0.0, 1.0
    c.loss.opd.exact, c.loss.opd.temperature, c.loss.opd.kd_ratio, c.loss.opd.lm_coef = True, 1.0, 1.0, 0.0
    c.eval.max_examples, c.eval.max_new_tokens, c.eval.seeds, c.eval.batch_size, c.eval.eval_teacher = 4, 8, (0,), 4, False
    return c
""")
    return path


def tb_scalars(tb_dir, tag):
    """A tag's values in TensorBoard event files (TFRecord: length, its CRC, the record, its CRC)."""
    from tensorboardX.proto import event_pb2
    out = []
    for fn in sorted(os.listdir(tb_dir)):
        data, i = open(os.path.join(tb_dir, fn), "rb").read(), 0
        while i < len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
            i += 16 + n
    return [v for _, v in sorted(out)]


def timed(cmd, env=None):
    """(stdout, wall seconds, peak RSS MiB) of a child process (its own rusage, from wait4)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if status:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
        return out.read(), wall, usage.ru_maxrss / 1024


def run_ours(root, method, lmbda, steps, tag, cold, python=sys.executable):
    """One whole run of ours; ``cold``: its persistent compilation cache emptied first (a machine's first run),
    else warm from the round before (every later run of the same steps)."""
    work, cache = os.path.join(root, f"ours_{tag}"), os.path.join(root, f"xla_{method}_{lmbda}")
    subprocess.run(["rm", "-rf", work] + ([cache] if cold else []))
    os.makedirs(work)
    _, wall, rss = timed([python, "-m", "dpkd_jax.main",
                          f"--config={our_config(root, method, lmbda, steps, work, cache)}"],
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    step_s = tb_scalars(os.path.join(work, "tb"), "perf/step_time_s")
    loss = tb_scalars(os.path.join(work, "tb"), "loss/total")
    return {"side": "ours", "wall_s": wall, "step_s": step_s, "first_loss": loss[0], "peak_rss_mib": rss}


def run_trl(root, trl_python, lmbda, steps, trainer="gkd", profile=""):
    extra = ["--trainer=distillation", "--beta=1.0"] if trainer == "distillation" else []
    extra += [f"--profile={profile}"] if profile else []
    out, wall, rss = timed([trl_python, os.path.join(ROOT, "bench", "peer_trl.py"), f"--root={root}",
                            f"--lmbda={lmbda}", f"--steps={steps}", *extra])
    r = json.loads(out.strip().splitlines()[-1])
    return dict(r, wall_s=wall, peak_rss_mib=rss)


def summary(r, steps, tokens):
    step = statistics.median(r["step_s"][1:])  # the first step compiles (ours) or warms up (torch)
    return {"step_s": step, "tokens_per_s": tokens / step, "fixed_s": r["wall_s"] - steps * step,
            "first_loss": r["first_loss"], "peak_rss_mib": r["peak_rss_mib"]}


def compare(root, pythons, name, method, lmbda, steps, rounds, trainer="gkd"):
    """Rounds A,B,A,B: ours then TRL's, each a whole process; per side the median of its per-round medians.
    ``pythons``: (ours, TRL's) interpreters."""
    ours_python, trl_python = pythons
    tokens = 4 * (PROMPT + RESPONSE)
    runs = {"ours": [], "trl": []}
    for k in range(rounds):
        runs["ours"].append(summary(run_ours(root, method, lmbda, steps, f"{method}{lmbda}_{k}", k == 0, ours_python),
                                     steps, tokens))
        runs["trl"].append(summary(run_trl(root, trl_python, lmbda, steps, trainer), steps, tokens))
        print(f"  {name} round {k}: ours {runs['ours'][-1]['step_s']:.3f} s/step, trl {runs['trl'][-1]['step_s']:.3f}",
              flush=True)
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    med["ours"]["fixed_cold_s"] = runs["ours"][0]["fixed_s"]  # the first run compiles; later runs load the cache
    med["ours"]["fixed_s"] = statistics.median(r["fixed_s"] for r in runs["ours"][1:])
    return {"name": name, "ours": med["ours"], "trl": med["trl"], "rounds": runs,
            "ratio": med["trl"]["step_s"] / med["ours"]["step_s"]}


def table(results):
    lines = ["| step | ours s/step | TRL s/step | TRL / ours | ours tokens/s | TRL tokens/s | ours fixed s, cold / "
             "warm cache | TRL fixed s | ours peak RSS MiB | TRL peak RSS MiB | first loss ours / TRL |",
             "|" + "---|" * 11]
    for r in results:
        o, t = r["ours"], r["trl"]
        lines.append(f"| {r['name']} | {o['step_s']:.3f} | {t['step_s']:.3f} | {r['ratio']:.2f}x | "
                     f"{o['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | {o['fixed_cold_s']:.1f} / {o['fixed_s']:.1f} | "
                     f"{t['fixed_s']:.1f} | "
                     f"{o['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} | {o['first_loss']:.5f} / {t['first_loss']:.5f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trl_python", required=True, help="python of a venv with trl and torch (CPU)")
    ap.add_argument("--ours_python", default=sys.executable,
                    help="python of the venv our side runs in (default this one; a venv of requirements.txt alone, "
                         "without the tests' torch, is what a user of ours has)")
    ap.add_argument("--root", default="/tmp/peer_step")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--gen_steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "peer_step_cpu.json"))
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    tok = prepare(a.root)
    prompt, ids = our_ids(a.root, tok)
    probe = run_trl(a.root, a.trl_python, 0.0, 1)
    assert probe["prompt_ids"] == prompt and probe["input_ids"] == ids, "token ids differ between the sides"
    print(f"token ids equal on both sides ({len(prompt)} prompt + {len(ids) - len(prompt)} response); "
          f"settings: fp32, no gradient checkpointing, AdamW lr 5e-4 constant, clip 1.0, batch 4, beta 0.5, "
          f"temperature 0.9 (sampling), torch threads {probe['torch_threads']}, {platform.machine()} "
          f"{os.cpu_count()} cores", flush=True)
    results = [compare(a.root, (a.ours_python, a.trl_python), "gkd teacher-forced (lmbda=0)", "gkd", 0.0, a.steps, a.rounds),
               compare(a.root, (a.ours_python, a.trl_python), "gkd with generation (lmbda=1)", "gkd", 1.0, a.gen_steps, a.rounds),
               compare(a.root, (a.ours_python, a.trl_python), "our kd vs TRL gkd teacher-forced", "kd", 0.0, a.steps, a.rounds),
               compare(a.root, (a.ours_python, a.trl_python), "our opd (exact reverse KL) vs TRL DistillationTrainer (beta=1)", "opd",
                       1.0, a.gen_steps, a.rounds, trainer="distillation")]
    print(table(results))
    with open(a.out, "w") as f:
        json.dump({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": a.steps,
                   "gen_steps": a.gen_steps, "results": results}, f, indent=1)
    print(f"peer step: dpkd_jax {results[0]['ratio']:.2f}x trl teacher-forced, {results[1]['ratio']:.2f}x with generation")


if __name__ == "__main__":
    main()
