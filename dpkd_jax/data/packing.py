"""Packing: a step's examples laid end to end in fewer rows of ``length`` slots.

A batch keeps its ``B`` examples (prompt and gold response, as unpacked); packing only changes the
teacher-forced forward. Each example's real tokens (the left-padded prompt's and the right-padded
response's, contiguous in the ``[B, P + R]`` row) go to one of ``rows`` packed rows at an offset
(first fit); positions restart at 0 per example, each example is its own segment (0: padding), and
attention stays within a segment. ``picks`` maps every response token back to the packed slot whose
output predicts it, so every loss sees the same ``[B, R]`` values as unpacked and is reduced per
example exactly as unpacked.

``rows`` is static (one compiled step): what first fit needs for most batches of a shuffled order
(:func:`rows_for`). Each epoch's shuffled order is grouped into batches that fit them
(:func:`group`): an example that does not fit the batch being filled waits for the next one, so a
batch is never cut and the order stays a function of the seed and the epoch.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def first_fit(lengths, capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped, in their order, into bins of at most ``capacity`` (first fit)."""
    bins, room = [], []
    for i in range(len(lengths)):
        n = int(lengths[i])
        if n > capacity:
            raise InputError(f"data.packing: an example of {n} tokens is longer than the packed rows' {capacity} slots")
        k = next((k for k, r in enumerate(room) if r >= n), None)
        if k is None:
            bins.append([])
            room.append(capacity)
            k = len(bins) - 1
        bins[k].append(i)
        room[k] -= n
    return bins


def example_lengths(prompt_mask, response_mask) -> np.ndarray:
    return np.asarray(prompt_mask).sum(1) + np.asarray(response_mask).sum(1)


def plan(prompt_mask, response_mask, length: int, rows: int) -> dict:
    """The packing of one batch: ``{"src", "positions", "segments"}`` ``[rows, length]`` (``src``: the
    flat index of each slot's token in the ``[B, P + R]`` prompt-then-response rows, 0 for padding;
    ``segments``: example b + 1, 0 for padding) and ``picks [B, R]``, the flat packed slot
    (row x length + slot) whose output predicts each response token (padding tokens: the example's
    last slot; the losses mask them)."""
    p_len, r_len = np.asarray(prompt_mask).sum(1), np.asarray(response_mask).sum(1)
    B, P = np.shape(prompt_mask)
    R = np.shape(response_mask)[1]
    bins = first_fit(p_len + r_len, length)
    if len(bins) > rows:
        raise ValueError(f"packing: this batch needs {len(bins)} rows, the step has {rows}")
    src, pos, seg = (np.zeros((rows, length), np.int32) for _ in range(3))
    picks = np.zeros((B, R), np.int32)
    for k, members in enumerate(bins):
        at = 0
        for b in members:
            n, p = int(p_len[b] + r_len[b]), int(p_len[b])
            src[k, at:at + n] = b * (P + R) + (P - p) + np.arange(n)
            pos[k, at:at + n] = np.arange(n)
            seg[k, at:at + n] = b + 1
            picks[b] = k * length + at + np.minimum(p - 1 + np.arange(R), n - 1)
            at += n
    return {"src": src, "positions": pos, "segments": seg, "picks": picks}


def rows_for(lengths, batch_size: int, length: int, quantile: float = 0.9, seed: int = 0) -> int:
    """Packed rows per step: as many as first fit needs for ``quantile`` of the batches of a shuffled order
    (the rest are regrouped to fit, :func:`group`); at most one row per example."""
    lengths = np.asarray(lengths)
    order = np.random.default_rng(seed).permutation(len(lengths))
    needs = [len(first_fit(lengths[order[i:i + batch_size]], length))
             for i in range(0, len(order) - batch_size + 1, batch_size)] or [batch_size]
    return int(min(batch_size, np.ceil(np.quantile(needs, quantile))))


class _Filling:
    """The batch being filled: its members and the room left in each of its rows."""

    def __init__(self, rows, length):
        self.members, self.room = [], [length] * rows

    def add(self, i, n) -> bool:
        k = next((k for k, r in enumerate(self.room) if r >= n), None)
        if k is not None:
            self.members.append(i)
            self.room[k] -= n
        return k is not None


def group(order, lengths, batch_size: int, length: int, rows: int) -> tuple[list, int]:
    """(batches of ``order``'s indices that each fit ``rows`` rows of ``length`` slots in first fit,
    the count left over at the end). An example that does not fit the batch being filled waits, and
    each new batch first takes the waiting ones that fit, in order."""
    batches, waiting, cur = [], [], _Filling(rows, length)

    def take(i) -> bool:  # into the batch being filled, if it has a place and room
        return len(cur.members) < batch_size and cur.add(i, int(lengths[i]))

    for i in order:
        if not take(i):
            waiting.append(i)
        while len(cur.members) == batch_size:
            batches.append(np.asarray(cur.members))
            cur = _Filling(rows, length)
            waiting[:] = [j for j in waiting if not take(j)]
    return batches, len(cur.members) + len(waiting)
