"""The run a user starts: load models and data, train with one method, evaluate, export.

``train_loop`` is shared by `main` (paper configs) and the demo (several stages).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from . import data as data_lib
from . import evaluate as eval_lib
from . import models
from .checkpoint import Checkpoints
from .methods import METHODS
from .train import Throughput, init_state, make_optimizer, make_step, precompute_teacher_samples, step_flops


def resolve_token_ids(cfg, tokenizer):
    with cfg.unlocked():
        if cfg.gen.eos_token_id < 0:
            cfg.gen.eos_token_id = int(tokenizer.eos_token_id)
        if cfg.gen.pad_token_id < 0:
            pad = tokenizer.pad_token_id
            cfg.gen.pad_token_id = int(pad if pad is not None else tokenizer.eos_token_id)


def load_eval_sets(cfg, tokenizer, dev):
    sets = {"dev": dev}
    for name, path in cfg.data.eval_sets.items():
        sets[name], _ = data_lib.load_instructions(
            path, tokenizer, max_prompt_length=cfg.data.max_prompt_length, max_length=cfg.data.max_length,
            pad_token_id=cfg.gen.pad_token_id)
    if cfg.eval.max_examples:
        sets = {k: v.take(np.arange(min(len(v), cfg.eval.max_examples))) for k, v in sets.items()}
    return sets


def train_loop(cfg, student, params, teacher, teacher_params, train_data, lm_rows, workdir, *, dev=None,
               tokenizer=None, ref_params=None, desc=None):
    """Train ``params`` with ``cfg.method``; checkpoints, logs, resume. Returns (params, history)."""
    from tensorboardX import SummaryWriter
    t = cfg.train
    tx = make_optimizer(t)
    # The step donates its state: train on a copy so the caller's arrays (a shared
    # start, or the teacher itself) stay valid.
    state = init_state(jax.tree.map(jnp.copy, params), tx)
    method = METHODS[cfg.method]
    extra = None
    if method.teacher_samples and cfg.gen.teacher_mode == "offline":
        extra = precompute_teacher_samples(cfg, teacher, teacher_params, train_data,
                                           os.path.join(workdir, "teacher_samples.npz"))
    batches = data_lib.Batches(train_data, t.batch_size, cfg.seed, extra)
    use_lm = lm_rows is not None and cfg.loss.lm_coef > 0
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), keep=t.keep)
    history, start = [], 0
    if cfg.resume:
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, ext = restored
            batches.restore(ext["data"])
            history = ext.get("history", [])
            start = int(state["step"])
            logging.info("resumed from step %d", start)
    step_fn = make_step(cfg, student, teacher, tx, teacher_params, ref_params)
    writer = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else None
    throughput = Throughput(step_flops(cfg, student, teacher, t.batch_size),
                            t.batch_size * (cfg.data.max_length + cfg.gen.max_new_tokens))
    base_rng = jax.random.PRNGKey(cfg.seed)
    pbar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc=desc or cfg.method, leave=False)
    for step in pbar:
        batch = batches.next()
        if use_lm:
            # Deterministic per step, so a resumed run sees the same text.
            rows = np.random.default_rng([cfg.seed, step]).integers(0, len(lm_rows), t.batch_size)
            batch["lm_ids"] = lm_rows[rows]
        batch.pop("example_ids")
        state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step))
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            metrics.update(throughput(t.log_every if done % t.log_every == 0 else done % t.log_every))
            metrics["step"] = done
            history.append(metrics)
            pbar.set_postfix(loss=f"{metrics['loss/total']:.3f}")
            if writer:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, done)
        best = None
        if t.eval_every and done % t.eval_every == 0 and dev is not None:
            res = eval_lib.evaluate(student, state["params"], {"dev": dev}, tokenizer, _quick_eval(cfg), cfg.gen)
            best = res["dev"]["rougeL"]
            if writer:
                writer.add_scalar("eval/dev_rougeL", best, done)
        if done % t.save_every == 0 or done == t.steps or best is not None:
            ckpt.save(done, state, {"data": batches.state(), "history": history}, best_metric=best)
    ckpt.wait()
    ckpt.close()
    if writer:
        writer.close()
    return state["params"], history


def _quick_eval(cfg):
    ec = cfg.eval.copy_and_resolve_references()
    with ec.unlocked():
        ec.seeds = ec.seeds[:1]
    return ec


def plot_history(history, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("loss", [k for k in history[0] if k.startswith("loss/")]),
              ("implicit reward", [k for k in history[0] if k.startswith("reward/") and "accuracy" not in k]),
              ("first-token KL", ["kl/first_token_forward", "kl/first_token_reverse"])]
    panels = [(n, ks) for n, ks in panels if ks]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    steps = [h["step"] for h in history]
    for ax, (name, keys) in zip(np.atleast_1d(axes), panels):
        for k in keys:
            ax.plot(steps, [h.get(k, np.nan) for h in history], label=k.split("/", 1)[-1])
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg):
    """Train (or evaluate, or generate) with the models and data the config names."""
    os.makedirs(cfg.workdir, exist_ok=True)
    models.check_same_vocabulary(cfg.teacher.path, cfg.student.path)
    tokenizer = models.load_tokenizer(cfg.student.path)
    resolve_token_ids(cfg, tokenizer)
    teacher = models.from_pretrained(cfg.teacher.path, dtype=jnp.dtype(cfg.teacher.dtype))
    student = models.from_pretrained(cfg.student.path, dtype=jnp.dtype(cfg.student.dtype),
                                     compute_dtype=jnp.dtype(cfg.student.compute_dtype))
    s_cfg, params = student.decoder()
    t_cfg, t_params = teacher.decoder()
    if cfg.mode == "generate":
        return generate_mode(cfg, s_cfg, params, tokenizer)
    dl = dict(max_prompt_length=cfg.data.max_prompt_length, max_length=cfg.data.max_length,
              pad_token_id=cfg.gen.pad_token_id)
    full, report = data_lib.load_instructions(cfg.data.train, tokenizer, **dl)
    print(report)
    train_data, dev = data_lib.split_dev(full, cfg.data.dev_num, cfg.seed)
    lm_rows = data_lib.load_packed(cfg.data.pretrain, tokenizer, cfg.data.lm_seq_len) if cfg.data.pretrain else None
    results = {}
    if cfg.mode == "train":
        ref = params if METHODS[cfg.method].needs_reference else None
        params, history = train_loop(cfg, s_cfg, params, t_cfg, t_params, train_data, lm_rows, cfg.workdir,
                                     dev=dev, tokenizer=tokenizer, ref_params=ref)
        if jax.process_index() == 0 and history:
            plot_history(history, os.path.join(cfg.workdir, "curves.png"), cfg.method)
            models.save_pretrained(models.CausalLM(s_cfg, params), os.path.join(cfg.workdir, "export", "final"))
            tokenizer.save_pretrained(os.path.join(cfg.workdir, "export", "final"))
    sets = load_eval_sets(cfg, tokenizer, dev)
    out_dir = os.path.join(cfg.workdir, "eval")
    results[cfg.method] = eval_lib.evaluate(s_cfg, params, sets, tokenizer, cfg.eval, cfg.gen, out_dir, "student")
    if cfg.eval.eval_teacher:
        results["teacher"] = eval_lib.evaluate(t_cfg, t_params, sets, tokenizer, cfg.eval, cfg.gen, out_dir,
                                               "teacher")
    print_table(results)
    return results


def generate_mode(cfg, s_cfg, params, tokenizer):
    g = cfg.generate
    if g.prompt:
        records = [{"prompt": data_lib.format_prompt(g.prompt), "response": "", "category": ""}]
    elif g.input_file:
        records = data_lib.read_jsonl(g.input_file, data_lib.Report(g.input_file))
    else:
        raise ValueError("config.generate: set generate.prompt or generate.input_file for mode=generate")
    rep = data_lib.Report(g.input_file or "prompt")
    data = data_lib.tokenize(records, tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                             max_length=cfg.data.max_length, report=rep, pad_token_id=cfg.gen.pad_token_id)
    answers = eval_lib.generate_answers(s_cfg, params, data, tokenizer, batch_size=min(cfg.eval.batch_size,
                                                                                       len(data)),
                                        max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed,
                                        temperature=cfg.eval.temperature, top_k=cfg.eval.top_k,
                                        top_p=cfg.eval.top_p, greedy=cfg.eval.greedy,
                                        eos_token_id=cfg.gen.eos_token_id, pad_token_id=cfg.gen.pad_token_id)
    out = g.output_file or os.path.join(cfg.workdir, "answers.jsonl")
    with open(out, "w") as f:
        for p, a in zip(data.prompts, answers):
            f.write(json.dumps({"prompt": p, "answer": a}) + "\n")
    for a in answers[:5]:
        print(a)
    return answers


def print_table(results):
    """Method × eval set table of RougeL / EM."""
    sets = sorted({s for r in results.values() for s in r})
    head = "| method | " + " | ".join(f"{s} RougeL | {s} EM" for s in sets) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(sets))]
    for name, r in results.items():
        cells = []
        for s in sets:
            cells += [f"{r[s]['rougeL']:.2f}", f"{r[s]['exact_match']:.2f}"] if s in r else ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table
