"""The one attention entry point: :func:`attend` runs every forward's attention (training,
prefill, evaluation, the shared-prompt forward, features) through the kernel that
``Config.attention_kernel`` names:

- ``dense``: the einsum reference; materialises ``[B, G, R, T, S]`` float32 scores.
- ``blockwise``: pure JAX online softmax over key blocks, queries in blocks too (Rabe & Staats;
  Dao's flash attention). A ``jax.custom_vjp`` backward recomputes each block's scores from the
  saved log-sum-exp, so neither pass holds a ``[T, S]`` array: memory is O(T). Blocks that the
  causal mask or the sliding window masks wholly are skipped (loop bounds, not masks), so a
  causal forward does about half the dense FLOPs. Any backend, CPU included.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` on GPU.
- ``splash``: Pallas splash attention on TPU (``interpret=True`` elsewhere, for tests).
- ``auto``: dense below :data:`CROSSOVER` key slots on CPU, else the backend's O(T) kernel.

Context parallelism: under a mesh whose ``context`` axis has ``c > 1`` devices, a whole-sequence
forward (no cache) is laid out in :func:`balanced_order` by the model and each device holds two of
``2c`` chunks, ``d`` and ``2c-1-d`` (causal load balancing, as MaxText does it): every device then
sees about the same number of unmasked (query, key) pairs. :func:`context_parallel` all-gathers keys
and values over the axis inside ``shard_map`` and runs the kernel on the device's own queries at
their slots; the backward's reduce-scatter is the all-gather's transpose.

The mask is described, never materialised: :class:`Mask` holds the valid key slots, the slot of
the first query (causal over cache slots), the layer's sliding window and optional segment ids.
A kernel that cannot honour a call (soft-capping, a head size, segment ids, a traced cache
offset) is replaced by ``blockwise`` for that call, logged once per shape.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from . import components as C
from .config import ATTENTION_KERNELS as KERNELS, Config

NEG = C.NEG
# auto on CPU: dense below this many key slots, where it is faster (bench/attention_crossover.py)
CROSSOVER = 1024
# default (query, key) block sizes per backend for blockwise
BLOCKS = {"cpu": (512, 512), "gpu": (128, 128), "tpu": (512, 512)}
_logged: set = set()


class Mask(NamedTuple):
    """Which (query, key) pairs attend, described: query ``t`` sits at cache slot
    ``q_offset + t`` and sees key slot ``s`` when ``0 <= (q_offset + t) - s`` (causal),
    ``(q_offset + t) - s < window`` when ``window > 0`` (HF's sliding window), ``key_mask[b, s]``
    and, with segment ids, ``q_segments[b, t] == k_segments[b, s]``. ``q_offset`` and
    ``window`` are ints or int32 scalars (a scanned layer's window is traced)."""
    key_mask: jax.Array                  # [B, S] valid key slots
    q_offset: object = 0
    window: object = 0
    q_segments: jax.Array | None = None  # [B, T]
    k_segments: jax.Array | None = None  # [B, S]
    context: int = 1                     # > 1: the sequence is in balanced_order over this many devices

    def pairs(self, q_slots, k_slots, q_index=None, k_index=None):
        """Allowed pairs ``[B, 1, 1, len(q_slots), len(k_slots)]`` for these slots; ``q_index`` and
        ``k_index`` pick the segment arrays' and key mask's columns (default: all of them, for every
        query and every key slot)."""
        dist = q_slots[:, None] - k_slots[None, :]
        ok = (dist >= 0) & ((self.window <= 0) | (dist < self.window))
        # default indices: the arrays whole (dense's call); a block's call picks its columns
        take = lambda a, i: jnp.asarray(a) if i is None else jnp.take(jnp.asarray(a), i, axis=1)
        ok = ok[None] & take(self.key_mask, k_index).astype(bool)[:, None, :]
        if self.q_segments is not None:
            ok = ok & (take(self.q_segments, q_index)[:, :, None] == take(self.k_segments, k_index)[:, None, :])
        return ok[:, None, None]


@dataclasses.dataclass(frozen=True)
class Options:
    """The static part of one attention call."""
    scale: float
    softcap: float = 0.0
    block_q: int = 512
    block_k: int = 512
    windows: tuple = (0,)      # every window value this layer stack uses (splash/cudnn compile one per value)


def options(cfg: Config, backend: str | None = None) -> Options:
    a = cfg.attention
    bq, bk = BLOCKS.get(backend or C.target()[0], BLOCKS["cpu"])
    return Options(scale=a.query_scale or cfg.head_size ** -0.5, softcap=a.softcap,
                   block_q=cfg.attention_block_q or bq, block_k=cfg.attention_block_k or bk,
                   windows=tuple(sorted(set(a.layer_windows or (0,)))))


# ------------------------------------------------------------------ entry point

def attend(cfg: Config, q, k, v, mask: Mask):
    """Grouped-query attention: q ``[B, T, H, K]`` over k, v ``[B, G, S, K]`` (heads before slots,
    the KV cache's layout) -> ``[B, T, H, K]``, through the kernel :func:`choose` picks."""
    if mask.context > 1:
        return context_parallel(cfg, q, k, v, mask)
    return _kernel(cfg, q, k, v, mask)


def _kernel(cfg: Config, q, k, v, mask: Mask):
    T, S = q.shape[1], k.shape[2]
    if C.pallas_decode_ok(cfg, T, S):
        return C.attend_decode_pallas(cfg, q, k, v, mask.key_mask, mask.q_offset + 1)
    opts = options(cfg)
    kernel = choose(cfg, q.shape, S, mask)
    if kernel == "dense":
        return dense(q, k, v, mask, opts)
    if kernel == "cudnn":
        return cudnn(q, k, v, mask, opts)
    if kernel == "splash":
        return splash(q, k, v, mask, opts)
    return blockwise(q, k, v, mask, opts)


def choose(cfg: Config, q_shape, S: int, mask: Mask, backend: str | None = None) -> str:
    """The kernel for one call (logged once per kernel and shape). Single-token decode is dense."""
    backend = backend or C.target()[0]
    name, T = cfg.attention_kernel, q_shape[1]
    if T == 1:
        return "dense"
    if name == "auto":
        native = {"gpu": "cudnn", "tpu": "splash"}.get(backend)
        why = native and unsupported(native, cfg, q_shape, S, mask, backend)
        if native and not why:
            picked, reason = native, f"the {backend} kernel"
        else:
            picked = "dense" if S < CROSSOVER else "blockwise"
            reason = f"{S} key slots {'<' if S < CROSSOVER else '>='} {CROSSOVER}" + (f"; {native}: {why}" if why else "")
    elif name in ("cudnn", "splash"):
        why = unsupported(name, cfg, q_shape, S, mask, backend)
        picked, reason = ("blockwise", f"{name}: {why}") if why else (name, "asked for")
    else:
        picked, reason = name, "asked for"
    key = (cfg.attention_kernel, picked, tuple(q_shape), S, reason)
    if key not in _logged:
        _logged.add(key)
        logging.info("attention: %s for q %s over %d key slots (%s)", picked, tuple(q_shape), S, reason)
    return picked


def unsupported(kernel: str, cfg: Config, q_shape, S: int, mask: Mask, backend: str) -> str:
    """Why ``kernel`` cannot run this call ('' when it can)."""
    K, T = cfg.head_size, q_shape[1]
    if kernel == "cudnn":
        if backend != "gpu":
            return f"needs a GPU (backend is {backend})"
        if cfg.attention.softcap:
            return "no soft-capping in jax.nn.dot_product_attention"
        if mask.q_segments is not None:
            return "no segment ids in jax.nn.dot_product_attention"
        limit = 256 if _hopper() else 128
        if K % 8 or K > limit:
            return f"head_dim {K} must be a multiple of 8 and at most {limit} on this GPU"
        if not (isinstance(mask.q_offset, int) and mask.q_offset == 0 and T == S):
            return "queries over a filled cache"
        return ""
    if kernel == "splash":
        if backend != "tpu" and not _interpret_splash:
            return f"needs a TPU (backend is {backend})"
        if not isinstance(mask.q_offset, int):
            return "a traced cache offset"
        return ""
    return ""


def _hopper() -> bool:
    kind = C.target()[1].lower()
    return any(s in kind for s in ("h100", "h200", "h800", "gh200", "b100", "b200"))


# ------------------------------------------------------------------ dense (the reference)

def dense(q, k, v, mask: Mask, opts: Options):
    """Scores and softmax in float32 over the whole ``[T, S]``; optional tanh soft-capping before
    the mask. A query with no allowed key averages every value (the softmax of a constant row)."""
    B, T, H, K = q.shape
    G, S = k.shape[1], k.shape[2]
    qg = q.reshape(B, T, G, H // G, K)
    scores = jnp.einsum("btgrk,bgsk->bgrts", qg, k).astype(jnp.float32) * opts.scale
    if opts.softcap:
        scores = jnp.tanh(scores / opts.softcap) * opts.softcap
    scores = jnp.where(mask.pairs(mask.q_offset + jnp.arange(T), jnp.arange(S)), scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bgrts,bgsk->btgrk", probs, v).reshape(B, T, H, K)


# ------------------------------------------------------------------ blockwise

class _Shape(NamedTuple):
    """Static sizes of one blockwise call: real and padded lengths, blocks, and the options."""
    T: int
    S: int
    bq: int
    bk: int
    nq: int
    nk: int
    scale: float
    softcap: float


def blockwise(q, k, v, mask: Mask, opts: Options):
    """Exact attention in O(T) memory: online softmax over key blocks of ``opts.block_k`` slots for
    each block of ``opts.block_q`` queries; T and S need not be multiples of the blocks (padded
    queries and keys are masked). Same result as :func:`dense` within float32 rounding."""
    B, T, H, K = q.shape
    G, S = k.shape[1], k.shape[2]
    bq, bk = min(opts.block_q, T), min(opts.block_k, S)
    nq, nk = -(-T // bq), -(-S // bk)
    shape = _Shape(T, S, bq, bk, nq, nk, float(opts.scale), float(opts.softcap))
    pad = lambda x, n, axis: jnp.pad(x, [(0, n if a == axis else 0) for a in range(x.ndim)])
    qp = pad(q, nq * bq - T, 1).reshape(B, nq * bq, G, H // G, K)
    kp, vp = pad(k, nk * bk - S, 2), pad(v, nk * bk - S, 2)
    key_mask = pad(mask.key_mask.astype(jnp.int32), nk * bk - S, 1)
    segs = None
    if mask.q_segments is not None:
        segs = (pad(mask.q_segments, nq * bq - T, 1), pad(mask.k_segments, nk * bk - S, 1))
    out = _flash(shape, qp, kp, vp, key_mask, segs, jnp.asarray(mask.q_offset, jnp.int32),
                 jnp.asarray(mask.window, jnp.int32))
    return out.reshape(B, nq * bq, H, K)[:, :T]


def _block_mask(sh: _Shape, key_mask, segs, q_offset, window, i, j):
    """Allowed pairs of query block ``i`` and key block ``j``: ``[B, 1, 1, bq, bk]``."""
    t = i * sh.bq + jnp.arange(sh.bq)
    s = j * sh.bk + jnp.arange(sh.bk)
    m = Mask(key_mask, q_offset, window, *(segs or (None, None)))
    ok = m.pairs(q_offset + t, s, q_index=t, k_index=s)
    return ok & (t < sh.T)[None, None, None, :, None]


def _q_range(sh: _Shape, q_offset, window, i):
    """Key blocks ``[lo, hi)`` that query block ``i`` can see (causal, window)."""
    qmin = q_offset + i * sh.bq
    qmax = q_offset + jnp.minimum((i + 1) * sh.bq, sh.T) - 1
    hi = jnp.clip(qmax // sh.bk + 1, 0, sh.nk)
    lo = jnp.where(window > 0, jnp.clip((qmin - window + 1) // sh.bk, 0, sh.nk), 0)
    return lo, jnp.maximum(lo, hi)


def _k_range(sh: _Shape, q_offset, window, j):
    """Query blocks ``[lo, hi)`` that can see key block ``j``."""
    kmin, kmax = j * sh.bk, (j + 1) * sh.bk - 1
    lo = jnp.clip((kmin - q_offset) // sh.bq, 0, sh.nq)
    hi = jnp.where(window > 0, jnp.clip((kmax + window - 1 - q_offset) // sh.bq + 1, 0, sh.nq), sh.nq)
    return lo, jnp.maximum(lo, hi)


def _scores(sh: _Shape, qi, kj):
    """Scaled (and soft-capped) scores of a query block ``[B, bq, G, R, K]`` against a key block
    ``[B, G, bk, K]``: ``[B, G, R, bq, bk]`` float32."""
    s = jnp.einsum("bqgrk,bgsk->bgrqs", qi, kj, preferred_element_type=jnp.float32) * sh.scale
    return jnp.tanh(s / sh.softcap) * sh.softcap if sh.softcap else s


def _slice(x, start, size, axis):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(sh, q, k, v, key_mask, segs, q_offset, window):
    return _flash_fwd(sh, q, k, v, key_mask, segs, q_offset, window)[0]


def _flash_fwd(sh, q, k, v, key_mask, segs, q_offset, window):
    B, _, G, R, K = q.shape

    def q_block(i):
        qi = _slice(q, i * sh.bq, sh.bq, 1)

        def body(j, carry):
            m, l, acc = carry
            kj, vj = _slice(k, j * sh.bk, sh.bk, 2), _slice(v, j * sh.bk, sh.bk, 2)
            ok = _block_mask(sh, key_mask, segs, q_offset, window, i, j)
            s = jnp.where(ok, _scores(sh, qi, kj), NEG)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
            c = jnp.exp(m - m_new)
            acc = acc * c[..., None] + jnp.einsum("bgrqs,bgsk->bgrqk", p.astype(v.dtype), vj,
                                                  preferred_element_type=jnp.float32)
            return m_new, l * c + p.sum(-1), acc
        init = (jnp.full((B, G, R, sh.bq), NEG, jnp.float32), jnp.zeros((B, G, R, sh.bq), jnp.float32),
                jnp.zeros((B, G, R, sh.bq, K), jnp.float32))
        return jax.lax.fori_loop(*_q_range(sh, q_offset, window, i), body, init)

    m, l, acc = jax.lax.map(q_block, jnp.arange(sh.nq))          # [nq, B, G, R, bq(, K)]
    live = l > 0
    # a query with no allowed key averages every value, as dense's softmax of a constant row does
    mean_v = jnp.mean(v[:, :, :sh.S].astype(jnp.float32), axis=2)[None, :, :, None, None]
    out = jnp.where(live[..., None], acc / jnp.where(live, l, 1.0)[..., None], mean_v)
    lse = jnp.where(live, m + jnp.log(jnp.where(live, l, 1.0)), 0.0)
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(q.shape).astype(q.dtype)   # [B, nq*bq, G, R, K]
    lse = lse.transpose(1, 0, 4, 2, 3).reshape(B, -1, G, R)                 # [B, nq*bq, G, R]
    live = live.transpose(1, 0, 4, 2, 3).reshape(B, -1, G, R)
    return out, (q, k, v, key_mask, segs, q_offset, window, out, lse, live)


def _flash_bwd(sh, res, dout):
    q, k, v, key_mask, segs, q_offset, window, out, lse, live = res
    B, Tp, G, R, K = q.shape
    dout = dout.astype(jnp.float32)
    delta = jnp.sum(dout * out.astype(jnp.float32), axis=-1)                  # [B, Tp, G, R]

    def k_block(dq, j):
        kj, vj = _slice(k, j * sh.bk, sh.bk, 2), _slice(v, j * sh.bk, sh.bk, 2)

        def body(i, carry):
            dq, dk, dv = carry
            qi, doi = _slice(q, i * sh.bq, sh.bq, 1), _slice(dout, i * sh.bq, sh.bq, 1)
            lsei = _slice(lse, i * sh.bq, sh.bq, 1).transpose(0, 2, 3, 1)[..., None]
            di = _slice(delta, i * sh.bq, sh.bq, 1).transpose(0, 2, 3, 1)[..., None]
            ok = _block_mask(sh, key_mask, segs, q_offset, window, i, j)
            s = _scores(sh, qi, kj)
            p = jnp.where(ok, jnp.exp(jnp.where(ok, s, NEG) - lsei), 0.0)          # [B, G, R, bq, bk]
            dv = dv + jnp.einsum("bgrqs,bqgrk->bgsk", p, doi)
            ds = p * (jnp.einsum("bqgrk,bgsk->bgrqs", doi, vj, preferred_element_type=jnp.float32) - di)
            if sh.softcap:
                ds = ds * (1.0 - jnp.square(s / sh.softcap))
            ds = ds * sh.scale
            dqi = jnp.einsum("bgrqs,bgsk->bqgrk", ds, kj, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_slice_in_dim(dq, _slice(dq, i * sh.bq, sh.bq, 1) + dqi, i * sh.bq, 1)
            return dq, dk + jnp.einsum("bgrqs,bqgrk->bgsk", ds, qi, preferred_element_type=jnp.float32), dv
        zeros = jnp.zeros((B, G, sh.bk, K), jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(*_k_range(sh, q_offset, window, j), body, (dq, zeros, zeros))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(k_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(sh.nk))
    merge = lambda x: x.transpose(1, 2, 0, 3, 4).reshape(B, G, sh.nk * sh.bk, K)
    dk, dv = merge(dk), merge(dv)
    # rows with no allowed key averaged every real value: each real slot gets 1/S of their cotangent
    dead = jnp.sum(jnp.where(live[..., None], 0.0, dout), axis=(1, 3)) / sh.S     # [B, G, K]
    dv = dv + jnp.where(jnp.arange(sh.nk * sh.bk) < sh.S, 1.0, 0.0)[None, None, :, None] * dead[:, :, None]
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------ context parallelism

def context_shards(T: int, S: int, cache) -> int:
    """Devices of the context mesh's ``context`` axis that split this forward, or 1: only a whole-sequence
    forward (no cache, ``S == T``) whose length splits in two chunks per device is split here. Other calls
    (prefill and decode over a cache, odd lengths) leave the sequence to XLA's own partitioner."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "context" not in mesh.axis_names or "context" in mesh.manual_axes:
        return 1
    c = mesh.shape["context"]
    return c if c > 1 and cache is None and S == T and T % (2 * c) == 0 else 1


@functools.lru_cache(maxsize=64)
def balanced_order(T: int, c: int) -> np.ndarray:
    """The slots of a ``T``-slot sequence in the order that puts chunks ``d`` and ``2c-1-d`` of ``2c`` on
    device ``d`` of ``c``: causal attention's early chunks (few keys) pair with its late ones (many)."""
    n = T // (2 * c)
    chunks = [i for d in range(c) for i in (d, 2 * c - 1 - d)]
    return np.concatenate([np.arange(i * n, (i + 1) * n) for i in chunks])


@functools.lru_cache(maxsize=64)
def restore_order(T: int, c: int) -> np.ndarray:
    """The inverse of :func:`balanced_order`: ``x[:, restore_order(T, c)]`` puts balanced slots back in order."""
    return np.argsort(balanced_order(T, c))


def context_parallel(cfg: Config, q, k, v, mask: Mask):
    """Attention over a sequence split across the ``context`` axis in :func:`balanced_order`: inside
    ``shard_map`` each device all-gathers k, v (and the key mask and segment ids), restores slot order,
    and attends its two query chunks at their slots (a traced cache offset for the kernel).

    All-gathered K/V rather than a ring: grouped-query models keep few KV heads (a gathered layer's
    keys and values are ``2 G / H`` of its queries' size), one collective per layer that XLA can overlap,
    and any kernel runs unchanged on the local queries; a ring would save the gathered copy's memory."""
    c, T = mask.context, q.shape[1]
    n = T // (2 * c)
    restore = restore_order(T, c)
    has_segs = mask.q_segments is not None

    def local(q, k, v, key_mask, window, *segs):
        d = jax.lax.axis_index("context")
        gather = lambda x, axis: jnp.take(jax.lax.all_gather(x, "context", axis=axis, tiled=True), restore, axis=axis)
        k, v, key_mask = gather(k, 2), gather(v, 2), gather(key_mask, 1)
        k_seg = gather(segs[1], 1) if has_segs else None
        outs = []
        for half, chunk in enumerate((d, 2 * c - 1 - d)):
            part = slice(half * n, (half + 1) * n)
            m = Mask(key_mask, chunk * n, window, segs[0][:, part] if has_segs else None, k_seg)
            outs.append(_kernel(cfg, q[:, part], k, v, m))
        return jnp.concatenate(outs, axis=1)
    seq, kv = P(None, "context"), P(None, None, "context")
    args = (q, k, v, mask.key_mask, jnp.asarray(mask.window, jnp.int32))
    specs = (seq, kv, kv, seq, P())
    if has_segs:
        args, specs = args + (mask.q_segments, mask.k_segments), specs + (seq, seq)
    return jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(), in_specs=specs, out_specs=seq,
                         axis_names=frozenset({"context"}), check_vma=False)(*args)


# ------------------------------------------------------------------ cuDNN (GPU)

def cudnn(q, k, v, mask: Mask, opts: Options, implementation: str = "cudnn"):
    """``jax.nn.dot_product_attention`` with cuDNN's fused kernel. Its padding is per-row lengths
    on the right, so each row's valid slots (one run: left-padded prompt, then the answer) are
    rolled to the front first and back after; a causal mask and a left-only window keep their
    meaning, since rolling keeps the distances between valid slots. ``implementation="xla"``
    runs the same wrapper through XLA's reference (tests on CPU)."""
    B, T, H, K = q.shape
    key_mask = mask.key_mask.astype(jnp.int32)
    start = jnp.argmax(key_mask, axis=1)
    lengths = jnp.sum(key_mask, axis=1).astype(jnp.int32)
    idx = (start[:, None] + jnp.arange(T)[None]) % T                         # [B, T]
    roll = lambda x, i, axis: jnp.take_along_axis(x, i.reshape(i.shape + (1,) * (x.ndim - 2)), axis=axis)
    qr = roll(q, idx, 1)
    kr, vr = (roll(x.transpose(0, 2, 1, 3), idx, 1) for x in (k, v))          # [B, S, G, K]

    def run(window):
        return jax.nn.dot_product_attention(
            qr, kr, vr, scale=opts.scale, is_causal=True, query_seq_lengths=lengths,
            key_value_seq_lengths=lengths, local_window_size=(window - 1, 0) if window > 0 else None,
            implementation=implementation)
    out = _per_window(run, opts.windows, mask.window)
    back = (jnp.arange(T)[None] - start[:, None]) % T
    return roll(out, back, 1).astype(q.dtype)


def _per_window(fn, windows: tuple, window):
    """``fn(window)`` with a static window: the one value a stack uses, or a ``lax.switch`` over
    them when the (scanned) layer's window is traced."""
    if isinstance(window, (int, np.integer)) or len(windows) == 1:
        return fn(int(window) if isinstance(window, (int, np.integer)) else windows[0])
    index = jnp.searchsorted(jnp.asarray(windows, jnp.int32), window)
    return jax.lax.switch(index, [functools.partial(fn, w) for w in windows])


# ------------------------------------------------------------------ splash (TPU)

_interpret_splash = False   # tests set this (splash_interpreted) to run the kernel interpreted on CPU

SPLASH_BLOCK = 128


class splash_interpreted:
    """Context manager: the splash kernel runs in Pallas interpret mode (CPU tests)."""

    def __enter__(self):
        global _interpret_splash
        self._old, _interpret_splash = _interpret_splash, True

    def __exit__(self, *exc):
        global _interpret_splash
        _interpret_splash = self._old


def splash(q, k, v, mask: Mask, opts: Options):
    """Pallas splash attention (``make_splash_mha``, GQA native), one example at a time under
    ``vmap``: ``CausalMask``/``LocalMask`` at the cache offset, key padding and packed examples
    as ``SegmentIds`` (padding is segment 0), ``attn_logits_soft_cap``. Lengths are padded to
    whole 128-slot blocks. Under a mesh it runs in ``shard_map`` over the batch and head axes."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    B, T, H, K = q.shape
    S = k.shape[2]
    Tp, Sp = -(-T // SPLASH_BLOCK) * SPLASH_BLOCK, -(-S // SPLASH_BLOCK) * SPLASH_BLOCK
    valid = mask.key_mask.astype(jnp.int32)
    k_seg = valid * (1 if mask.k_segments is None else mask.k_segments + 1)
    if mask.q_segments is not None:
        q_seg = mask.q_segments + 1
    else:  # a query's own slot says whether it is padding (no cache offset) or real (over a cache)
        q_seg = jax.lax.dynamic_slice_in_dim(valid, mask.q_offset, T, 1) if mask.q_offset + T <= S else \
            jnp.ones((B, T), jnp.int32)
    pad = lambda x, n, axis: jnp.pad(x, [(0, n if a == axis else 0) for a in range(x.ndim)])
    q_seg, k_seg = pad(q_seg, Tp - T, 1), pad(k_seg, Sp - S, 1)
    qh = pad(q, Tp - T, 1).transpose(0, 2, 1, 3) * jnp.asarray(opts.scale, q.dtype)   # [B, H, Tp, K]
    kp, vp = pad(k, Sp - S, 2), pad(v, Sp - S, 2)
    blocks = sk.BlockSizes(block_q=SPLASH_BLOCK, block_kv=SPLASH_BLOCK, block_kv_compute=SPLASH_BLOCK,
                           block_q_dkv=SPLASH_BLOCK, block_kv_dkv=SPLASH_BLOCK, block_kv_dkv_compute=SPLASH_BLOCK,
                           block_q_dq=SPLASH_BLOCK, block_kv_dq=SPLASH_BLOCK)

    def run(window):
        if window > 0:
            one = sm.LocalMask((Tp, Sp), (window - 1, 0), offset=mask.q_offset)
        else:
            one = sm.CausalMask((Tp, Sp), offset=mask.q_offset)
        kernel = sk.make_splash_mha(sm.MultiHeadMask([one] * H), block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                    attn_logits_soft_cap=opts.softcap or None, interpret=_interpret_splash)
        per_example = lambda qe, ke, ve, qs, ks: kernel(qe, ke, ve, segment_ids=sk.SegmentIds(qs, ks))
        return _on_mesh(jax.vmap(per_example), qh, kp, vp, q_seg, k_seg)
    out = _per_window(run, opts.windows, mask.window)
    return out.transpose(0, 2, 1, 3)[:, :T].astype(q.dtype)


def _on_mesh(fn, q, k, v, q_seg, k_seg):
    """``fn`` on each device's shard (batch over data x fsdp, heads over tensor) under the
    context's mesh; directly without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, q_seg, k_seg)
    batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names) or None
    heads = "tensor" if "tensor" in mesh.axis_names and q.shape[1] % mesh.shape["tensor"] == 0 \
        and k.shape[1] % mesh.shape["tensor"] == 0 else None
    qs, ks = P(batch, heads, None, None), P(batch, heads, None, None)
    seg = P(batch, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(qs, ks, ks, seg, seg), out_specs=qs, check_vma=False)(
        q, k, v, q_seg, k_seg)


__all__ = ["KERNELS", "CROSSOVER", "Mask", "Options", "attend", "choose", "dense", "blockwise", "cudnn", "splash",
           "splash_interpreted", "options", "context_shards", "balanced_order", "restore_order",
           "context_parallel"]
