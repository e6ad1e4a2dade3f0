"""Length-grouped batches (``data.group_by_length``): prompts of similar length share a batch, and each batch's
prompts are cut to the narrowest of a few widths that holds them, so left padding shrinks.

An epoch's shuffled order is cut into windows of ``window`` batches; each window is sorted by prompt length and
cut into batches, and the epoch's batches are shuffled again. Everything follows from (seed, epoch), so a resumed
run sees the same batches. The widths are the data's prompt width halved up to three times (at least
``MIN_WIDTH``): the step compiles once per width it meets, at most four times.
"""

from __future__ import annotations

import numpy as np

MIN_WIDTH = 16


def widths_for(prompt_width: int) -> tuple[int, ...]:
    """The prompt widths a grouped batch may take, narrowest first: ``P``, ``P/2``, ``P/4``, ``P/8`` (>= MIN_WIDTH)."""
    out = {prompt_width}
    for k in (1, 2, 3):
        if prompt_width >> k >= MIN_WIDTH:
            out.add(prompt_width >> k)
    return tuple(sorted(out))


def width_of(longest: int, widths) -> int:
    """The narrowest width that holds a batch whose longest prompt has ``longest`` tokens."""
    return next(w for w in widths if w >= longest)


def group(order, prompt_lengths, batch_size: int, window: int, rng) -> list:
    """The epoch's batches (index arrays): windows of ``window`` batches from ``order``, each sorted by prompt
    length and cut in ``batch_size`` pieces; the batches then shuffled with ``rng``. A last partial batch drops."""
    span = window * batch_size
    batches = []
    for start in range(0, len(order) - len(order) % batch_size, span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(prompt_lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def saved(batches, prompt_lengths, widths) -> tuple[float, float]:
    """(prompt slots per row at the full width, on average over ``batches`` at their grouped widths)."""
    used = [width_of(int(prompt_lengths[b].max()), widths) for b in batches]
    return float(widths[-1]), float(np.mean(used)) if used else float(widths[-1])
