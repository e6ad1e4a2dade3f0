"""The curves PNG of a training stage: losses, implicit rewards, first-token KLs and the
reward-hacking diagnostics over steps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

# One worker draws the stages' figures (~0.8 s of matplotlib each on the 2-core CPU box) while the
# next stage trains; the interpreter joins it at exit.
_WORKER = ThreadPoolExecutor(1, thread_name_prefix="curves")
_PENDING = []


def plot_later(history, path, title=""):
    """:func:`plot_history` on the curves worker; :func:`wait` for the files."""
    _PENDING.append(_WORKER.submit(plot_history, [dict(h) for h in history], path, title))


def wait():
    """Block until every figure asked for is written; raises the first drawing error."""
    while _PENDING:
        _PENDING.pop(0).result()


def plot_history(history, path, title=""):
    # the object API, not pyplot: no global figure state, so a worker thread may draw
    from matplotlib.figure import Figure
    panels = [("loss", [k for k in history[0] if k.startswith("loss/")]),
              ("implicit reward", [k for k in history[0] if k.startswith("reward/") and "accuracy" not in k]),
              ("first-token KL", ["kl/first_token_forward", "kl/first_token_reverse"]),
              ("reward hacking: per-token NLL / log-prob", [k for k in ("hacking/student_nll_yt",
                                                                          "hacking/student_nll_ys",
                                                                          "hacking/teacher_logp_ys") if k in history[0]]),
              ("student samples", [k for k in ("hacking/distinct2_ys",) if k in history[0]])]
    panels = [(n, ks) for n, ks in panels if ks]
    fig = Figure(figsize=(5 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels))
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
