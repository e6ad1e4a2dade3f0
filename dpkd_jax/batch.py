"""The typed batch the train step reads: a frozen dataclass pytree with optional fields.

Required: left-padded prompts and right-padded gold responses. Optional fields are
``None`` when absent (an absent field is an empty pytree node, so a batch with and one
without a field compile separately and nothing tests ``key in batch``):

* ``lm_ids``: pre-training rows for the LM term;
* ``teacher_ids/mask``: y_t drawn offline once per prompt (``gen.teacher_mode=offline``);
* ``student_ids/mask``: y_s given by the caller (``bench/train_step.py`` times a step
  without generation);
* ``teacher_topk_ids/logps``: the sparse teacher cache on the gold responses;
* ``teacher_sampled_ids/counts``: the sampled (RS-KD) teacher cache on the gold responses;
* ``teacher_view``: across tokenizers, the teacher's own tokens of the prompt, y_t and y_s;
* ``packing``: the gold forward's packed rows (``data.packing``; ``data/packing.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TeacherView:
    """A teacher with its own tokenizer: the prompt and each response in its tokens."""
    prompt_ids: Array
    prompt_mask: Array
    yt_ids: Optional[Array] = None
    yt_mask: Optional[Array] = None
    ys_ids: Optional[Array] = None
    ys_mask: Optional[Array] = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packing:
    """The batch's examples packed into ``K`` rows of ``L`` slots for the gold forward (``data/packing.py``)."""
    src: Array          # [K, L] flat index of each slot's token in the [B, P + R] prompt-then-response rows
    positions: Array    # [K, L] restarting at 0 per example
    segments: Array     # [K, L] example b + 1; 0 for padding
    picks: Array        # [B, R] flat packed slot (k * L + slot) whose output predicts each response token


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    prompt_ids: Array           # [B, P] int32, left-padded
    prompt_mask: Array          # [B, P]
    response_ids: Array         # [B, R] gold responses, right-padded (with EOS)
    response_mask: Array        # [B, R]
    lm_ids: Optional[Array] = None
    teacher_ids: Optional[Array] = None
    teacher_mask: Optional[Array] = None
    student_ids: Optional[Array] = None
    student_mask: Optional[Array] = None
    teacher_topk_ids: Optional[Array] = None
    teacher_topk_logps: Optional[Array] = None
    teacher_sampled_ids: Optional[Array] = None     # [B, R, U] RS-KD cache: drawn ids, duplicates merged
    teacher_sampled_counts: Optional[Array] = None  # [B, R, U] their counts (0: padding), summing to U
    teacher_view: Optional[TeacherView] = None
    packing: Optional[Packing] = None

    @property
    def rows(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def prompts(self):
        return self.prompt_ids, self.prompt_mask

    @property
    def gold(self):
        return self.response_ids, self.response_mask

    def replace(self, **changes) -> "Batch":
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, arrays: dict) -> "Batch":
        """A batch from named row arrays (the data loader's and the caches' fields); the teacher
        view's and the packing's arrays are named ``teacher_view.<field>`` and ``packing.<field>``.
        An unknown name is an error."""
        parts = {"teacher_view": TeacherView, "packing": Packing}
        own = {f.name for f in dataclasses.fields(cls)} - set(parts)
        nested = {name: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}
                  for name in parts}
        unknown = [k for k in arrays if k not in own and k.split(".", 1)[0] not in parts]
        for name, kind in parts.items():
            fields = {f.name for f in dataclasses.fields(kind)}
            unknown += [f"{name}.{k}" for k in nested[name] if k not in fields]
        if unknown:
            raise ValueError(f"Batch.of: unknown fields {sorted(unknown)}")
        return cls(**{k: v for k, v in arrays.items() if k in own},
                   **{name: kind(**nested[name]) if nested[name] else None for name, kind in parts.items()})
