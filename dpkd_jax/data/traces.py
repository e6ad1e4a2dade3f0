"""Reasoning traces: JSONL lines ``{"prompt", "thinking", "answer"}`` rendered as Qwen3 renders them.

The prompt goes through ``data.template`` (the tokenizer's chat template for instruct models) with the
assistant's turn opened; the thinking is a ``<think>…</think>`` block before the answer. ``data.trace_loss``
says what the losses read:

* ``all``: the response is the thinking block and the answer: both are trained on;
* ``answer``: the thinking block joins the prompt (read, not trained on) and the response is the answer.

A trace longer than its room is cut at a segment boundary, never inside the answer while thinking is left:
the thinking keeps its first paragraphs (split at blank lines) that fit with the whole answer; only an answer
that cannot fit even without thinking is cut itself. Each cut trace is counted in the loader's report.
"""

from __future__ import annotations

import dataclasses

from .jsonl import json_objects

OPEN, CLOSE = "<think>\n", "\n</think>\n\n"
FIELDS = ("prompt", "thinking", "answer")
LOSSES = ("all", "answer")


@dataclasses.dataclass(frozen=True)
class Format:
    """How a training file reads (``data.format``) and what a trace's losses read (``data.trace_loss``)."""
    kind: str = "instructions"   # instructions | traces
    trace_loss: str = "all"      # all | answer


def read_traces(path: str, report) -> list[dict]:
    """Trace records ``{instruction, context, thinking, answer, line}``; a line without the three string
    fields is counted as malformed with its line number (``report``, a ``data.Report``)."""
    out = []
    for lineno, rec in json_objects(path, report, "trace file"):
        missing = [k for k in FIELDS if not isinstance(rec.get(k), str)]
        if missing:
            report.bad(lineno, f"missing field {missing[0]!r} (a trace has prompt, thinking and answer)")
            continue
        out.append({"instruction": rec["prompt"], "context": "", "thinking": rec["thinking"],
                    "answer": rec["answer"], "line": lineno})
    return out


def think_block(thinking: str) -> str:
    return OPEN + thinking + CLOSE


def fitted(tokenize, thinking: str, head: str, tail: str, room: int) -> tuple[list, bool]:
    """(token ids of ``head + think_block(thinking') + tail``, whether cut): ``thinking'`` is the most
    leading paragraphs of ``thinking`` that fit ``room`` tokens (all of it when it fits); when even no
    thinking does not fit, the ids are cut at ``room``. ``tokenize``: text -> ids."""
    ids = tokenize(head + think_block(thinking) + tail)
    if len(ids) <= room:
        return ids, False
    paragraphs = thinking.split("\n\n")
    lo, hi = 0, len(paragraphs) - 1  # the most paragraphs that fit: lo fits (or is 0), hi + 1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenize(head + think_block("\n\n".join(paragraphs[:mid])) + tail)) <= room:
            lo = mid
        else:
            hi = mid - 1
    return tokenize(head + think_block("\n\n".join(paragraphs[:lo])) + tail)[:room], True


def trace_rows(rec: dict, prompt: str, tokenize, eos: int, loss: str, room: tuple[int, int]):
    """(prompt ids or None when the prompt alone is too long, response ids with ``eos``, cut) of one trace;
    ``room``: (prompt slots, response slots)."""
    P, R = room
    if loss == "all":
        p = tokenize(prompt)
        r, cut = fitted(lambda t: tokenize(t) + [eos], rec["thinking"], "", rec["answer"], R)
        return p, r, cut
    answer = tokenize(rec["answer"]) + [eos]
    if len(tokenize(prompt + think_block(""))) > P:
        return None, answer, False  # no room for the prompt itself: dropped and counted, as any long prompt
    p, cut = fitted(tokenize, rec["thinking"], prompt, "", P)
    return p, answer[:R], cut or len(answer) > R
