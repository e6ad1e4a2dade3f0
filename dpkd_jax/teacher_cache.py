"""Offline teacher caches, computed once per training set and reused across runs:

* ``teacher_samples``: y_t for every prompt (sequence-level methods, ``gen.teacher_mode=offline``);
* ``teacher_topk``: the teacher's top-k tokens and log-probs at every gold-response position
  (token-level methods, ``teacher.topk=k``), so the train step runs without the teacher;
* ``teacher_sampled``: RS-KD's cache (``teacher.cache=sampled``): U draws from the teacher per
  position, duplicates merged into counts, an unbiased forward-KL target (5 bytes per entry).

Each cache is keyed by a sha256 of what made it (data, settings, teacher architecture and
a fingerprint of its weights), rebuilt when stale, and written whole then renamed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from . import losses, sampling
from .sharding import put_batch, to_host


def cache_key(settings: dict, teacher, teacher_params, *arrays) -> str:
    """sha256 of ``arrays`` (the data), ``settings``, the teacher's architecture and a fingerprint of
    its weights (sum and sum of squares of each array, computed on device)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps({**settings, "teacher": repr(teacher)}, sort_keys=True, default=str).encode())
    fp = jax.jit(lambda p: {k: jnp.stack([v.astype(jnp.float32).sum(), jnp.square(v.astype(jnp.float32)).sum()])
                            for k, v in p.items()})(teacher_params)
    h.update(np.concatenate([to_host(fp[k]) for k in sorted(fp)]).astype(np.float32).tobytes())
    return h.hexdigest()


def cached(path, key, what, compute) -> dict:
    """The arrays at ``path`` if its key matches, else ``compute()`` written there atomically."""
    if path and os.path.isfile(path):
        z = np.load(path)
        if "key" in z and str(z["key"]) == key:
            logging.info("%s: reusing %s", what, path)
            return {k: z[k] for k in z.files if k != "key"}
        print(f"{what}: {path} was made by another config, teacher or data; rebuilding it")
    out = compute()
    if path and jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp.npz"  # written whole, then renamed: never a half cache
        np.savez(tmp, key=np.asarray(key), **out)
        os.replace(tmp, path)
    return out


def static_batches(n, bs):
    """Static-shape index batches over n examples (the last one padded with row 0):
    ``(start, the rows, the padded indices)``."""
    for i in range(0, n, bs):
        sl = np.arange(i, min(i + bs, n))
        yield i, sl, np.concatenate([sl, np.zeros(bs - len(sl), int)])


def generate_all(model, params, data, batch_size, opts, *, seed, desc, mesh=None):
    """Responses to every prompt of ``data`` (a ``data.Tokenized``) in static-shape batches, the
    batch starting at row i drawn with ``PRNGKey(seed + i)`` under ``opts`` (a ``sampling.Sampling``):
    ``(ids, mask)`` ``[n, N]`` on the host."""
    ids, mask = [], []
    for i, sl, idx in tqdm(list(static_batches(len(data), batch_size)), desc=desc, leave=False):
        p_ids, p_mask = put_batch((data.prompt_ids[idx], data.prompt_mask[idx]), mesh)
        t, m = sampling.generate_stepwise(model, params, p_ids, p_mask, jax.random.PRNGKey(seed + i), opts)
        ids.append(to_host(t)[: len(sl)])
        mask.append(to_host(m)[: len(sl)])
    return np.concatenate(ids), np.concatenate(mask)


def teacher_samples(spec, seed, bs, teacher, teacher_params, data, path=None, mesh=None) -> dict:
    """y_t for every training prompt: ``{"teacher_ids", "teacher_mask"}`` ``[n, N]``, drawn with
    the :class:`specs.Sampling` ``spec`` in batches of ``bs`` from ``seed``."""
    key = cache_key({"gen": dataclasses.asdict(spec), "seed": seed, "batch": bs}, teacher, teacher_params,
                    data.prompt_ids, data.prompt_mask)

    def compute():
        ids, mask = generate_all(teacher, teacher_params, data, bs, spec, seed=seed, desc="teacher samples (offline)",
                                 mesh=mesh)
        return {"teacher_ids": ids, "teacher_mask": mask}
    return cached(path, key, "teacher samples", compute)


def _topk(teacher, teacher_params, prompt_ids, prompt_mask, response_ids, response_mask, k):
    h = sampling.response_hidden(teacher, teacher_params, prompt_ids, prompt_mask, response_ids, response_mask)
    return losses.chunked_topk_logprobs(h, functools.partial(teacher.head, teacher_params), k)


_topk_of_batch = jax.jit(_topk, static_argnums=(0, 6))


def teacher_topk(bs, teacher, teacher_params, data, k, path=None, mesh=None) -> dict:
    """The teacher's top-k ids and log-probs (temperature 1, normalised over the full vocabulary)
    at every gold-response position: ``{"teacher_topk_ids" int32, "teacher_topk_logps" float32}``
    ``[n, R, k]`` (k x 8 bytes per token), computed in batches of ``bs``."""
    key = cache_key({"topk": k, "batch": bs}, teacher, teacher_params, data.prompt_ids, data.prompt_mask,
                    data.response_ids, data.response_mask)

    def compute():
        ids, lps = [], []
        for _, sl, idx in tqdm(list(static_batches(len(data), bs)), desc=f"teacher top-{k} (offline)", leave=False):
            arrays = put_batch((data.prompt_ids[idx], data.prompt_mask[idx], data.response_ids[idx],
                                data.response_mask[idx]), mesh)
            i, lp = _topk_of_batch(teacher, teacher_params, *arrays, k)
            ids.append(to_host(i)[: len(sl)])
            lps.append(to_host(lp)[: len(sl)])
        return {"teacher_topk_ids": np.concatenate(ids), "teacher_topk_logps": np.concatenate(lps)}
    return cached(path, key, f"teacher top-{k}", compute)


def _sampled(teacher, teacher_params, prompt_ids, prompt_mask, response_ids, response_mask, seeds, n):
    h = sampling.response_hidden(teacher, teacher_params, prompt_ids, prompt_mask, response_ids, response_mask)

    def draw(logits, s):  # one key per position, so a row's draws do not depend on its batch or chunk
        keys = jax.vmap(jax.random.key)(s[0].reshape(-1))
        ids, counts = jax.vmap(lambda lg, k: losses.tokenwise.sample_tokens(lg, k, n))(
            logits[0].reshape(-1, logits[0].shape[-1]), keys)
        shape = (*logits[0].shape[:-1], n)
        return ids.reshape(shape), counts.reshape(shape)
    return losses.token_map(draw, (h,), (functools.partial(teacher.head, teacher_params),), (seeds,))


_sampled_of_batch = jax.jit(_sampled, static_argnums=(0, 7))


def teacher_sampled(bs, teacher, teacher_params, data, n, seed, path=None, mesh=None) -> dict:
    """RS-KD's sampled cache at every gold-response position: ``n`` draws with replacement from the
    teacher (temperature 1), duplicates merged: ``{"teacher_sampled_ids" int32, "teacher_sampled_counts"
    uint8}`` ``[rows, R, n]`` (n x 5 bytes per token), each position drawn with its own key from ``seed``."""
    if not 0 < n < 256:
        raise ValueError(f"teacher.topk: {n} draws per position do not fit the cache's uint8 counts (1..255)")
    key = cache_key({"sampled": n, "seed": seed, "batch": bs}, teacher, teacher_params, data.prompt_ids,
                    data.prompt_mask, data.response_ids, data.response_mask)
    R = data.response_ids.shape[1]

    def compute():
        ids, counts = [], []
        for i, sl, idx in tqdm(list(static_batches(len(data), bs)), desc=f"teacher sampled-{n} (offline)",
                               leave=False):
            seeds = (seed * 1_000_003 + (idx[:, None] * R + np.arange(R)[None])).astype(np.uint32)
            arrays = put_batch((data.prompt_ids[idx], data.prompt_mask[idx], data.response_ids[idx],
                                data.response_mask[idx], seeds), mesh)
            d, c = _sampled_of_batch(teacher, teacher_params, *arrays, n)
            ids.append(to_host(d)[: len(sl)])
            counts.append(to_host(c)[: len(sl)].astype(np.uint8))
        return {"teacher_sampled_ids": np.concatenate(ids), "teacher_sampled_counts": np.concatenate(counts)}
    return cached(path, key, f"teacher sampled-{n}", compute)
