"""One small object per method: typed hyperparameters (``config.loss.<method>.<field>``),
what it needs (``Needs``), and its whole loss as weighted terms with its metrics.

  sft kd rkl jsd akl skew_kl skew_rkl abkd todi taid dpkd_token gkd   token level (one vocabulary)
  opd                                                            on-policy: the teacher grades sampled tokens
  seqkd dpkd plad dadpo distillm2                                on sampled responses
  minillm                                                        policy gradient with its own update (PPO epochs)
"""

from __future__ import annotations

from ..errors import InputError
from .base import Context, Layout, Model, Needs, Objective, Response, scored_responses
from .diagnostics import (distinct_2, first_positions, first_token_kls, first_token_kls_of_logits,
                          first_token_logits, reward_hacking)
from .distillm2 import DistiLLM2
from .minillm import MiniLLM, Mixture
from .onpolicy import OPD
from .sequence import DPKD, DaDPO, PLaD, SeqKD
from .token import ABKD, AKL, GKD, JSD, KD, RKL, SFT, DPKDToken, SkewKL, SkewRKL, TAID, ToDi

OBJECTIVES = {"sft": SFT, "kd": KD, "rkl": RKL, "jsd": JSD, "akl": AKL, "skew_kl": SkewKL, "skew_rkl": SkewRKL,
              "dpkd_token": DPKDToken, "gkd": GKD, "seqkd": SeqKD, "dpkd": DPKD, "plad": PLaD, "dadpo": DaDPO,
              "distillm2": DistiLLM2, "minillm": MiniLLM, "abkd": ABKD, "todi": ToDi, "taid": TAID, "opd": OPD}

# Served by the sparse teacher cache (teacher.topk): the token-level divergences on gold responses.
TOPK_METHODS = ("kd", "rkl", "jsd", "akl", "skew_kl", "skew_rkl", "gkd (off-policy: lmbda=0, seq_kd=False)")

# Work across tokenizers (cross_tokenizer.py): they need only each model's log-prob of whole texts.
CROSS_METHODS = ("dpkd (every form)", "seqkd", "plad", "dadpo (with loss.dadpo.alpha=0)")


def build(method: str, loss) -> Objective:
    """The objective of ``method`` from ``loss`` (``RunSpec.loss``: the methods' typed blocks), validated
    (InputError naming the field)."""
    if method not in OBJECTIVES:
        raise InputError(f"config.method: unknown method {method!r}; choose from {sorted(OBJECTIVES)}")
    obj = loss.block(method)
    obj.validate()
    return obj


__all__ = ["CROSS_METHODS", "TOPK_METHODS", "Objective", "Mixture", "OBJECTIVES", "build", "Context", "Layout", "Model", "Needs", "Response", "first_token_kls",
           "first_token_logits", "first_token_kls_of_logits", "first_positions", "reward_hacking", "distinct_2"]
