"""Token-level losses from hidden states, computed in chunks of tokens (method.md §11).

Instead of ``[B, N, V]`` logits these take final hidden states ``[B, N, D]`` and a *head*:
a call ``h [B, C, D] -> logits [B, C, V]`` (a model's own projection with its tying,
soft-capping and real vocabulary, or :func:`linear_head` built from arrays). The
positions are cut into chunks of ``C = max(1, chunk_size // B)``; :func:`token_map` runs
the head and the per-position function (``tokenwise``) inside a ``lax.scan`` whose body
is checkpointed with nothing saved, so only one chunk's ``[B, C, V]`` logits are alive in
the forward pass and they are recomputed in the backward pass. Peak logits memory is
``B·C·V`` per model instead of ``B·N·V``. Values and gradients equal the dense forms
(``core``) up to float32 summation order.

The teacher side is wrapped in ``stop_gradient``. Every function returns per-example
token means ``[B]`` over ``mask`` unless its docstring says otherwise.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from . import tokenwise as tw
from .core import masked_mean

__all__ = [
    "DEFAULT_CHUNK_TOKENS", "linear_head", "token_map", "chunked_token_logprobs", "chunked_sequence_logprobs",
    "chunked_cross_entropy", "chunked_forward_kl", "chunked_reverse_kl", "chunked_generalized_jsd",
    "chunked_skew_kl", "chunked_skew_reverse_kl", "chunked_adaptive_kl", "chunked_dpkd_token_loss",
    "chunked_cald_loss", "chunked_sparse_forward_kl", "chunked_sparse_reverse_kl",
    "chunked_sparse_generalized_jsd", "chunked_sparse_skew_kl", "chunked_sparse_skew_reverse_kl",
    "chunked_sparse_adaptive_kl", "chunked_topk_logprobs", "chunked_abkd_divergence", "chunked_todi_divergence",
    "chunked_taid_loss", "chunked_entropy_aware_fkl", "chunked_sampled_forward_kl",
]

# Tokens (batch rows x positions) per chunk, from bench/vocab_memory.py's sweep at vocabulary 151936 (dpkd / kd
# step temporaries, GiB: 128 -> 1.12 / 0.71, 256 -> 1.27 / 1.07, 512 -> 1.56 / 1.80, 1024 -> 2.14 / 3.25): the
# largest that keeps both under half of one [8, 512, V] logits tensor. Its speed against the dense step:
# bench/results/chunked_train_step_cpu*.json.
DEFAULT_CHUNK_TOKENS = 128


def linear_head(w, b=None, *, scale=1.0, softcap=0.0, vocab=None):
    """A head from arrays, in method.md's order: ``z = h @ w (+ b)``, ``z·scale``, soft-cap
    ``c·tanh(z/c)``, then only the first ``vocab`` columns (the real vocabulary; slicing
    ``w`` before the matmul, so padded ids never get mass). ``w [D, V_pad]``, ``b [V_pad]``."""
    if vocab is not None:
        w = w[:, :vocab]
        b = None if b is None else b[:vocab]

    def head(h):
        z = jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)
        if b is not None:
            z = z + b.astype(jnp.float32)
        z = z * scale
        return softcap * jnp.tanh(z / softcap) if softcap else z
    return head


def _chunked(a, n_chunks, c):
    """``[B, N, ...] -> [n_chunks, B, c, ...]``, padding N with zeros."""
    pad = n_chunks * c - a.shape[1]
    a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    return jnp.moveaxis(a.reshape(a.shape[0], n_chunks, c, *a.shape[2:]), 1, 0)


def _unchunked(a, n):
    """``[n_chunks, B, c, ...] -> [B, N, ...]``."""
    a = jnp.moveaxis(a, 0, 1)
    return a.reshape(a.shape[0], -1, *a.shape[3:])[:, :n]


def token_map(fn, hiddens, heads, inputs=None, *, chunk_size=DEFAULT_CHUNK_TOKENS):
    """``fn(logits, inputs_chunk)`` over chunks of positions, with each head applied inside.

    hiddens: a tuple of ``[B, N, D_i]`` (one per model; widths may differ); heads: the
    matching calls ``[B, C, D_i] -> [B, C, V]``; inputs: a pytree of ``[B, N, ...]``
    (labels, top-k ids, ...). ``fn`` gets the tuple of ``[B, C, V]`` logits and the inputs'
    chunk and returns a pytree of ``[B, C, ...]``; the result is that pytree at ``[B, N, ...]``.
    The body is ``jax.checkpoint``-ed with nothing saveable: the backward pass recomputes
    each chunk's logits from its hidden states. ``chunk_size=0`` is the dense computation
    (whole ``[B, N, V]`` logits, no scan), kept for comparisons and benchmarks.
    """
    if chunk_size <= 0:
        return fn(tuple(head(h) for head, h in zip(heads, hiddens)), inputs)
    B, N = hiddens[0].shape[:2]
    c = max(1, min(N, chunk_size // max(B, 1)))
    n_chunks = math.ceil(N / c)
    xs = jax.tree.map(lambda a: _chunked(a, n_chunks, c), (tuple(hiddens), inputs))

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def body(carry, x):
        hs, ins = x
        return carry, fn(tuple(head(h) for head, h in zip(heads, hs)), ins)
    _, out = jax.lax.scan(body, None, xs)
    return jax.tree.map(lambda a: _unchunked(a, N), out)


def _check(hidden, mask, name="hidden"):
    if jnp.ndim(hidden) != 3:
        raise ValueError(f"{name} must be [B, N, D], got shape {jnp.shape(hidden)}")
    if mask is not None and jnp.shape(mask) != jnp.shape(hidden)[:2]:
        raise ValueError(f"mask has shape {jnp.shape(mask)}, expected {jnp.shape(hidden)[:2]} (the [B, N] of {name})")


def chunked_token_logprobs(hidden, head, labels, *, chunk_size=DEFAULT_CHUNK_TOKENS):
    """``log q(labels[b, i])`` ``[B, N]``: hidden ``[B, N, D]``, labels ``[B, N]`` (int)."""
    _check(hidden, labels)
    return token_map(lambda lg, y: tw.logprob(lg[0], y), (hidden,), (head,), labels, chunk_size=chunk_size)


def chunked_sequence_logprobs(hidden, head, labels, mask, *, chunk_size=DEFAULT_CHUNK_TOKENS):
    """(``Σ_i m_i log q(labels_i)`` ``[B]``, ``Σ_i m_i`` ``[B]``), as ``core.sequence_logprobs``."""
    m = jnp.asarray(mask, jnp.float32)
    return jnp.sum(chunked_token_logprobs(hidden, head, labels, chunk_size=chunk_size) * m, -1), m.sum(-1)


def chunked_cross_entropy(hidden, head, labels, mask, *, chunk_size=DEFAULT_CHUNK_TOKENS):
    """``−Σ_i m_i log q(labels_i) / max(Σ_i m_i, 1)`` ``[B]``."""
    return -masked_mean(chunked_token_logprobs(hidden, head, labels, chunk_size=chunk_size), mask)


def _pair(per_token, doc):
    """A teacher-forced divergence between two models' chunked logits, token mean ``[B]``."""
    def loss(student_hidden, student_head, teacher_hidden, teacher_head, mask, *,
             chunk_size=DEFAULT_CHUNK_TOKENS, **kw):
        _check(student_hidden, mask, "student_hidden")
        _check(teacher_hidden, mask, "teacher_hidden")
        fn = lambda lg, _: per_token(lg[0], jax.lax.stop_gradient(lg[1]), **kw)
        values = token_map(fn, (student_hidden, jax.lax.stop_gradient(teacher_hidden)), (student_head, teacher_head),
                           chunk_size=chunk_size)
        return masked_mean(values, mask)
    loss.__doc__ = doc + (" Hidden states ``[B, N, D_s]`` and ``[B, N, D_t]``, heads to one vocabulary ``V``, "
                          "mask ``[B, N]`` -> ``[B]``.")
    return loss


chunked_forward_kl = _pair(tw.forward_kl, "Token-mean ``KL(p‖q)`` at temperature ``τ`` (keyword ``temperature``).")
chunked_reverse_kl = _pair(tw.reverse_kl, "Token-mean ``KL(q‖p)`` (keyword ``temperature``).")
chunked_generalized_jsd = _pair(tw.generalized_jsd, "Token-mean ``β KL(p‖M) + (1−β) KL(q‖M)``, "
                                "``M = βp + (1−β)q``; β = 0 is FKL and β = 1 RKL exactly (``temperature``, ``beta``).")
chunked_skew_kl = _pair(tw.skew_kl, "Token-mean ``KL(p ‖ αp + (1−α)q)`` (``temperature``, ``alpha``).")
chunked_skew_reverse_kl = _pair(tw.skew_reverse_kl, "Token-mean ``KL(q ‖ (1−α)p + αq)`` (``temperature``, ``alpha``).")
chunked_adaptive_kl = _pair(tw.adaptive_kl, "Token-mean AKL, ``w·FKL + (1−w)·RKL`` with ``w`` the head/tail error "
                            "share of p's top-mass ``μ`` (``temperature``, ``mu``).")
chunked_dpkd_token_loss = _pair(tw.dpkd_token, "The reference code's token-level DPKD: teacher argmax chosen, "
                                "student argmax rejected, ``−log σ(β[(log q − log p)(c) − (log q − log p)(r)])`` "
                                "(``beta``, ``label_smoothing``, ``reference_free``).")


def chunked_cald_loss(hidden_t, mask_t, hidden_s, mask_s, heads, *, alpha=0.1, beta=0.5,
                      chunk_size=DEFAULT_CHUNK_TOKENS):
    """DistiLLM-2's CALD ``(1−β)·TM SKL_α(y_t) + β·TM SRKL_α(y_s)`` ``[B]`` (``contrastive.cald_loss``,
    the q inside SRKL's mixture detached). ``hidden_t``/``hidden_s``: (student, teacher) hidden
    states ``[B, N, D]`` on the teacher's and the student's response; ``heads``: (student, teacher)."""
    (s_head, t_head), kw = heads, dict(alpha=alpha, chunk_size=chunk_size)
    skl = chunked_skew_kl(hidden_t[0], s_head, hidden_t[1], t_head, mask_t, **kw)
    srkl = _chunked_cald_srkl(hidden_s[0], s_head, hidden_s[1], t_head, mask_s, **kw)
    return (1.0 - beta) * skl + beta * srkl


_chunked_cald_srkl = _pair(tw.cald_skew_reverse_kl, "DistiLLM-2's ``KL(q ‖ (1−α)p + α·sg(q))``.")


def _cached(per_token, doc, what="top-k ids/log-probs ``[B, N, k]``"):
    """A divergence against a cached teacher (two ``[B, N, k]`` arrays), the student's logits
    chunked, token mean ``[B]``."""
    def loss(student_hidden, student_head, teacher_a, teacher_b, mask, *, chunk_size=DEFAULT_CHUNK_TOKENS, **kw):
        _check(student_hidden, mask, "student_hidden")
        if teacher_a.shape != teacher_b.shape or teacher_a.shape[:2] != mask.shape:
            raise ValueError(f"the teacher cache's arrays {teacher_a.shape} and {teacher_b.shape} must be "
                             f"[B, N, k] with [B, N] = mask {mask.shape}")
        fn = lambda lg, cache: per_token(lg[0], *cache, **kw)
        values = token_map(fn, (student_hidden,), (student_head,), (teacher_a, teacher_b), chunk_size=chunk_size)
        return masked_mean(values, mask)
    loss.__doc__ = doc + f" Hidden ``[B, N, D]``, the cache's {what}, mask ``[B, N]`` -> ``[B]``."
    return loss


def _sparse(per_token, doc):
    return _cached(per_token, doc + " Over the teacher's k tokens plus one residual bucket (``sparse``).")


chunked_sparse_forward_kl = _sparse(tw.sparse_forward_kl, "Token-mean ``KL(p‖q)``.")
chunked_sparse_reverse_kl = _sparse(tw.sparse_reverse_kl, "Token-mean ``KL(q‖p)``.")
chunked_sparse_generalized_jsd = _sparse(tw.sparse_generalized_jsd, "Token-mean JSD_β (``beta``).")
chunked_sparse_skew_kl = _sparse(tw.sparse_skew_kl, "Token-mean ``KL(p ‖ αp + (1−α)q)`` (``alpha``).")
chunked_sparse_skew_reverse_kl = _sparse(tw.sparse_skew_reverse_kl, "Token-mean ``KL(q ‖ (1−α)p + αq)`` (``alpha``).")
chunked_sparse_adaptive_kl = _sparse(tw.sparse_adaptive_kl, "Token-mean AKL (``mu``).")


def chunked_topk_logprobs(hidden, head, k: int, *, chunk_size=DEFAULT_CHUNK_TOKENS):
    """The sparse cache from hidden states: (ids ``[B, N, k]`` int32, log-probs ``[B, N, k]``)."""
    _check(hidden, None)
    return token_map(lambda lg, _: tw.topk(lg[0], k), (hidden,), (head,), chunk_size=chunk_size)


# ----------------------------------------------------- round 3 (method.md §4–7, §10) ---

chunked_abkd_divergence = _pair(tw.abkd, "Token-mean ABKD α-β divergence (``alpha``, ``beta``, ``temperature``; "
                                "``divergences.abkd_divergence``).")
chunked_todi_divergence = _pair(tw.todi, "Token-mean ToDi, value FKL + RKL, gradient the ``σ(log p − log q)``-weighted "
                                "mix (``temperature``).")
chunked_taid_loss = _pair(tw.taid, "Token-mean TAID cross-entropy ``−Σ p^(λ) log q``, "
                          "``p^(λ) = softmax((1−λ)·sg(z_s) + λ·z_t)`` (``lam``, possibly traced).")
chunked_entropy_aware_fkl = _pair(tw.entropy_aware_fkl, "Token-mean EOPD term ``1[H(p) > τ]·FKL^(k)`` "
                                  "(``tau``, ``k``; ``onpolicy.entropy_aware_fkl``).")
chunked_sampled_forward_kl = _cached(tw.sampled_forward_kl, "Token-mean RS-KD estimate "
                                     "``Σ t̂ (log t̂ − log q)``, ``t̂ = counts / Σ counts``.",
                                     what="sampled ids/counts ``[B, N, U]``")
