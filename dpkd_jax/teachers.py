"""Multi-teacher routing: each training row names its teacher (``data.teacher_field``), one of
``teacher.paths``; every step's rows come from one teacher.

* :func:`route` reads each row's teacher and groups the rows (an unknown or missing name is a
  one-line error with the row's line number);
* :class:`GroupedBatches` draws each step's teacher from ``(seed, step)`` in proportion to its
  rows and that teacher's next batch from its own shuffled order: deterministic, and resumable
  from its ``state()`` exactly like ``data.Batches``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Routing:
    """Which rows of a data set each teacher grades: ``rows[name]`` indices, in ``names`` order."""
    field: str
    names: tuple
    rows: dict

    def counts(self) -> dict:
        return {n: len(self.rows[n]) for n in self.names}

    def describe(self) -> str:
        return ", ".join(f"{n} {c} rows" for n, c in self.counts().items())


def route(data, field: str, names, source: str) -> Routing:
    """Group ``data``'s rows (a ``Tokenized`` loaded with ``fields=(field,)``) by their teacher."""
    names = tuple(names)
    groups = {n: [] for n in names}
    for i, rec in enumerate(data.sources):
        who = rec.get(field)
        if who not in groups:
            what = f"no field {field!r}" if who is None else f"teacher {who!r} is not one of teacher.paths {names}"
            raise InputError(f"{source} line {rec.get('line', i + 1)}: {what} (config.data.teacher_field={field!r})")
        groups[who].append(i)
    return Routing(field, names, {n: np.asarray(groups[n], np.int64) for n in names})


class GroupedBatches:
    """One :class:`data.Batches` per teacher; ``next()`` gives ``(teacher name, rows)``.

    Step ``s``'s teacher is drawn from ``default_rng([seed, s])`` with probability proportional
    to its rows (a teacher with none is never drawn), so a resumed run draws the same teachers;
    each teacher's batches follow its own shuffled order (``Batches``, seeded alike)."""

    def __init__(self, groups: dict, seed: int):
        self.groups = dict(groups)
        if not self.groups:
            raise InputError("config.teacher.paths: no teacher has any training rows")
        self.names = tuple(self.groups)
        sizes = np.array([len(b.data) for b in self.groups.values()], np.float64)
        self.p = sizes / sizes.sum()
        self.seed, self.step = seed, 0
        self.counts = {n: 0 for n in self.names}   # steps each teacher graded so far
        self.dropped_per_epoch = sum(b.dropped_per_epoch for b in self.groups.values())

    def teacher_at(self, step: int) -> str:
        return self.names[int(np.random.default_rng([self.seed, step]).choice(len(self.names), p=self.p))]

    def next(self):
        name = self.teacher_at(self.step)
        self.step += 1
        self.counts[name] += 1
        return name, self.groups[name].next()

    def state(self):
        return {"step": self.step, "counts": dict(self.counts), "groups": {n: b.state() for n, b in self.groups.items()}}

    def restore(self, state):
        self.step = int(state["step"])
        self.counts = {n: int(state["counts"][n]) for n in self.names}
        for n, s in state["groups"].items():
            self.groups[n].restore(s)


def split(data, routing: Routing, batch_size: int) -> dict:
    """Each teacher's rows of ``data`` (a ``Tokenized``): ``{name: Tokenized}``, without the
    teachers that have none. Fewer rows than one batch is an error: a step's rows all come from
    one teacher, so they would never be used."""
    out = {}
    for n in routing.names:
        rows = routing.rows[n]
        if 0 < len(rows) < batch_size:
            raise InputError(f"config.data.teacher_field: teacher {n!r} has {len(rows)} training rows, fewer than "
                             f"train.batch_size={batch_size} (each step's rows come from one teacher)")
        if len(rows):
            out[n] = data.take(rows)
    return out
