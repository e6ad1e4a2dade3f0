"""Distillation across tokenizers, for the sequence-level objectives (``CROSS_METHODS``).

Those need only each model's log-probability of whole texts, so responses cross between the
models as text: y_t is decoded with the teacher's tokenizer and encoded with the student's,
y_s the other way round, and each model sees the prompt in its own template. Per step:

1. a compiled sampling call draws y_t (teacher, teacher prompts) and y_s (student);
2. on the host, :class:`Retokenizer` turns each into the other model's tokens;
3. the generic compiled step scores and updates, the teacher reading its own tokens
   (``Context.views``).

The host round trip costs one device->host->device copy of the samples per step
(measured in ``bench/train_step.py --cross-tokenizer``).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from . import data as data_lib
from . import sampling, sharding
from .errors import InputError
from .models.tokenizers import pad_id
from .objectives import CROSS_METHODS

def check_method(objective, method: str):
    """Token-level objectives compare next-token distributions over one vocabulary: stop."""
    if not objective.cross_tokenizer:
        raise InputError(f"config.method: {method!r} compares token distributions and needs one vocabulary, but the "
                         f"teacher and student tokenizers differ; the sequence-level methods work across tokenizers: "
                         f"{', '.join(CROSS_METHODS)}")


class Retokenizer:
    """Token rows of one tokenizer -> the same texts in another's tokens, right-padded to
    ``length``. A row that ended with the source's EOS ends with the target's EOS; a row
    longer than ``length`` in the target's tokens is cut there and counted."""

    def __init__(self, src, dst, length: int, *, src_eos: int, dst_eos: int, dst_pad: int):
        self.src, self.dst, self.length = src, dst, length
        self.src_eos, self.dst_eos, self.dst_pad = src_eos, dst_eos, dst_pad
        self.truncated = 0

    def texts(self, ids, mask):
        """(text, ended with EOS) per row."""
        out = []
        for row, m in zip(np.asarray(ids), np.asarray(mask)):
            toks = row[m.astype(bool)].tolist()
            ended = bool(toks) and toks[-1] == self.src_eos
            out.append((self.src.decode(toks[:-1] if ended else toks, skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False), ended))
        return out

    def __call__(self, ids, mask):
        rows = self.texts(ids, mask)
        enc = self.dst([t for t, _ in rows], add_special_tokens=False)["input_ids"] if rows else []
        out_ids = np.full((len(rows), self.length), self.dst_pad, np.int32)
        out_mask = np.zeros((len(rows), self.length), np.int32)
        for i, ((_, ended), toks) in enumerate(zip(rows, enc)):
            toks = list(toks) + ([self.dst_eos] if ended else [])
            if len(toks) > self.length:
                self.truncated += 1
                toks = toks[: self.length]
            out_ids[i, :len(toks)], out_mask[i, :len(toks)] = toks, 1
        return out_ids, out_mask


def teacher_prompts(data: data_lib.Tokenized, tokenizer, *, template, max_prompt_length):
    """(kept indices, {teacher prompt ids, mask}) for ``data``: each prompt rendered in the
    teacher's own template and tokens. Examples whose teacher prompt is too long are dropped
    (logged with their count), so both sides always see the same examples."""
    if not data.sources:
        raise InputError("cross-tokenizer training needs the training records (data.Tokenized.sources)")
    P = max_prompt_length
    ids = np.full((len(data), P), pad_id(tokenizer), np.int32)
    mask = np.zeros((len(data), P), np.int32)
    keep = []
    for i, rec in enumerate(data.sources):
        toks = tokenizer(data_lib.render_prompt(rec, tokenizer, template), add_special_tokens=False)["input_ids"]
        if len(toks) <= P:
            keep.append(i)
            ids[i, P - len(toks):], mask[i, P - len(toks):] = toks, 1
    if len(keep) < len(data):
        logging.warning("cross-tokenizer: %d of %d prompts are longer than data.max_prompt_length=%d in the teacher's "
                        "tokens and are not used", len(data) - len(keep), len(data), P)
    if not keep:
        raise InputError(f"data.max_prompt_length={P}: no prompt fits in the teacher's tokens")
    keep = np.asarray(keep)
    return keep, {"teacher_view.prompt_ids": ids[keep], "teacher_view.prompt_mask": mask[keep]}


@dataclasses.dataclass(frozen=True)
class Sides:
    """The two tokenizers of a run across tokenizers, and the token that ends the teacher's turn
    (its template's end token: :func:`data.end_token_id`)."""
    student: object
    teacher: object
    teacher_eos: int


def wrap_step(step, spec, needs, student, teacher, teacher_params, sides: Sides, batch_sharding=None):
    """The cross-tokenizer step around the generic compiled ``step``: sample what ``needs``
    asks for, cross the samples as text on the host, then score and update. ``spec``: the
    student's :class:`specs.Sampling`. Metrics gain ``xtok/truncated`` (rows cut at the length
    limit so far) and ``xtok/host_s`` (this step's host round trip: copies, decode and encode)."""
    student_tok, teacher_tok, t_eos = sides.student, sides.teacher, int(sides.teacher_eos)
    length = 2 * spec.max_new_tokens  # room for the finer of the two tokenizers
    t_pad = pad_id(teacher_tok)
    to_student = Retokenizer(teacher_tok, student_tok, length, src_eos=t_eos,
                             dst_eos=spec.eos_token_id, dst_pad=spec.pad_token_id)
    to_teacher = Retokenizer(student_tok, teacher_tok, length, src_eos=spec.eos_token_id,
                             dst_eos=t_eos, dst_pad=t_pad)
    t_opts = spec.replace(eos_token_id=t_eos, pad_token_id=t_pad)
    # compiled once per (model, shapes, options): every run of a process (the experiment's seeds) shares them
    draw_t = lambda tp, p, m, rng: sampling.sample_jit(teacher, tp, p, m, rng, t_opts)
    draw_s = lambda params, p, m, rng: sampling.sample_jit(student, params, p, m, rng, spec)
    put = (lambda a: sharding.put(a, batch_sharding)) if batch_sharding is not None else (lambda a: a)

    def cross_step(state, batch, rng):
        rt, rs = jax.random.split(jax.random.fold_in(rng, 7))
        view, changes, host_s = batch.teacher_view, {}, 0.0
        if needs.teacher_samples:
            drawn = jax.block_until_ready(draw_t(teacher_params, view.prompt_ids, view.prompt_mask, rt))
            t0 = time.perf_counter()  # the round trip alone: the samples are ready
            yt, ytm = (sharding.to_host(a) for a in drawn)
            view = dataclasses.replace(view, yt_ids=put(yt), yt_mask=put(ytm))
            changes["teacher_ids"], changes["teacher_mask"] = (put(a) for a in to_student(yt, ytm))
            host_s += time.perf_counter() - t0
        if needs.student_samples:
            drawn = jax.block_until_ready(draw_s(state["params"], *batch.prompts, rs))
            t0 = time.perf_counter()
            ys, ysm = (sharding.to_host(a) for a in drawn)
            changes["student_ids"], changes["student_mask"] = put(ys), put(ysm)
            ys_t, ysm_t = to_teacher(ys, ysm)
            view = dataclasses.replace(view, ys_ids=put(ys_t), ys_mask=put(ysm_t))
            host_s += time.perf_counter() - t0
        state, metrics = step(state, batch.replace(teacher_view=view, **changes), rng)
        metrics["xtok/truncated"] = float(to_student.truncated + to_teacher.truncated)
        metrics["xtok/host_s"] = host_s  # device->host copies, decode/encode, host->device copies
        return state, metrics
    cross_step.retokenizers = (to_student, to_teacher)
    return cross_step
