"""Distillation losses as pure JAX functions (``import dpkd_jax.losses``).

Everything here takes arrays and returns arrays: no model, no config, no I/O,
so other projects can `import dpkd_jax.losses` alone. The contract, checked by
`tests/test_losses.py` against independent numpy code:

* per-example outputs of shape ``[B]`` unless a docstring says otherwise;
* float32 arithmetic whatever the input dtype (bf16 logits are upcast inside
  fused reductions, not copied as a whole);
* a fully masked row gives a finite value (token counts clamp at 1);
* safe under ``jit``, ``vmap`` and ``grad``; hyperparameters that change the
  computation's structure (``form``, the JSD endpoints) are Python values.

Shapes: ``B`` batch, ``T`` response positions, ``V`` vocabulary. Logits are
already aligned with their labels: ``logits[b, i]`` predicts ``labels[b, i]``.
See ``shared/spec/method.md`` for the definitions followed here.

Beside each logits-in loss sits its hidden-states-in form, ``chunked_<name>``
(``chunked.py``): final hidden states ``[B, N, D]`` and the model's head instead of
logits, computed in chunks of tokens so no ``[B, N, V]`` array is ever alive
(method.md §11). ``tokenwise`` holds the per-position definitions both forms share.
"""

from . import tokenwise
from .chunked import *  # noqa: F401,F403
from .chunked import __all__ as _chunked
from .contrastive import cald_loss
from .core import *  # noqa: F401,F403
from .core import __all__ as _core
from .divergences import abkd_divergence, taid_loss, todi_divergence
from .features import feature_distance
from .onpolicy import entropy_aware_fkl, iw_opd_weights, opd_advantages
from .policy import minillm_advantages, minillm_rewards, ppo_clip_loss
from .sparse import (sampled_forward_kl, sampled_tokens, sparse_adaptive_kl, sparse_forward_kl,
                     sparse_generalized_jsd, sparse_reverse_kl, sparse_skew_kl, sparse_skew_reverse_kl,
                     topk_logprobs)

__all__ = [*_core, "minillm_rewards", "minillm_advantages", "ppo_clip_loss", "cald_loss", "sparse_forward_kl",
           "sparse_reverse_kl", "sparse_generalized_jsd", "sparse_skew_kl", "sparse_skew_reverse_kl",
           "sparse_adaptive_kl", "topk_logprobs", "tokenwise", "opd_advantages", "iw_opd_weights",
           "entropy_aware_fkl", "abkd_divergence", "todi_divergence", "taid_loss", "sampled_forward_kl",
           "sampled_tokens", "feature_distance", *_chunked]
