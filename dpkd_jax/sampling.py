"""Generation with a KV cache, and teacher-forced scoring.

This module knows a model only through a *decode call*: a hashable object ``f``
with ``f(params, tokens, positions, attention_mask, cache, cache_index,
logits_range=None) -> (logits, cache)`` and ``f.init_cache(batch, length)``
(``models.split(model)`` returns ``(f, params)`` of an NNX model: its graph definition
and flat state). The model attends over as many cache slots as ``attention_mask`` has columns.

Prompts are left-padded to a fixed length ``P``; the cache has ``P + N`` slots
for ``N`` new tokens. One prefill writes the prompt; decoding then runs in at most
:data:`MAX_CHUNKS` chunks of new tokens, each a ``lax.scan`` whose steps attend over
the slots filled by the end of that chunk only (a static slice: the cost of a step
follows the tokens generated so far, not ``N``). A chunk is skipped once every row has
ended (early exit), so the cost follows the longest response. No Python loop over
tokens and no host round trip inside :func:`sample`; one compile per
(batch, P, N, options). :func:`generate` (evaluation, offline teacher samples) jits
the prefill and each chunk separately, donates the cache, and stops between chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import losses

__all__ = ["Sampling", "generate", "sample", "sample_jit", "score", "response_logits", "response_hidden",
           "process_logits", "chunks"]

MAX_CHUNKS = 4      # compiled decode bodies per generation; attention waste <= 1/MAX_CHUNKS of N
# Each chunk is one more compiled decode body (seconds of XLA compile per model on a CPU); a chunk shorter
# than this saves less decode time (attention over fewer slots, early exit) than its compile costs.
MIN_CHUNK = 64


def process_logits(logits, *, temperature=1.0, top_k=0, top_p=1.0):
    """Float32 logits restricted to the sampling support.

    ``logits [B, V] / temperature``; ``top_k > 0`` keeps the k largest (``lax.top_k``,
    no sort of the vocabulary); ``top_p < 1`` keeps the smallest set of most likely
    tokens whose probability reaches ``top_p`` (the most likely token always), taken
    over the renormalised top-k prefix when both are set (transformers' order), over a
    full sort otherwise. Removed
    entries are -inf; ``top_k=0, top_p=1.0`` leaves the distribution untouched.
    """
    x = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if not top_k and top_p >= 1.0:
        return x
    # Descending candidates: the top-k prefix, or the whole sorted vocabulary for top-p alone.
    cand = jax.lax.top_k(x, top_k)[0] if top_k else jnp.sort(x, axis=-1)[..., ::-1]
    threshold = cand[..., -1:]
    if top_p < 1.0:
        # as transformers' warpers: top-p over the top-k distribution renormalised (k = V: the full one)
        probs = jax.nn.softmax(cand, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs   # mass strictly above each candidate
        threshold = jnp.min(jnp.where(before < top_p, cand, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(x < threshold, neg, x)


def chunks(max_new_tokens: int) -> list[tuple[int, int]]:
    """Static [start, stop) ranges of new-token indices, one compiled scan each."""
    size = max(MIN_CHUNK, math.ceil(max_new_tokens / MAX_CHUNKS))
    return [(s, min(s + size, max_new_tokens)) for s in range(0, max_new_tokens, size)]


class State(NamedTuple):
    logits: jax.Array     # [B, V] next-token logits
    cache: dict           # KV cache of P + N slots
    pos: jax.Array        # [B] position of the next token
    done: jax.Array       # [B] row has emitted EOS
    key_mask: jax.Array   # [B, P + N] valid key slots (prompt mask, then all new slots)


def _positions(mask):
    """A token's position: the number of real tokens before it in its row (padding: the last one's, or 0)."""
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def prefill(decode, params, prompt_ids, prompt_mask, max_new_tokens) -> State:
    """Write the prompt into a fresh cache; the logits of the first new token."""
    B, P = prompt_ids.shape
    prompt_mask = prompt_mask.astype(jnp.int32)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((B, max_new_tokens), jnp.int32)], axis=1)
    positions = _positions(prompt_mask)
    cache = decode.init_cache(B, P + max_new_tokens)
    logits, cache = decode(params, prompt_ids, positions, prompt_mask, cache, 0, logits_range=(P - 1, P))
    return State(logits[:, 0], cache, jnp.sum(prompt_mask, axis=1), jnp.zeros((B,), bool), key_mask)


def _pick(logits, key, *, temperature, top_k, top_p, greedy):
    """One token per row: argmax, or a draw from the processed distribution."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return draw(key, x)


def draw(key, logits):
    """One index per row from ``softmax(logits [B, V])`` by inverse CDF: one uniform per row
    instead of ``categorical``'s Gumbel noise per vocabulary entry (a third of a CPU decode
    step at V = 5000). Exact up to float32 rounding of the cumulative sum."""
    cdf = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
    u = jax.random.uniform(key, cdf.shape[:-1] + (1,)) * cdf[..., -1:]
    return jnp.minimum(jnp.sum(cdf < u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)


def decode_chunk(decode, params, state: State, rng, start, stop, *, prompt_len, opts, temperature):
    """New tokens ``start..stop-1``: ``(state, tokens [B, n], live [B, n])`` under ``opts`` (a :class:`Sampling`) at
    ``temperature`` (traced: one compile serves every temperature). Each step attends over the
    ``prompt_len + stop`` slots this chunk can have filled, not the whole cache."""
    key_mask = state.key_mask[:, :prompt_len + stop]
    pick = opts._pick(temperature)

    def step(carry, i):
        logits, cache, pos, done = carry
        tok = jnp.where(done, opts.pad_token_id, _pick(logits, jax.random.fold_in(rng, i), **pick))
        live = ~done
        done = done | (tok == opts.eos_token_id)
        logits, cache = decode(params, tok[:, None], pos[:, None], key_mask, cache, prompt_len + i)
        return (logits[:, 0], cache, pos + 1, done), (tok, live)

    (logits, cache, pos, done), (toks, live) = jax.lax.scan(
        step, (state.logits, state.cache, state.pos, state.done), jnp.arange(start, stop))
    return state._replace(logits=logits, cache=cache, pos=pos, done=done), toks.T, live.T


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The sampler's options, one hashable value (a compiled sampler is keyed by it): ``max_new_tokens`` after
    the prompt; after a row emits ``eos_token_id`` its later tokens are ``pad_token_id`` with mask 0;
    ``greedy`` takes the argmax, otherwise temperature / top-k / top-p sampling (``top_k=0, top_p=1.0``:
    the full distribution, as the paper samples)."""
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int = -1
    pad_token_id: int = 0
    greedy: bool = False

    @classmethod
    def of(cls, g) -> "Sampling":
        """From a ``config.gen``-shaped section (entry points only)."""
        return cls(int(g.max_new_tokens), float(g.temperature), int(g.top_k), float(g.top_p), int(g.eos_token_id),
                   int(g.pad_token_id))

    def replace(self, **changes) -> "Sampling":
        return dataclasses.replace(self, **changes)

    def check(self) -> "Sampling":
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0 and not self.greedy:
            raise ValueError(f"temperature must be > 0 (or greedy=True), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        return self

    def _pick(self, temperature=None) -> dict:
        return dict(temperature=self.temperature if temperature is None else temperature, top_k=self.top_k,
                    top_p=self.top_p, greedy=self.greedy)


def sample(decode, params, prompt_ids, prompt_mask, rng, opts: Sampling):
    """Pure generation (call it inside your own jit, e.g. a train step): see :func:`generate`.
    Chunks after every row has ended are skipped (``lax.cond``)."""
    B, P = prompt_ids.shape
    rng = jax.random.PRNGKey(0) if rng is None else rng
    kw = dict(prompt_len=P, opts=opts, temperature=opts.temperature)
    state = prefill(decode, params, prompt_ids, prompt_mask, opts.max_new_tokens)
    toks, lives = [], []
    for start, stop in chunks(opts.max_new_tokens):
        run = functools.partial(decode_chunk, decode, params, rng=rng, start=start, stop=stop, **kw)

        def skip(st, n=stop - start):
            return st, jnp.full((B, n), opts.pad_token_id, jnp.int32), jnp.zeros((B, n), bool)
        state, t, live = jax.lax.cond(jnp.all(state.done), skip, lambda st: run(state=st), state)
        toks.append(t)
        lives.append(live)
    return jnp.concatenate(toks, axis=1), jnp.concatenate(lives, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("decode", "opts"))
def _generate_jit(decode, params, prompt_ids, prompt_mask, rng, temperature, opts):
    return sample(decode, params, prompt_ids, prompt_mask, rng, opts.replace(temperature=temperature))


def sample_jit(decode, params, prompt_ids, prompt_mask, rng, opts: Sampling):
    """:func:`sample` compiled as one program, once per (decode, shapes, options but the temperature)."""
    return _generate_jit(decode, params, prompt_ids, prompt_mask, rng, jnp.float32(opts.temperature),
                         opts=opts.replace(temperature=1.0))


# Evaluation and offline teacher samples: prefill and each chunk jitted apart, the cache donated,
# the host stopping between chunks once every row has ended.
_prefill_jit = jax.jit(prefill, static_argnums=(0, 4))
_CHUNK_STATIC = ("decode", "start", "stop", "prompt_len", "opts")
_chunk_jit = jax.jit(decode_chunk, static_argnames=_CHUNK_STATIC, donate_argnames=("state",))


def generate_stepwise(decode, params, prompt_ids, prompt_mask, rng, opts: Sampling):
    """Same tokens as :func:`sample_jit`, driven from the host chunk by chunk: true early
    exit (no work at all after every row has ended) at one host check per chunk."""
    B, P = prompt_ids.shape
    N, pad = int(opts.max_new_tokens), int(opts.pad_token_id)
    state = _prefill_jit(decode, params, prompt_ids, prompt_mask, N)
    kw = dict(prompt_len=P, opts=opts.replace(temperature=1.0), temperature=jnp.float32(opts.temperature))
    toks, lives = [], []
    for start, stop in chunks(N):
        if toks and bool(jnp.all(state.done)):
            toks.append(jnp.full((B, stop - start), pad, jnp.int32))
            lives.append(jnp.zeros((B, stop - start), bool))
            continue
        state, t, live = _chunk_jit(decode, params, state, rng, start=start, stop=stop, **kw)
        toks.append(t)
        lives.append(live)
    return jnp.concatenate(toks, axis=1), jnp.concatenate(lives, axis=1).astype(jnp.int32)


def generate(model, prompt_ids, prompt_mask, opts: Sampling, rng=None):
    """Sample ``opts.max_new_tokens`` after left-padded prompts.

    Args: ``model``, a ``(decode, params)`` pair (``models.split`` of an NNX model; ``models.generate`` takes
    the NNX model itself); ``prompt_ids``/``prompt_mask`` ``[B, P]``, left-padded; ``opts``, a
    :class:`Sampling`. Returns ``(tokens [B, N], mask [B, N])``: after a row emits the EOS its later tokens
    are padding with mask 0 (the EOS has mask 1).
    """
    opts.check()
    if jnp.shape(prompt_ids) != jnp.shape(prompt_mask):
        raise ValueError(f"prompt_mask has shape {jnp.shape(prompt_mask)}, prompt_ids {jnp.shape(prompt_ids)}")
    decode, params = model
    return generate_stepwise(decode, params, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask),
                             jax.random.PRNGKey(0) if rng is None else rng, opts)


def _teacher_forced(prompt_ids, prompt_mask, response_ids, response_mask):
    """Prompt and response as one row: (tokens, positions, mask) ``[B, P + N]``."""
    tokens = jnp.concatenate([prompt_ids, response_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    return tokens, _positions(mask), mask


def squeezed_rows(prompt_ids, prompt_mask, response_ids, response_mask, length):
    """Prompt and response as one row of ``length`` slots with the padding between them squeezed out:
    ``(tokens, positions, mask) [B, length]`` and ``starts [B]``, the slot of each row's last prompt token.

    The left-padded prompt and right-padded response put a row's real tokens at
    ``[P - p_b, P + r_b)``; shifted left by the ``P - p_b`` pad slots they fill ``[0, p_b + r_b)``.
    Positions, causal order and the keys each token sees are those of :func:`_teacher_forced`:
    the forward is the same, on fewer slots. Needs ``p_b + r_b <= length`` for every row (tokens
    past ``length`` would be lost): the caller's bound, the longest row of its data."""
    P, N = prompt_ids.shape[1], response_ids.shape[1]
    tokens, _, mask = _teacher_forced(prompt_ids, prompt_mask, response_ids, response_mask)
    pad = P - jnp.sum(prompt_mask.astype(jnp.int32), axis=1)
    idx = jnp.arange(length)[None, :] + pad[:, None]
    inside = idx < P + N
    idx = jnp.minimum(idx, P + N - 1)
    tokens = jnp.take_along_axis(tokens, idx, axis=1)
    mask = jnp.take_along_axis(mask, idx, axis=1) * inside
    return tokens, _positions(mask), mask, P - 1 - pad


def _rows(prompt_ids, prompt_mask, response_ids, response_mask, length):
    """The teacher-forced rows ``(tokens, positions, mask)`` (:func:`squeezed_rows` of ``length`` slots,
    or the full ``P + N``) and ``pick(x, axis)``: ``x``'s slots along ``axis`` whose outputs predict
    response tokens ``0..N-1`` (squeezed: clipped past a row's end, padding response slots the losses mask)."""
    P, N = prompt_ids.shape[1], response_ids.shape[1]
    if length is None:
        tokens, positions, mask = _teacher_forced(prompt_ids, prompt_mask, response_ids, response_mask)
        return tokens, positions, mask, lambda x, axis: jax.lax.slice_in_dim(x, P - 1, P + N - 1, axis=axis)
    tokens, positions, mask, starts = squeezed_rows(prompt_ids, prompt_mask, response_ids, response_mask, length)
    slots = jnp.minimum(starts[:, None] + jnp.arange(N)[None, :], length - 1)   # [B, N]

    def pick(x, axis):  # batch at axis - 1, slots at axis
        return jnp.take_along_axis(x, slots.reshape((1,) * (axis - 1) + slots.shape + (1,) * (x.ndim - axis - 1)),
                                   axis=axis)
    return tokens, positions, mask, pick


def packed_rows(prompt_ids, response_ids, packing):
    """The packed rows of a batch's prompt-then-response tokens (``batch.Packing``): ``(tokens,
    positions, mask, segments)`` ``[K, L]`` and ``pick(x, axis)``: ``x``'s packed slots along ``axis``
    (and the row axis before it) whose outputs predict response tokens ``[B, R]``."""
    flat = jnp.concatenate([prompt_ids, response_ids], axis=1).reshape(-1)
    seg = packing.segments
    tokens = jnp.where(seg > 0, flat[packing.src], 0)
    K, L = seg.shape

    def pick(x, axis):  # [..., K, L, ...] with K at axis - 1 -> [..., B, R, ...]
        merged = x.reshape(x.shape[:axis - 1] + (K * L,) + x.shape[axis + 1:])
        return jnp.take(merged, packing.picks, axis=axis - 1)
    return tokens, packing.positions, (seg > 0).astype(jnp.int32), seg, pick


def packed_hidden(decode, params, prompt_ids, response_ids, packing, layers=None):
    """:func:`response_hidden` on packed rows: ``[B, R, D]``, the same outputs (each example attends
    within its own segment, at positions from 0) on ``K x L`` slots; with ``layers``, also the
    residual streams after those blocks ``[K, B, R, D]`` (:func:`response_features`)."""
    tokens, positions, mask, seg, pick = packed_rows(prompt_ids, response_ids, packing)
    if layers is None:
        return pick(decode.hidden(params, tokens, positions, mask, segment_ids=seg), 1)
    x, feats = decode.features(params, tokens, positions, mask, tuple(layers), segment_ids=seg)
    return pick(x, 1), pick(feats, 2)


def response_hidden(decode, params, prompt_ids, prompt_mask, response_ids, response_mask, length=None):
    """Teacher-forced final hidden states at the positions that predict the response: ``[B, N, D]``
    (``decode.head`` of ``out[b, i]`` predicts ``response[b, i]``). The losses apply the head
    in chunks (``losses.token_map``). ``length``: run the forward on :func:`squeezed_rows` of that
    many slots instead of ``P + N`` (the same outputs, less padding computed)."""
    tokens, positions, mask, pick = _rows(prompt_ids, prompt_mask, response_ids, response_mask, length)
    return pick(decode.hidden(params, tokens, positions, mask), 1)


def shared_prompt_hidden(decode, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """:func:`response_hidden` of ``k`` responses per prompt with the prompt run once: ``[kB, N, D]``.

    ``prompt [B, P]``; ``response [kB, N]``, row ``j·B + b`` answering prompt ``b``. The prompt's
    forward writes a KV cache of ``P + N − 1`` slots, which each response's copy reads: a response
    token sees the same keys, at the same slots and positions, as in the teacher-forced row, so
    the outputs are the same, for ``B·P + kB·(N − 1)`` tokens instead of ``kB·(P + N)``. Gradients
    reach the prompt's forward through its hidden state and its cache."""
    B, P = prompt_ids.shape
    kB, N = response_ids.shape
    k = kB // B
    prompt_mask = prompt_mask.astype(jnp.int32)
    tile = lambda a: jnp.concatenate([a] * k, axis=0)
    x, cache = decode.hidden_cached(params, prompt_ids, _positions(prompt_mask), prompt_mask,
                                    decode.init_cache(B, P + N - 1), 0)
    first = tile(x[:, P - 1:])      # the last prompt slot predicts every response's first token
    if N == 1:
        return first
    cache = jax.tree.map(lambda c: jnp.concatenate([c] * k, axis=c.ndim - 4), cache)  # [(L,) kB, G, S, K]
    lengths = tile(jnp.sum(prompt_mask, axis=1))
    mask = response_mask[:, :N - 1].astype(jnp.int32)
    rest, _ = decode.hidden_cached(params, response_ids[:, :N - 1], lengths[:, None] + _positions(mask),
                                   jnp.concatenate([tile(prompt_mask), mask], 1), cache, P)
    return jnp.concatenate([first, rest], axis=1)


def response_features(decode, params, prompt_ids, prompt_mask, response_ids, response_mask, layers, length=None):
    """:func:`response_hidden` and, from the same forward, the residual stream after each block
    in ``layers`` at the same positions: ``([B, N, D], [K, B, N, D])``."""
    tokens, positions, mask, pick = _rows(prompt_ids, prompt_mask, response_ids, response_mask, length)
    x, feats = decode.features(params, tokens, positions, mask, tuple(layers))
    return pick(x, 1), pick(feats, 2)


def response_logits(decode, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """Teacher-forced logits at the response positions: ``[B, N, V]`` (for analysis and tests;
    the train step never builds them: it uses :func:`response_hidden`).

    The prompt ``[B, P]`` is left-padded, the response ``[B, N]`` follows it
    (right-padded, mask 0 after EOS); ``logits[b, i]`` predicts ``response[b, i]``.
    Only these ``N`` positions are projected to the vocabulary.
    """
    P, N = prompt_ids.shape[1], response_ids.shape[1]
    tokens, positions, mask = _teacher_forced(prompt_ids, prompt_mask, response_ids, response_mask)
    logits, _ = decode(params, tokens, positions, mask, None, 0, logits_range=(P - 1, P + N - 1))
    return logits


def score(decode, params, prompt_ids, prompt_mask, response_ids, response_mask, *,
          chunk_tokens=losses.DEFAULT_CHUNK_TOKENS):
    """Teacher-forced per-token log-probs of a response: ``(token_logps [B, N], mask [B, N])``,
    the vocabulary projected in chunks of ``chunk_tokens`` tokens.

    ``token_logps[b, i] = log π(response[b, i] | prompt, response[b, :i])``; sum
    with the mask for ``log π(y|x)``. Shapes as :func:`response_logits`.
    """
    h = response_hidden(decode, params, prompt_ids, prompt_mask, response_ids, response_mask)
    head = functools.partial(decode.head, params)
    return losses.chunked_token_logprobs(h, head, response_ids, chunk_size=chunk_tokens), response_mask
