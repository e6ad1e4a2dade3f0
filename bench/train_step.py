"""One full DPKD step (teacher + student generation, four scorings, gold CE, AdamW update):
ours vs the same step in PyTorch + transformers written the reference code's way (HF
`generate`, HF forward passes, torch AdamW), same shapes and batch, interleaved runs, medians.

    python bench/train_step.py                                  # CPU: small GPT-2 shapes
    python bench/train_step.py --gpt2-xl-to-base --batch 8 --prompt 256 --new 256   # GPU, bf16
    python bench/train_step.py --growth --no-torch --plot bench/results/step_growth.png
    python bench/train_step.py --mesh data:1,fsdp:2,tensor:2 --no-torch   # sharded step (8 devices)

Also: the step without generation (samples given), a breakdown of our step's parts
(teacher sampling, student sampling, scoring + update), MFU on a known accelerator,
and with --growth the step time as new tokens (64..512) and batch double.
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import models, sampling, sharding
from dpkd_jax.config import default_config
from dpkd_jax.models import gpt2
from dpkd_jax import planner as plan
from dpkd_jax.optim import make_optimizer
from dpkd_jax.runspec import RunSpec
from dpkd_jax.throughput import peak_flops, step_flops
from dpkd_jax.batch import Batch
from dpkd_jax.specs import Step
from dpkd_jax.train import init_state, make_step, place_state, step_shardings


def build(args):
    mk = lambda d, L, H, dt, cdt: gpt2.tiny_config(vocab_size=args.vocab, d_model=d, n_layers=L, n_heads=H,
                                                   d_ff=4 * d, max_positions=1024, param_dtype=dt, compute_dtype=cdt)
    t = mk(args.t_width, args.t_layers, args.t_heads, args.dtype, args.dtype)
    s = mk(args.s_width, args.s_layers, args.s_heads, "float32", args.dtype)
    return models.init(t, 0), models.init(s, 1)


def config(args, new):
    c = default_config()
    c.method = "dpkd"
    c.data.max_prompt_length, c.data.max_length = args.prompt, args.prompt + args.response
    c.gen.max_new_tokens, c.gen.eos_token_id, c.gen.pad_token_id = new, -1, 0  # always `new` tokens, as HF below
    c.train.batch_size, c.train.log_every, c.train.steps = args.batch, 10**9, 10**9  # no KL metrics in the timing
    c.loss.dpkd.lm_coef = 0.0
    if "loss_chunk_tokens" in c.model and args.chunk_tokens >= 0:
        c.model.loss_chunk_tokens = args.chunk_tokens
    return c


def batch_of(args, rng, new=None, with_samples=False):
    B, P, R = args.batch, args.prompt, args.response
    b = {"prompt_ids": rng.integers(1, args.vocab, (B, P)).astype(np.int32), "prompt_mask": np.ones((B, P), np.int32),
         "response_ids": rng.integers(1, args.vocab, (B, R)).astype(np.int32), "response_mask": np.ones((B, R), np.int32)}
    if with_samples:
        for k in ("teacher", "student"):
            b[f"{k}_ids"] = rng.integers(1, args.vocab, (B, new)).astype(np.int32)
            b[f"{k}_mask"] = np.ones((B, new), np.int32)
    return Batch.of({k: jnp.asarray(v) for k, v in b.items()})


def fields(batch):
    """The batch's arrays by name (the torch reference reads them)."""
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None}


class Ours:
    def __init__(self, args, teacher, student, new):
        self.cfg = config(args, new)
        (self.t_cfg, self.t_params), (self.s_cfg, s_params) = teacher, student
        self.tx = make_optimizer(self.cfg.train)
        self.sh = None
        if args.mesh:  # compiled over a mesh with the rules' shardings, as the trainer does
            self.sh = step_shardings(sharding.Placement(plan.parse_mesh(args.mesh)), self.s_cfg, self.t_cfg, self.tx,
                                     s_params)
            self.t_params = sharding.copy_to(self.t_params, self.sh["teacher"])
            self.state = place_state(self.s_cfg, s_params, self.tx, self.sh)
        else:
            self.state = init_state(self.s_cfg, jax.tree.map(jnp.copy, s_params), self.tx)
        spec = Step.of(RunSpec.of(self.cfg))
        self.step = make_step(spec, self.s_cfg, self.t_cfg, self.tx, self.t_params, shardings=self.sh)
        self.flops = step_flops(spec.objective.needs, self.s_cfg, self.t_cfg, args.batch,
                                (args.prompt, args.response, new))

    def __call__(self, batch, seed):
        if self.sh is not None:
            batch = jax.device_put(batch, self.sh["batch"])
        t = time.perf_counter()
        self.state, m = self.step(self.state, batch, jax.random.PRNGKey(seed))
        jax.block_until_ready((self.state, m))
        return time.perf_counter() - t

    def sample(self, which, batch, new, seed):
        cfg, params = (self.t_cfg, self.t_params) if which == "teacher" else (self.s_cfg, self.state["params"])
        t = time.perf_counter()
        out = sampling.sample_jit(cfg, params, *batch.prompts, jax.random.PRNGKey(seed),
                                  sampling.Sampling(max_new_tokens=new, eos_token_id=-1, pad_token_id=0))
        jax.block_until_ready(out)
        return time.perf_counter() - t


class Torch:
    """The reference code's step: HF generate for y_t and y_s, HF forwards for the four
    scorings and gold CE, length-normalised DPKD (sigmoid), AdamW with clipping."""

    def __init__(self, args, teacher, student, new):
        import torch
        from transformers import AutoModelForCausalLM
        self.torch, self.new, self.args = torch, new, args
        self.dev = "cuda" if torch.cuda.is_available() and jax.devices()[0].platform == "gpu" else "cpu"
        self.bf16 = args.dtype == "bfloat16"
        loaded = []
        for cfg, params, dt in ((*teacher, args.dtype), (*student, "float32")):
            d = tempfile.mkdtemp()
            models.save_pretrained(models.merge(cfg, params), d)
            loaded.append(AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, dt)).to(self.dev))
        self.teacher, self.student = loaded[0].eval(), loaded[1].train()
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=5e-4, weight_decay=0.01)

    def _logp(self, model, prompt, pmask, resp, rmask):
        torch = self.torch
        ids, am = torch.cat([prompt, resp], 1), torch.cat([pmask, rmask], 1)
        pos = (am.cumsum(1) - 1).clamp(min=0)
        with torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.bf16):
            logits = model(ids, attention_mask=am, position_ids=pos).logits[:, prompt.shape[1] - 1:-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, resp[..., None])[..., 0]
        return (lp * rmask).sum(1), rmask.sum(1).clamp(min=1)

    def __call__(self, batch, seed, samples=None):
        torch = self.torch
        t = time.perf_counter()
        b = {k: torch.as_tensor(np.asarray(v), device=self.dev).long() for k, v in fields(batch).items()}
        P = b["prompt_ids"].shape[1]
        torch.manual_seed(seed)
        if samples is None:
            with torch.no_grad(), torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.bf16):
                gen = dict(attention_mask=b["prompt_mask"], do_sample=True, top_k=0, top_p=1.0,
                           max_new_tokens=self.new, min_new_tokens=self.new, pad_token_id=0)
                yt = self.teacher.generate(b["prompt_ids"], **gen)[:, P:]
                ys = self.student.generate(b["prompt_ids"], **gen)[:, P:]
        else:
            yt, ys = b["teacher_ids"], b["student_ids"]
        ones = torch.ones_like(yt)
        with torch.no_grad():
            tt, _ = self._logp(self.teacher, b["prompt_ids"], b["prompt_mask"], yt, ones)
            ts, _ = self._logp(self.teacher, b["prompt_ids"], b["prompt_mask"], ys, ones)
        st, n = self._logp(self.student, b["prompt_ids"], b["prompt_mask"], yt, ones)
        ss, _ = self._logp(self.student, b["prompt_ids"], b["prompt_mask"], ys, ones)
        g, gn = self._logp(self.student, b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"])
        ce = -(g / gn).mean()
        dpkd = -torch.nn.functional.logsigmoid(0.1 * ((st - tt) / n - (ss - ts) / n)).mean()
        loss = 0.5 * ce + 0.5 * dpkd
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t


def median_of(fn, repeats):
    return statistics.median(fn(r) for r in range(repeats))


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(t_width=256, t_layers=4, t_heads=4, s_width=128, s_layers=2, s_heads=2, vocab=5000, batch=8,
                     prompt=32, response=32, new=32, repeats=5).items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--chunk-tokens", type=int, default=-1, help="model.loss_chunk_tokens (-1: the config default; "
                    "0: whole-vocabulary logits)")
    ap.add_argument("--gpt2-xl-to-base", action="store_true", help="GPT-2 XL teacher, GPT-2 base student, bf16")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--mesh", default="", help="e.g. data:-1,fsdp:1,tensor:1: compile our step over a device mesh")
    ap.add_argument("--growth", action="store_true", help="step time at 64..512 new tokens and batch x1, x2, x4")
    ap.add_argument("--plot", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.gpt2_xl_to_base:
        args.t_width, args.t_layers, args.t_heads, args.s_width, args.s_layers, args.s_heads = 1600, 48, 25, 768, 12, 12
        args.vocab, args.dtype = 50257, "bfloat16"
    dev = jax.devices()[0]
    out = {"device": dev.device_kind, "platform": dev.platform, "args": vars(args)}
    teacher, student = build(args)
    rng = np.random.default_rng(0)
    batch, fixed = batch_of(args, rng), batch_of(args, rng, args.new, with_samples=True)
    ours = Ours(args, teacher, student, args.new)
    t = time.perf_counter()
    ours(batch, 0)
    out["ours_compile_and_first_step_s"] = time.perf_counter() - t
    ours(fixed, 0)  # compile the no-generation variant
    ref = None if args.no_torch else Torch(args, teacher, student, args.new)
    if ref:
        ref(batch, 0)
        ref(fixed, 0, samples=True)
    times = {"ours": [], "ours_nogen": [], "torch": [], "torch_nogen": []}
    for r in range(args.repeats):  # interleaved
        times["ours"].append(ours(batch, r + 1))
        times["ours_nogen"].append(ours(fixed, r + 1))
        if ref:
            times["torch"].append(ref(batch, r + 1))
            times["torch_nogen"].append(ref(fixed, r + 1, samples=True))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    tokens = args.batch * (args.prompt + args.response + 2 * args.new)
    for k, v in med.items():
        out[f"{k}_step_s"] = v
        out[f"{k}_tokens_per_s"] = tokens / v
    if ref:
        out["speedup_full_step"] = med["torch"] / med["ours"]
        out["speedup_without_generation"] = med["torch_nogen"] / med["ours_nogen"]
    # Where our step's time goes: the two samplers alone, and the rest (scoring + update).
    parts = {w: median_of(lambda r: ours.sample(w, batch, args.new, r), 3) for w in ("teacher", "student")}
    parts["score_and_update"] = med["ours_nogen"]
    out["ours_parts_s"] = parts
    peak = peak_flops(dev)
    peak = peak and peak * (jax.device_count() if args.mesh else 1)
    out["model_flops_per_step"] = ours.flops
    if peak:
        out["mfu_full_step"] = ours.flops / med["ours"] / peak
        gen_flops = step_flops(Step.of(RunSpec.of(config(args, 0))).objective.needs, ours.s_cfg, ours.t_cfg, args.batch,
                               (args.prompt, args.response, 0))
        out["mfu_without_generation"] = gen_flops / med["ours_nogen"] / peak
    if args.growth:
        g = {"new_tokens": {}, "batch": {}}
        for n in (64, 128, 256, 512):
            o = Ours(args, teacher, student, n)
            o(batch, 0)
            g["new_tokens"][n] = median_of(lambda r: o(batch, r + 1), 3)
        base = args.batch
        for mult in (1, 2, 4):
            args.batch = base * mult
            o, b = Ours(args, teacher, student, args.new), batch_of(args, rng)
            o(b, 0)
            g["batch"][args.batch] = median_of(lambda r: o(b, r + 1), 3)
        args.batch = base
        out["growth_step_s"] = g
        if args.plot:
            plot(g, args.plot, f"{dev.device_kind}: DPKD step time")
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def plot(g, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, label) in zip(axes, (("new_tokens", "new tokens per sample"), ("batch", "batch size"))):
        xs = sorted(g[key])
        ys = [g[key][x] for x in xs]
        ax.plot(xs, ys, "o-", label="measured")
        ax.plot(xs, [ys[0] * x / xs[0] for x in xs], "--", label="linear from first point")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("step time (s)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
