"""The real-weights experiment (configs/smollm2_pruned.py): a teacher, the same model with
layers removed as the student, every method from the same start over several seeds.

  targets.py   the teacher's greedy answers, computed once and cached
  measure.py   the evaluation metrics of one student
  runner.py    lr grid on dev, DPKD's knobs, the seeded runs
  report.py    the table and the plots
"""

from .runner import run_experiment

__all__ = ["run_experiment"]
