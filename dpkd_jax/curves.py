"""The curves PNG of a training stage: losses, implicit rewards, first-token KLs and the
reward-hacking diagnostics over steps."""

from __future__ import annotations

import numpy as np


def plot_history(history, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("loss", [k for k in history[0] if k.startswith("loss/")]),
              ("implicit reward", [k for k in history[0] if k.startswith("reward/") and "accuracy" not in k]),
              ("first-token KL", ["kl/first_token_forward", "kl/first_token_reverse"]),
              ("reward hacking: per-token NLL / log-prob", [k for k in ("hacking/student_nll_yt",
                                                                          "hacking/student_nll_ys",
                                                                          "hacking/teacher_logp_ys") if k in history[0]]),
              ("student samples", [k for k in ("hacking/distinct2_ys",) if k in history[0]])]
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
