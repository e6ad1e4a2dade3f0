"""The real-weights experiment (configs/smollm2_pruned.py): a teacher, the same model with
layers removed as the student, every method from the same start over several seeds.

  targets.py   the teacher's greedy answers, computed once and cached
  measure.py   the evaluation metrics of one student
  runner.py    lr grid on dev, DPKD's knobs, the seeded runs
  cross.py     the same across tokenizers (a student with its own tokenizer)
  report.py    the table and the plots
"""

from . import runner
from .cross import CrossExperiment
from .runner import Experiment


def run_experiment(cfg):
    """The experiment of ``cfg``: one tokenizer (the student is the teacher with layers removed) or, with
    ``experiment.cross``, a student with a tokenizer of its own."""
    return runner.run_experiment(cfg, CrossExperiment if cfg.experiment.cross else Experiment)


__all__ = ["run_experiment"]
