"""How far each sparse teacher cache is from the dense teacher (issue: an unbiased sampled cache).

On the real SmolLM2-135M-Instruct teacher's greedy answers to held-out prompts (the experiment's
eval set, chat template), with the experiment's pruned student (layers 12-21 removed), compares
the forward KL ``KL(p‖q)`` estimated from

* the top-k cache (k = 12, 64): the teacher's k most likely tokens + one residual bucket
  (``losses.sparse_forward_kl``, what ``teacher.cache="topk"`` trains with);
* the sampled cache (U = 12 draws, RS-KD): ``losses.sampled_forward_kl`` (``teacher.cache="sampled"``)

against the dense value ``losses.forward_kl``: the bias of the token-mean value, and the cosine of
each estimate's gradient to the dense gradient, w.r.t. the student's logits (per position, averaged)
and w.r.t. all the student's parameters (one vector over every prompt). The sampled cache is drawn
with several seeds: its value and cosines are reported per draw (mean ± std) and for the mean gradient.

  python bench/cache_bias.py --out bench/results/cache_bias_smollm2_cpu.json   # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dpkd_jax import data as data_lib, losses as L, models, run as run_lib, sampling, sharding  # noqa: E402
from dpkd_jax.assets import resolve  # noqa: E402
from dpkd_jax.experiment.runner import PROMPTS_DIR  # noqa: E402
from dpkd_jax.experiment.targets import greedy_targets, prompts_only  # noqa: E402
from dpkd_jax.pipeline import load_model  # noqa: E402
from dpkd_jax.teacher_cache import static_batches  # noqa: E402
from dpkd_jax.tools.prune import parse_layers, prune  # noqa: E402


def experiment_config():
    spec = importlib.util.spec_from_file_location("c", os.path.join(ROOT, "configs", "smollm2_pruned.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("cpu")


def load(n_prompts, max_new_tokens, workdir):
    """(teacher, student, tokenizer, data): the experiment's models and its first held-out prompts
    with the teacher's greedy answers."""
    cfg = experiment_config()
    path = resolve(cfg.teacher.path)
    tok = models.load_tokenizer(path)
    cfg = run_lib.resolved(cfg, tok, teacher_path=path)
    place = sharding.Placement(cfg.mesh)
    vocab = models.real_vocab_size(tok)
    teacher = load_model(cfg, place, "teacher", path, vocab)
    full_cfg, full = load_model(cfg, place, "student", path, vocab)
    student = prune(full_cfg, full, parse_layers(cfg.experiment.keep_layers, full_cfg.config.n_layers))
    recs = data_lib.read_jsonl(os.path.join(PROMPTS_DIR, "eval.jsonl"), data_lib.Report("eval.jsonl"))[:n_prompts]
    prompts, _ = prompts_only(recs, tok, max_prompt_length=cfg.data.max_prompt_length, max_new_tokens=max_new_tokens,
                              pad_token_id=cfg.gen.pad_token_id, template=cfg.data.template, source="eval")
    data = greedy_targets(*teacher, prompts, tok, max_new_tokens=max_new_tokens, batch_size=16,
                          eos_token_id=cfg.gen.eos_token_id, pad_token_id=cfg.gen.pad_token_id,
                          path=os.path.join(workdir, "teacher_targets.npz"))
    return teacher, student, tok, data


def estimators(ks, u):
    """name -> (per-example loss of student logits given the teacher's logits and a key, cache bytes / token)."""
    out = {"dense": (lambda s, t, m, key: L.forward_kl(s, t, m), None)}
    for k in ks:
        out[f"top-{k}"] = (lambda s, t, m, key, k=k: L.sparse_forward_kl(s, *L.topk_logprobs(t, k), m), 8 * k)
    out[f"sampled-{u}"] = (lambda s, t, m, key: L.sampled_forward_kl(s, *L.sampled_tokens(t, key, u), m), 5 * u)
    return out


def cosine(a, b, axis=None):
    return (a * b).sum(axis) / np.maximum(np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis), 1e-30)


def measure_batch(student, params, t_logits, arrays, fn, key):
    """(summed value, summed value at q = p, logit gradient ``[B, N, V]``, parameter gradient) of one batch.
    The value at ``q = p`` (same draws) is the estimator's student-independent offset: 0 for the dense
    and top-k forms; for the sampled one, the plug-in entropy gap ``Σ t̂ (log t̂ − log p)``."""
    p, pm, r, rm = arrays

    def total(prm):
        s = sampling.response_logits(student, prm, p, pm, r, rm)
        return (fn(s, t_logits, rm, key) * rm.sum(1)).sum(), s
    (value, s), g_params = jax.value_and_grad(total, has_aux=True)(params)
    g_logits = jax.grad(lambda x: (fn(x, t_logits, rm, key) * rm.sum(1)).sum())(s)
    offset = (fn(t_logits, t_logits, rm, key) * rm.sum(1)).sum()
    return value, offset, g_logits, g_params


def one_pass(step, student, params, batches, fn, seed, dense=None):
    """(value / token, value less its q-free offset / token, per-position logit-gradient cosines to
    ``dense`` (or the logit gradients themselves when ``dense`` is None), the parameter gradient)."""
    value = offset = 0.0
    tokens, logits, g_params = 0, [], None
    for b, (arrays, t_logits, n) in enumerate(batches):
        v, o, gl, gp = step(student, params, t_logits, arrays, fn, jax.random.key(1000 * seed + b))
        mask = np.asarray(arrays[3])[:n].astype(bool)
        value, offset, tokens = value + float(v), offset + float(o), tokens + int(mask.sum())
        gl = np.asarray(gl)[:n][mask]
        logits.append(gl if dense is None else cosine(gl.astype(np.float64), dense[0][b].astype(np.float64), axis=-1))
        flat = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(gp)])
        g_params = flat if g_params is None else g_params + flat
    return value / tokens, (value - offset) / tokens, logits, g_params, tokens


def run(args):
    teacher, (student, params), tok, data = load(args.prompts, args.max_new_tokens, args.workdir)
    est = estimators(args.k, args.u)
    batches = []
    for _, sl, idx in static_batches(len(data), args.batch_size):
        arrays = tuple(jnp.asarray(a[idx]) for a in (data.prompt_ids, data.prompt_mask, data.response_ids,
                                                      data.response_mask))
        batches.append((arrays, sampling.response_logits(*teacher, *arrays), len(sl)))
    step = jax.jit(measure_batch, static_argnums=(0, 4))
    d_value, _, d_logits, d_params, tokens = one_pass(step, student, params, batches, est["dense"][0], 0)
    dense = (d_logits, d_params.astype(np.float64))
    rows = {}
    for name, (fn, nbytes) in est.items():
        seeds = range(args.draws) if name.startswith("sampled") else [0]
        values, centred, cos_l, cos_p, mean_gp = [], [], [], [], 0.0
        for seed in seeds:
            v, c, cl, gp, _ = one_pass(step, student, params, batches, fn, seed, dense)
            values.append(v)
            centred.append(c)
            cos_l.append(np.concatenate(cl).mean())
            cos_p.append(cosine(gp.astype(np.float64), dense[1]))
            mean_gp = mean_gp + gp.astype(np.float64) / len(seeds)
        rows[name] = summary_row(nbytes, np.array(values), np.array(centred), np.array(cos_l), np.array(cos_p),
                                 cosine(mean_gp, dense[1]), d_value)
    return {"tokens": tokens, "rows": rows}, tok


def summary_row(nbytes, values, centred, cos_logits, cos_params, cos_mean, d_value):
    return {"bytes_per_token": nbytes, "forward_kl": float(values.mean()), "forward_kl_std": float(values.std()),
            "bias": float(values.mean() - d_value), "relative_bias": float((values.mean() - d_value) / d_value),
            "centred_bias": float(centred.mean() - d_value), "centred_bias_std": float(centred.std()),
            "cos_logit_grad": float(cos_logits.mean()), "cos_logit_grad_std": float(cos_logits.std()),
            "cos_param_grad": float(cos_params.mean()), "cos_param_grad_std": float(cos_params.std()),
            "cos_param_grad_of_mean": float(cos_mean), "draws": len(values)}


def table(out) -> str:
    lines = ["| cache | bytes / token | forward KL / token | bias | relative bias | bias less its q-free offset | "
             "cos(logit grad) | cos(param grad) | cos(param grad) of the mean over draws |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["rows"].items():
        sd = lambda key: f" ± {r[key + '_std']:.3f}" if r["draws"] > 1 else ""
        lines.append(f"| {name} | {r['bytes_per_token'] or 'full logits'} | {r['forward_kl']:.4f}{sd('forward_kl')} | "
                     f"{r['bias']:+.4f} | {100 * r['relative_bias']:+.1f}% | {r['centred_bias']:+.4f}"
                     f"{sd('centred_bias')} | {r['cos_logit_grad']:.3f}{sd('cos_logit_grad')} | "
                     f"{r['cos_param_grad']:.4f}{sd('cos_param_grad')} | {r['cos_param_grad_of_mean']:.4f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, nargs="+", default=[12, 64])
    ap.add_argument("--u", type=int, default=12)
    ap.add_argument("--draws", type=int, default=5, help="sampled-cache seeds")
    ap.add_argument("--workdir", default="work_dirs/cache_bias")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    start = time.perf_counter()
    out, _ = run(args)
    out.update(machine=f"{os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.default_backend()})",
               command="python bench/cache_bias.py " + " ".join(sys.argv[1:]), args=vars(args),
               seconds=time.perf_counter() - start)
    print(f"{out['tokens']} answer tokens from {args.prompts} held-out prompts\n" + table(out))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        with open(args.out.rsplit(".", 1)[0] + ".md", "w") as f:
            f.write(table(out) + "\n")


if __name__ == "__main__":
    main()
