"""The experiment's outputs under ``<workdir>``: ``table.md`` (mean ± std over seeds),
``results.json``, ``curves.png`` (each metric over steps, seed spread shaded) and
``hacking.png`` (the student's NLL of y_s and y_t over steps in the DPKD runs)."""

from __future__ import annotations

import json
import os
import platform

import numpy as np

from .. import trackers
from .measure import CROSS_METRICS, METRICS

LABELS = {"rougeL": "RougeL vs teacher", "teacher_logp": "teacher log-prob / token of y_s",
          "forward_kl": "forward KL / token (on y_t)", "reverse_kl": "reverse KL / token (on y_t)",
          "distinct2": "distinct-2 of y_s", "length": "length of y_s (tokens)",
          "student_nll": "student NLL / token of y_s"}
# across tokenizers (experiment.cross): token counts differ, so distinct-2 and length are in words
CROSS_LABELS = dict(LABELS, teacher_logp="teacher log-prob / token of y_s (teacher's tokens)",
                    distinct2="distinct-2 of y_s (words)", length="length of y_s (words)")


def metrics(cfg):
    """(the metrics of the table, their labels)."""
    return (CROSS_METRICS, CROSS_LABELS) if cfg.experiment.cross else (METRICS, LABELS)


def _fmt(values):
    v = np.asarray(values, float)
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def _label(name, rows, lrs, previous=()):
    method, over = rows[name]
    knobs = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in over.items())
    tag = {"dpkd": " (paper: β=0.1, kd_ratio=0.5)", "dpkd_best": " (best on dev)"}.get(name, "")
    return (f"{name}{tag}" + (f" [{knobs}]" if knobs else "") + f", lr {lrs[name]:g}"
            + (" (earlier run †)" if name in previous else ""))


def table(cfg, start, runs, lrs, rows, previous=()) -> str:
    e = cfg.experiment
    names, labels = metrics(cfg)
    head = "| student | " + " | ".join(labels[m] for m in names) + " | train s / run |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for who in ("teacher", "student"):
        label = ("teacher (reference)" if who == "teacher" else
                 e.start_label or f"pruned student before training ({e.keep_layers})")
        lines.append(f"| {label} | " + " | ".join(f"{start[who][m]:.2f}" for m in names) + " | |")
    for name, rs in runs.items():
        finals = [r["curve"][-1] for r in rs]
        lines.append(f"| {_label(name, rows, lrs, previous)} | " + " | ".join(_fmt([f[m] for f in finals]) for m in names)
                     + f" | {np.mean([r['train_s'] for r in rs]):.0f} |")
    return "\n".join(lines)


def host_share(runs) -> str:
    """Per method: the host round trip (``xtok/host_s``: copies, decode, encode) against the whole
    step (``perf/step_time_s``), medians over every logged step after the first (which compiles)."""
    lines = ["| method | host round trip (ms / step) | whole step (s) | share |", "|---|---|---|---|"]
    for name, rs in runs.items():
        steps = [h for r in rs for h in r["history"][1:] if "xtok/host_s" in h]
        if steps:
            host = float(np.median([h["xtok/host_s"] for h in steps]))
            step = float(np.median([h["perf/step_time_s"] for h in steps]))
            lines.append(f"| {name} | {1e3 * host:.1f} | {step:.1f} | {100 * host / step:.3f}% |")
    return "\n".join(lines)


def knobs_table(knobs) -> str:
    lines = ["| β | kd_ratio | dev RougeL | DPKD term first → last | reward margin first → last | "
             "NLL(y_s) first → last |", "|---|---|---|---|---|---|"]
    for k in knobs:
        lines.append(f"| {k['beta']:g} | {k['kd_ratio']:g} | {k['dev_rougeL']:.2f} | "
                     f"{k['loss/dpkd_first']:.4f} → {k['loss/dpkd_last']:.4f} | "
                     f"{k['reward/margin_first']:.3f} → {k['reward/margin_last']:.3f} | "
                     f"{k['hacking/student_nll_ys_first']:.3f} → {k['hacking/student_nll_ys_last']:.3f} |")
    return "\n".join(lines)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(start, runs, path, names=METRICS, labels=LABELS):
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, m in zip(axes.ravel(), names):
        for name, rs in runs.items():
            steps = [0] + [p["step"] for p in rs[0]["curve"]]
            ys = np.array([[start["student"][m]] + [p[m] for p in r["curve"]] for r in rs])
            line, = ax.plot(steps, ys.mean(0), label=name)
            ax.fill_between(steps, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ax.axhline(start["teacher"][m], color="k", ls=":", lw=1, label="teacher")
        ax.set_title(labels[m])
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_hacking(runs, knob_runs, path):
    """NLL(y_s) and NLL(y_t) over steps for every DPKD run (mean over seeds)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    groups = {n: rs for n, rs in runs.items() if rs[0]["method"] == "dpkd"}
    groups.update({k["name"]: [k] for k in knob_runs})
    for name, rs in groups.items():
        for ax, key in zip(axes, ("hacking/student_nll_ys", "hacking/student_nll_yt")):
            steps = [h["step"] for h in rs[0]["history"]]
            ys = np.array([[h.get(key, np.nan) for h in r["history"]] for r in rs]).mean(0)
            ax.plot(steps, ys, label=name)
    for ax, t in zip(axes, ("student NLL / token of its own samples y_s", "student NLL / token of y_t")):
        ax.set_title(t)
        ax.set_xlabel("step")
    if groups:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(cfg, start, runs, lrs, grid, knobs, rows, knob_runs=(), previous=()):
    """``previous``: rows read from ``experiment.previous`` (not retrained here), marked † in the table."""
    wd, e = cfg.workdir, cfg.experiment
    machine = e.machine or f"{platform.machine()}, {os.cpu_count()} CPU cores"
    main = table(cfg, start, runs, lrs, rows, previous)
    if previous:
        main += (f"\n\n† read from `{e.previous}` (an earlier run at the same scale and machine, with the code "
                 f"of its day), not retrained; the reference rows above are this run's.")
    grid_lines = "\n".join(f"- {n}: " + ", ".join(f"lr {lr:g} → {s:.2f}" for lr, s in g.items()) + f" (picked "
                           f"{lrs[n]:g})" + ("" if n in runs else "; not the best of "
                                             f"{', '.join(e.best_of)} on dev, so not trained further")
                           for n, g in grid.items())
    text = (f"# {e.title}\n\nMachine: {machine}. Scale: {e.scale}. Steps {e.steps}, batch {cfg.train.batch_size}, "
            f"responses ≤ {cfg.gen.max_new_tokens} tokens, {len(e.seeds)} seeds {tuple(e.seeds)}; "
            f"train/dev/eval prompts {e.n_train}/{e.n_dev}/{e.n_eval}.\nCommand: `{e.command}`\n\n{main}\n\n"
            f"## Learning rate (dev RougeL, seed {e.seeds[0]})\n\n{grid_lines}\n")
    if knobs:
        text += f"\n## DPKD's β and kd_ratio (dev, seed {e.seeds[0]})\n\n{knobs_table(knobs)}\n"
        if "dpkd_best" not in rows:
            text += "\nThe best on dev is the config's own β and kd_ratio: the dpkd row above.\n"
    if e.cross:
        text += f"\n## The host round trip across tokenizers\n\n{host_share(runs)}\n"
    with open(os.path.join(wd, "table.md"), "w") as f:
        f.write(text)
    with trackers.open_for(cfg) as tr:
        tr.table("results", table(cfg, start, runs, lrs, rows, previous))
    with open(os.path.join(wd, "results.json"), "w") as f:
        json.dump({"start": start, "lrs": lrs, "grid": {n: {str(k): v for k, v in g.items()} for n, g in grid.items()},
                   "knobs": knobs, "runs": runs, "previous": list(previous)}, f, indent=1)
    plot_curves(start, runs, os.path.join(wd, "curves.png"), *metrics(cfg))
    plot_hacking(runs, knob_runs, os.path.join(wd, "hacking.png"))
    print(text)
    return text
