"""Experiment trackers: TensorBoard (the default), Weights & Biases and trackio (``log.trackers``).

Each tracker gets the same three things from a stage: its scalars every ``train.log_every`` steps (and
the dev RougeL), the resolved config once, and the final table. A stage's run is named by its work dir
and keyed by it, so the final table, written after training, lands in the same run (wandb and trackio
resume it). W&B runs offline unless ``WANDB_API_KEY`` is set; trackio writes its local database
(``TRACKIO_DIR``). Only process 0 logs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import uuid

import jax

from .errors import InputError

#: tracker name -> the pip extra that installs it (``pip install dpkd_jax[wandb]``); None: always there
TRACKERS = {"tensorboard": None, "wandb": "wandb", "trackio": "trackio"}


@dataclasses.dataclass(frozen=True)
class Where:
    """The run a stage logs to: ``workdir`` (TensorBoard's ``<workdir>/tb``, the run's name and id),
    the ``project`` (wandb, trackio) and the resolved ``config`` (a plain dict)."""
    workdir: str
    project: str
    config: dict

    @property
    def name(self) -> str:
        return os.path.relpath(os.path.abspath(self.workdir))

    @property
    def run_id(self) -> str:  # stable per work dir: a later open resumes the same run
        return hashlib.sha1(os.path.abspath(self.workdir).encode()).hexdigest()[:16]


def check(names) -> tuple:
    """``log.trackers`` as a tuple of known, installed trackers; else one line naming the extra."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for n in names:
        if n not in TRACKERS:
            raise InputError(f"config.log.trackers: unknown tracker {n!r}; choose from {', '.join(TRACKERS)}")
        if TRACKERS[n] and importlib.util.find_spec(n) is None:
            raise InputError(f"config.log.trackers: {n} is not installed; pip install 'dpkd_jax[{TRACKERS[n]}]'")
    return names


class TensorBoard:
    def __init__(self, where: Where):
        from tensorboardX import SummaryWriter
        # a suffix of its own: two writers opened in one second (a stage, then its table) would share a file name
        self.writer = SummaryWriter(os.path.join(where.workdir, "tb"), filename_suffix=f".{uuid.uuid4().hex[:8]}")
        self.writer.add_text("config", "```\n" + _yaml(where.config) + "\n```", 0)

    def scalars(self, metrics: dict, step: int):
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def table(self, name: str, markdown: str, header, rows):
        self.writer.add_text(name, markdown, 0)

    def close(self):
        self.writer.close()


class WandB:
    def __init__(self, where: Where):
        import wandb
        self.wandb = wandb
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(project=where.project, name=where.name, id=where.run_id, resume="allow",
                              dir=where.workdir, config=where.config, mode=mode, reinit="create_new",
                              settings=wandb.Settings(console="off"))

    def scalars(self, metrics: dict, step: int):
        self.run.log(dict(metrics), step=step)

    def table(self, name: str, markdown: str, header, rows):
        self.run.log({name: self.wandb.Table(columns=list(header), data=[list(r) for r in rows])})

    def close(self):
        self.run.finish()


class Trackio:
    def __init__(self, where: Where):
        import trackio
        self.trackio = trackio
        self.run = trackio.init(project=where.project, name=where.name, config=where.config, resume="allow",
                                auto_log_cpu=False, auto_log_gpu=False)

    def scalars(self, metrics: dict, step: int):
        self.run.log(dict(metrics), step=step)

    def table(self, name: str, markdown: str, header, rows):
        self.run.log({name: self.trackio.Table(columns=list(header), data=[list(r) for r in rows])})

    def close(self):
        self.run.finish()


_OPEN = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}


class Trackers:
    """The stage's trackers as one: ``scalars``, ``table``, ``close`` fan out to each (none off process 0)."""

    def __init__(self, names, where: Where):
        self.each = [_OPEN[n](where) for n in check(names)] if jax.process_index() == 0 else []

    def scalars(self, metrics: dict, step: int):
        metrics = {k: v for k, v in metrics.items() if k != "step"}  # the step is each tracker's own axis
        for t in self.each:
            t.scalars(metrics, step)

    def table(self, name: str, markdown: str, header=(), rows=()):
        """A final table: its markdown (TensorBoard's text) and its cells (wandb's and trackio's tables)."""
        header, rows = (header, rows) if header else _cells(markdown)
        for t in self.each:
            t.table(name, markdown, header, rows)

    def close(self):
        for t in self.each:
            t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_for(cfg) -> Trackers:
    """The trackers ``cfg.log.trackers`` names, for the stage whose work dir is ``cfg.workdir``."""
    return Trackers(cfg.log.trackers, Where(cfg.workdir, cfg.log.project, cfg.to_dict()))


def _cells(markdown: str):
    """A markdown table's header and rows (the separator line dropped)."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.strip().splitlines()]
    return lines[0], [r for r in lines[1:] if not set("".join(r)) <= set("-: ")]


def _yaml(config: dict, indent: str = "") -> str:
    return "\n".join(f"{indent}{k}:\n{_yaml(v, indent + '  ')}" if isinstance(v, dict) else f"{indent}{k}: {v}"
                     for k, v in config.items())
