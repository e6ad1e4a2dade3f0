"""Instruction data in the Dolly format: reading, templating, filtering, batching.

A line is a JSON object with ``instruction``, ``context`` or ``input``,
``response`` or ``output`` (optional ``category``). Malformed lines are
skipped, counted and reported by line number; prompts longer than the limit
are dropped and counted; responses longer than the room left are truncated
and counted. Nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np
from . import grouping
from . import packing as packing_lib
from . import traces
from .jsonl import json_objects
from ..errors import InputError
from .. import hub

PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclasses.dataclass(frozen=True)
class Turns:
    """A chat turn format written down, for a tokenizer that carries no chat template (a base
    model's): the prompt with the user's turn and the model's turn opened, and the token that
    ends the model's turn (the responses' EOS and the sampler's stop token)."""
    prompt: str   # with ``{user}``
    end: str


# Gemma's turn format, from its tokenizer's special tokens (base Gemma checkpoints ship no template):
# <bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n ... <end_of_turn>
TURNS = {"gemma": Turns("<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>")}
TEMPLATES = ("dolly", "chat", *TURNS)


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The reference code's template (method.md)."""
    if input_text and input_text.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def end_token_id(tokenizer, template: str) -> int:
    """The token that ends a response under ``template``: the tokenizer's EOS, or the written
    turn format's end token (checked, with its other special tokens, against the vocabulary)."""
    if template not in TURNS:
        return int(tokenizer.eos_token_id)
    turns = TURNS[template]
    specials = set(re.findall(r"<[a-z_]+>", turns.prompt)) | {turns.end}
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in sorted(specials)}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise InputError(f"config.data.template: {template!r} needs the special tokens {', '.join(missing)}, which "
                         f"this tokenizer does not have")
    return int(ids[turns.end])


def render_prompt(rec: dict, tokenizer, template: str = "dolly") -> str:
    """A record's prompt text: the Dolly template, or the tokenizer's own chat template
    (one user turn: the instruction, then its context) with the assistant turn opened."""
    if template == "dolly":
        return format_prompt(rec["instruction"], rec.get("context", ""))
    if template not in TEMPLATES:
        raise InputError(f"config.data.template: must be one of {TEMPLATES}, got {template!r}")
    ctx = rec.get("context", "") or ""
    user = f"{rec['instruction']}\n\n{ctx}" if ctx.strip() else rec["instruction"]
    if template in TURNS:
        end_token_id(tokenizer, template)  # its special tokens exist
        return TURNS[template].prompt.format(user=user)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("config.data.template: 'chat' needs a tokenizer with a chat template, and this one has "
                         f"none; use data.template=dolly or a written turn format ({', '.join(TURNS)})")
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=False)


@dataclasses.dataclass
class Report:
    """What loading did to a file: counts, and the first few bad line numbers."""
    source: str
    read: int = 0
    malformed: int = 0
    malformed_lines: list = dataclasses.field(default_factory=list)
    prompt_too_long: int = 0
    response_truncated: int = 0
    traces_cut: int = 0       # reasoning traces cut at a segment boundary (data/traces.py)
    kept: int = 0

    def bad(self, lineno, why):
        self.malformed += 1
        if len(self.malformed_lines) < 5:
            self.malformed_lines.append(f"line {lineno}: {why}")

    def __str__(self):
        s = (f"{self.source}: read {self.read}, kept {self.kept}, malformed {self.malformed}, "
             f"prompt too long (dropped) {self.prompt_too_long}, response truncated {self.response_truncated}")
        if self.traces_cut:
            s += f", traces cut at a segment boundary {self.traces_cut}"
        if self.malformed_lines:
            s += " [" + "; ".join(self.malformed_lines) + (" …" if self.malformed > 5 else "") + "]"
        return s


def read_jsonl(path: str, report: Report, fields=()) -> list[dict]:
    """Records ``{instruction, context, response, category, line}`` from a Dolly-format JSONL
    file, plus each of ``fields`` as it is in the line (``None`` when absent)."""
    out = []
    for lineno, rec in json_objects(path, report, "instruction file"):
        ins = rec.get("instruction")
        resp = rec.get("response", rec.get("output"))
        if not isinstance(ins, str) or not ins.strip():
            report.bad(lineno, "missing or empty field 'instruction'")
            continue
        if not isinstance(resp, str):
            report.bad(lineno, "missing field 'response' (or 'output')")
            continue
        ctx = rec.get("context", rec.get("input", "")) or ""
        out.append({"instruction": ins, "context": ctx, "response": resp, "category": rec.get("category", ""),
                    "line": lineno, **{k: rec.get(k) for k in fields}})
    return out


def _hub_dataset(name: str):
    """A dataset by hub id with the same offline rules as models (``HF_HUB_OFFLINE``, ``HF_HOME``,
    ``HF_TOKEN``, read by ``datasets``); a failure is one line naming the dataset."""
    import datasets  # an optional extra (hf: data), imported when asked for
    try:
        return datasets.load_dataset(name, split="train", token=os.environ.get("HF_TOKEN") or None)
    except ConnectionError as e:
        why = "HF_HUB_OFFLINE is set" if hub.offline() else "the hub cannot be reached"
        raise InputError(f"hf:{name}: not in the datasets cache and {why} ({e}); fill it on a machine with network "
                         f"with `python -c \"import datasets; datasets.load_dataset('{name}')\"` (same HF_HOME)") from None
    except Exception as e:  # noqa: BLE001 -- datasets raises many types (not found, gated, bad split)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"hf:{name}: cannot load it from the hub: {first} (gated or private: set HF_TOKEN)") from None


def load_records(source: str, report: Report, fields=()) -> list[dict]:
    """A local JSONL path, ``hf:<dataset name>`` (HF datasets) or ``tfds:<name>`` (TFDS); ``line``
    is the line number (a row number for datasets), ``fields`` extra columns kept as they are."""
    if source.startswith("hf:"):
        rows = _hub_dataset(source[3:])
    elif source.startswith("tfds:"):
        import tensorflow_datasets as tfds
        rows = ({k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()}
                for ex in tfds.as_numpy(tfds.load(source[5:], split="train")))
    else:
        return read_jsonl(source, report, fields)
    tmp = []
    for i, row in enumerate(rows, 1):
        report.read += 1
        ins, resp = row.get("instruction"), row.get("response", row.get("output"))
        if not ins or resp is None:
            report.bad(i, "missing instruction or response")
            continue
        tmp.append({"instruction": ins, "context": row.get("context", row.get("input", "")) or "",
                    "response": resp, "category": row.get("category", ""), "line": i,
                    **{k: row.get(k) for k in fields}})
    return tmp


@dataclasses.dataclass
class Tokenized:
    """Static-shape arrays: left-padded prompts, right-padded gold responses (with EOS)."""
    prompt_ids: np.ndarray      # [n, P]
    prompt_mask: np.ndarray     # [n, P]
    response_ids: np.ndarray    # [n, R]
    response_mask: np.ndarray   # [n, R]
    references: list            # gold response text per example
    prompts: list               # prompt text per example (rendered with the template)
    # the records (another model renders its own), with their ``line`` and the loader's extra ``fields``
    sources: list = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.prompts)

    def longest_row(self, multiple=8) -> int:
        """Slots a teacher-forced row of prompt and gold response needs with the padding between
        them squeezed out (``sampling.squeezed_rows``): the longest example, rounded up to
        ``multiple``, at most the padded ``P + R``."""
        real = self.prompt_mask.sum(1) + self.response_mask.sum(1)
        full = self.prompt_ids.shape[1] + self.response_ids.shape[1]
        return min(full, -(-int(real.max(initial=1)) // multiple) * multiple)

    def take(self, idx):
        return Tokenized(self.prompt_ids[idx], self.prompt_mask[idx], self.response_ids[idx],
                         self.response_mask[idx], [self.references[i] for i in idx], [self.prompts[i] for i in idx],
                         [self.sources[i] for i in idx] if self.sources else [])


def tokenize(records, tokenizer, *, max_prompt_length: int, max_length: int, report: Report,
             pad_token_id: int, template: str = "dolly", format=traces.Format()) -> Tokenized:
    """Prompts rendered with ``template`` and left-padded; responses end with the template's end
    token (:func:`end_token_id`: the tokenizer's EOS, e.g. ``<|im_end|>`` for chat tokenizers).
    Reasoning traces (records with ``thinking``) render as ``data/traces.py`` says, per ``format.trace_loss``."""
    if not 0 < max_prompt_length < max_length:
        raise InputError(f"max_prompt_length={max_prompt_length} must be in (0, max_length={max_length})")
    P, R = max_prompt_length, max_length - max_prompt_length
    eos = end_token_id(tokenizer, template)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    for rec in records:
        rec = dict(rec, prompt=render_prompt(rec, tokenizer, template))
        if "thinking" in rec:
            p, r, cut = traces.trace_rows(rec, rec["prompt"], ids, eos, format.trace_loss, (P, R))
            report.traces_cut += int(cut and p is not None)
            rec["response"] = rec["answer"]  # the reference an evaluation scores
        else:
            p, r = ids(rec["prompt"]), ids(rec["response"]) + [eos]
        if p is None or len(p) > P:
            report.prompt_too_long += 1
            continue
        if len(r) > R:
            report.response_truncated += 1
            r = r[:R]
        rows.append((p, r, rec))
    report.kept = len(rows)
    if not rows:
        raise InputError(f"{report.source}: no usable examples after filtering ({report})")
    n = len(rows)
    out = Tokenized(np.full((n, P), pad_token_id, np.int32), np.zeros((n, P), np.int32),
                    np.full((n, R), pad_token_id, np.int32), np.zeros((n, R), np.int32), [], [])
    for i, (p, r, rec) in enumerate(rows):
        out.prompt_ids[i, P - len(p):] = p
        out.prompt_mask[i, P - len(p):] = 1
        out.response_ids[i, :len(r)] = r
        out.response_mask[i, :len(r)] = 1
        out.references.append(rec["response"])
        out.prompts.append(rec["prompt"])
        out.sources.append({k: v for k, v in rec.items() if k not in ("prompt", "category")})
    return out


def load_instructions(source, tokenizer, *, max_prompt_length, max_length, pad_token_id, template="dolly",
                      log=True, fields=(), format=traces.Format()):
    """(:class:`Tokenized`, :class:`Report`) of an instruction set, or with ``format.kind="traces"`` a file of
    reasoning traces (``data/traces.py``); ``fields``: extra columns kept in ``Tokenized.sources``
    (``data.teacher_field``)."""
    report = Report(source)
    records = traces.read_traces(source, report) if format.kind == "traces" else load_records(source, report, fields)
    data = tokenize(records, tokenizer, max_prompt_length=max_prompt_length, max_length=max_length,
                    report=report, pad_token_id=pad_token_id, template=template, format=format)
    if log:
        logging.info("%s", report)
    return data, report


def split_dev(data: Tokenized, dev_num: int, seed: int):
    """(train, dev): ``dev_num`` examples held out, chosen by the seed."""
    if dev_num >= len(data):
        raise InputError(f"dev_num={dev_num} leaves no training data ({len(data)} examples)")
    perm = np.random.default_rng(seed).permutation(len(data))
    return data.take(np.sort(perm[dev_num:])), data.take(np.sort(perm[:dev_num]))


class Batches:
    """Deterministic shuffled batches of fixed size with a savable position.

    Order depends on (seed, epoch) only; ``state()``/``restore()`` give exact resume.
    The last partial batch of an epoch is dropped (static shapes); the count is
    ``len(data) % batch_size`` examples per epoch, reported by ``dropped_per_epoch``.
    """

    def __init__(self, data, batch_size, seed, extra=None):
        if batch_size > len(data):
            raise InputError(f"batch_size={batch_size} is larger than the data set ({len(data)} examples)")
        self.data, self.batch_size, self.seed, self.extra = data, batch_size, seed, extra
        self.epoch, self.index = 0, 0
        self.dropped_per_epoch = len(data) % batch_size
        self.packing = None  # (length, rows): each batch also carries its packing (``data.packing``)
        self.grouping = None  # (window, widths): length-grouped batches, prompts cut (``data.group_by_length``)
        self._epoch_batches = (None, [])
        self._prompt_lengths = None

    def state(self):
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

    def batches_of(self, epoch) -> list:
        """The index arrays of an epoch's batches: its shuffled order cut in batch_size pieces, or
        packed, grouped so every batch fits the packed rows (``packing.group``)."""
        if self._epoch_batches[0] != epoch:
            order, bs = self._order(epoch), self.batch_size
            if self.grouping is not None:
                found = grouping.group(order, self.prompt_lengths(), bs, self.grouping[0],
                                       np.random.default_rng([self.seed, epoch, 1]))
            elif self.packing is None:
                found = [order[i * bs:(i + 1) * bs] for i in range(len(order) // bs)]
            else:
                lengths = packing_lib.example_lengths(self.data.prompt_mask, self.data.response_mask)
                found, self.dropped_per_epoch = packing_lib.group(order, lengths, bs, *self.packing)
                if not found:
                    raise InputError(f"data.packing: no batch of {bs} examples fits {self.packing[1]} rows of "
                                     f"{self.packing[0]} slots")
            self._epoch_batches = (epoch, found)
        return self._epoch_batches[1]

    def packed(self, length: int, multiple: int = 1) -> int:
        """Pack every batch into rows of ``length`` slots: as many rows as first fit needs for most batches of
        a shuffled order (``packing.rows_for``; static: one compiled step), rounded up to
        ``multiple`` (the data-parallel devices, which split the rows); each epoch's order is then grouped
        into batches that fit them. Returns the row count."""
        lengths = packing_lib.example_lengths(self.data.prompt_mask, self.data.response_mask)
        rows = packing_lib.rows_for(lengths, self.batch_size, length)
        self.packing = (length, -(-rows // multiple) * multiple)
        self._epoch_batches = (None, [])
        self.batches_of(self.epoch)  # this epoch's grouping now: its leftover count, or the error
        return self.packing[1]

    def prompt_lengths(self):
        """Each example's prompt tokens ``[N]`` (computed once)."""
        if self._prompt_lengths is None:
            self._prompt_lengths = self.data.prompt_mask.sum(1)
        return self._prompt_lengths

    def length_grouped(self, window: int) -> tuple[float, float]:
        """Group every epoch's batches by prompt length in windows of ``window`` batches, each batch's prompts cut
        to the narrowest width that holds them (``grouping.py``). Returns (prompt slots per row at the full width,
        on average over this epoch's batches)."""
        self.grouping = (window, grouping.widths_for(self.data.prompt_ids.shape[1]))
        self._epoch_batches = (None, [])
        return grouping.saved(self.batches_of(self.epoch), self.prompt_lengths(), self.grouping[1])

    def next(self):
        if self.index >= len(self.batches_of(self.epoch)):
            self.epoch, self.index = self.epoch + 1, 0
        idx = self.batches_of(self.epoch)[self.index]
        self.index += 1
        d = self.data
        batch = {"prompt_ids": d.prompt_ids[idx], "prompt_mask": d.prompt_mask[idx],
                 "response_ids": d.response_ids[idx], "response_mask": d.response_mask[idx],
                 "example_ids": idx.astype(np.int32)}
        if self.extra is not None:
            batch.update({k: v[idx] for k, v in self.extra.items()})
        if self.grouping is not None:  # left-padded: the last ``w`` columns hold every prompt of the batch
            w = grouping.width_of(int(self.prompt_lengths()[idx].max()), self.grouping[1])
            batch["prompt_ids"], batch["prompt_mask"] = batch["prompt_ids"][:, -w:], batch["prompt_mask"][:, -w:]
        if self.packing is not None:
            plan = packing_lib.plan(batch["prompt_mask"], batch["response_mask"], *self.packing)
            batch.update({f"packing.{k}": v for k, v in plan.items()})
        return batch
