"""Generation with a KV cache under ``lax.scan``, and teacher-forced scoring.

This module knows a model only through a *decode call*: a hashable object ``f``
with ``f(params, tokens, positions, attention_mask, cache, cache_index,
logits_range=None) -> (logits, cache)`` and ``f.init_cache(batch, length)``
(our ``models.Config`` is one). ``model.decoder()`` returns ``(f, params)``.

Prompts are left-padded to a fixed length ``P``; the cache has ``P + N`` slots
for ``N`` new tokens. One prefill writes the prompt, then a scan emits one
token per step: no Python loop over tokens and no host round trip, compiled
once per (batch, P, N) shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import losses

__all__ = ["generate", "sample", "sample_jit", "score", "response_logits", "process_logits"]


def process_logits(logits, *, temperature=1.0, top_k=0, top_p=1.0):
    """Float32 logits restricted to the sampling support.

    ``logits [B, V] / temperature``; ``top_k > 0`` keeps the k largest;
    ``top_p < 1`` keeps the smallest set of most likely tokens whose probability
    reaches ``top_p`` (the most likely token always). Removed entries are -inf.
    ``top_k=0, top_p=1.0`` leaves the full distribution.
    """
    x = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, neg, x)
    if top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs   # mass strictly above each token
        keep = before < top_p
        threshold = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < threshold, neg, x)
    return x


def sample(decode, params, prompt_ids, prompt_mask, rng, *, max_new_tokens, temperature=1.0, top_k=0,
           top_p=1.0, greedy=False, eos_token_id, pad_token_id):
    """Pure generation (call it inside your own jit): see :func:`generate`."""
    B, P = prompt_ids.shape
    N = max_new_tokens
    prompt_mask = prompt_mask.astype(jnp.int32)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((B, N), jnp.int32)], axis=1)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    cache = decode.init_cache(B, P + N)
    logits, cache = decode(params, prompt_ids, positions, key_mask, cache, 0, logits_range=(P - 1, P))
    if rng is None:
        rng = jax.random.PRNGKey(0)

    def pick(logits, key):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        x = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)

    def emit(logits, done, key):
        tok = jnp.where(done, pad_token_id, pick(logits, key))
        live = ~done
        return tok, live, done | (tok == eos_token_id)

    def step(carry, i):
        logits, cache, pos, done = carry
        tok, live, done = emit(logits, done, jax.random.fold_in(rng, i))
        logits, cache = decode(params, tok[:, None], pos[:, None], key_mask, cache, P + i)
        return (logits[:, 0], cache, pos + 1, done), (tok, live)

    next_pos = jnp.sum(prompt_mask, axis=1)
    done = jnp.zeros((B,), bool)
    # N-1 steps that feed their token back, then the last pick needs no forward.
    (logits, _, _, done), (toks, live) = jax.lax.scan(
        step, (logits[:, 0], cache, next_pos, done), jnp.arange(N - 1))
    last_tok, last_live, _ = emit(logits, done, jax.random.fold_in(rng, N - 1))
    tokens = jnp.concatenate([toks.T, last_tok[:, None]], axis=1)
    mask = jnp.concatenate([live.T, last_live[:, None]], axis=1).astype(jnp.int32)
    return tokens, mask


_STATIC = ("decode", "max_new_tokens", "top_k", "top_p", "greedy", "eos_token_id", "pad_token_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_jit(decode, params, prompt_ids, prompt_mask, rng, temperature, **static):
    return sample(decode, params, prompt_ids, prompt_mask, rng, temperature=temperature, **static)


def sample_jit(decode, params, prompt_ids, prompt_mask, rng, *, max_new_tokens, temperature=1.0, top_k=0,
               top_p=1.0, greedy=False, eos_token_id, pad_token_id):
    """:func:`sample` compiled once per (decode, shapes, static options) and cached
    across calls: what evaluation and offline teacher sampling loop over."""
    return _generate_jit(decode, params, prompt_ids, prompt_mask, rng, jnp.float32(temperature),
                         max_new_tokens=int(max_new_tokens), top_k=int(top_k), top_p=float(top_p),
                         greedy=bool(greedy), eos_token_id=int(eos_token_id), pad_token_id=int(pad_token_id))


def generate(model, prompt_ids, prompt_mask, *, max_new_tokens, rng=None, temperature=1.0, top_k=0, top_p=1.0,
             greedy=False, eos_token_id, pad_token_id):
    """Sample ``max_new_tokens`` after left-padded prompts.

    Args: ``model`` with ``.decoder() -> (decode, params)`` (e.g. a
    ``models.CausalLM``); ``prompt_ids``/``prompt_mask`` ``[B, P]``, left-padded.
    Returns ``(tokens [B, N], mask [B, N])``: after a row emits ``eos_token_id``
    its later tokens are ``pad_token_id`` with mask 0 (the EOS has mask 1).
    ``greedy`` takes the argmax; otherwise temperature / top-k / top-p sampling
    (``top_k=0, top_p=1.0``: the full distribution, as the paper samples).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature must be > 0 (or greedy=True), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if jnp.shape(prompt_ids) != jnp.shape(prompt_mask):
        raise ValueError(f"prompt_mask has shape {jnp.shape(prompt_mask)}, prompt_ids {jnp.shape(prompt_ids)}")
    decode, params = model.decoder()
    return sample_jit(decode, params, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask),
                      jax.random.PRNGKey(0) if rng is None else rng, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def response_logits(decode, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """Teacher-forced logits at the response positions: ``[B, N, V]``.

    The prompt ``[B, P]`` is left-padded, the response ``[B, N]`` follows it
    (right-padded, mask 0 after EOS); ``logits[b, i]`` predicts ``response[b, i]``.
    Only these ``N`` positions are projected to the vocabulary.
    """
    P, N = prompt_ids.shape[1], response_ids.shape[1]
    tokens = jnp.concatenate([prompt_ids, response_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, _ = decode(params, tokens, positions, mask, None, 0, logits_range=(P - 1, P + N - 1))
    return logits


def score(decode, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """Teacher-forced per-token log-probs of a response: ``(token_logps [B, N], mask [B, N])``.

    ``token_logps[b, i] = log π(response[b, i] | prompt, response[b, :i])``; sum
    with the mask for ``log π(y|x)``. Shapes as :func:`response_logits`.
    """
    logits = response_logits(decode, params, prompt_ids, prompt_mask, response_ids, response_mask)
    return losses.token_logprobs(logits, response_ids), response_mask
