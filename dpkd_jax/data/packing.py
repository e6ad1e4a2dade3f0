"""Packing: a step's examples laid end to end in fewer rows of ``length`` slots.

A batch keeps its ``B`` examples (prompt and gold response, as unpacked); packing only changes the
teacher-forced forward. Each example's real tokens (the left-padded prompt's and the right-padded
response's, contiguous in the ``[B, P + R]`` row) go to one row of ``rows`` packed rows at an
offset (first-fit decreasing); positions restart at 0 per example, each example is its own
segment (0: padding), and attention stays within a segment. ``picks`` maps every response token
back to the packed slot whose output predicts it, so every loss sees the same ``[B, R]`` values
as unpacked and is reduced per example exactly as unpacked.

``rows`` is static (one compiled step): the most rows any batch of the run needs
(:func:`rows_needed`, from the batches the run will draw).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def first_fit(lengths, capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``capacity`` (first-fit decreasing)."""
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
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


def rows_needed(data, batch_indices, length: int) -> int:
    """The most packed rows of ``length`` slots any of ``batch_indices`` (index arrays into ``data``,
    a ``data.Tokenized``) needs."""
    lengths = example_lengths(data.prompt_mask, data.response_mask)
    return max((len(first_fit(lengths[idx], length)) for idx in batch_indices), default=1)


def efficiency(segments) -> float:
    """Real tokens over slots."""
    return float(np.mean(np.asarray(segments) > 0))
