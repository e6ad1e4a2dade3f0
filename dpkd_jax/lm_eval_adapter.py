"""lm-evaluation-harness on our JAX models: an lm-eval ``LM`` (:class:`JaxLM`) and the task runner.

:class:`JaxLM` answers lm-eval's three requests with our decoders, on TPU, GPU or CPU, without torch:

- ``loglikelihood`` (through lm-eval's ``TemplateLM``, which tokenizes the pairs as its ``hf`` model does):
  ``Σ_i log p(cont_i | ctx, cont_<i)`` and whether every continuation token is the argmax, from one forward
  per row, with the vocabulary projection in chunks (``losses.token_map``: no ``[B, T, V]`` logits);
- ``loglikelihood_rolling``: the same over lm-eval's disjoint rolling windows of ``max_length`` tokens;
- ``generate_until``: our sampler (greedy unless the task samples), cut at the task's stop strings.

Rows are sorted by length and padded to a few widths (powers of two) at a fixed batch size, so each width
compiles once. lm-eval is an optional extra (``pip install 'dpkd_jax[lm_eval]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval import evaluator, utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.tasks import TaskManager
from tqdm import tqdm

from . import losses, sampling, sharding
from .errors import InputError

MIN_WIDTH = 16


def width_of(n: int, cap: int) -> int:
    """The padded width of a row of ``n`` tokens: the next power of two (at least ``MIN_WIDTH``), at most ``cap``."""
    return min(cap, max(MIN_WIDTH, 1 << (max(n, 1) - 1).bit_length()))


@functools.partial(jax.jit, static_argnums=0)
def _scores(decode, params, tokens, mask, targets, scored):
    """(``Σ_i scored_i log p(targets_i)`` ``[B]``, every scored target the argmax ``[B]``): tokens, mask,
    targets, scored ``[B, T]``; right-padded rows, positions from 0."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden = decode.hidden(params, tokens, positions, mask)

    def per_chunk(logits, y):
        lp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(lp, y[..., None], -1)[..., 0], jnp.argmax(lp, -1) == y
    logp, greedy = losses.token_map(per_chunk, (hidden,), (functools.partial(decode.head, params),), targets)
    return jnp.sum(jnp.where(scored, logp, 0.0), -1), jnp.all(greedy | ~scored, -1)


class JaxLM(TemplateLM):
    """An lm-eval ``LM`` over a decoder and its params (``models.split``), with the export's tokenizer.

    ``max_length``: the longest row (0: the model's ``max_positions``); longer inputs lose their left end, as
    lm-eval's ``hf`` model does, and are counted in :attr:`truncated` (logged). ``mesh``: batches split over
    its batch axes."""

    def __init__(self, decode, params, tokenizer, *, batch_size=8, max_length=0, max_gen_toks=256, mesh=None,
                 seed=0):
        super().__init__()
        self.decode, self.params, self.tokenizer, self.mesh = decode, params, tokenizer, mesh
        self.batch_size = int(batch_size)
        self.max_length = int(max_length) or int(decode.config.max_positions)
        self.max_gen_toks, self.seed, self.truncated = int(max_gen_toks), int(seed), 0

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:  # as lm-eval's hf model: BOS where the tokenizer has one, else EOS
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        """The tokenizer's own special-token default, as lm-eval's ``hf`` model (and no second BOS)."""
        kw = {} if add_special_tokens is None else {"add_special_tokens": bool(add_special_tokens)}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            kw["add_special_tokens"] = False
        return self.tokenizer.encode(string, **kw)

    def tok_decode(self, tokens, **kwargs):
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        """lm-eval's ``(request, context ids, continuation ids)`` -> ``(log-prob, is greedy)``, in order."""
        rows = []
        for _, ctx, cont in requests:
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            self.truncated += len(ctx) + len(cont) > self.max_length + 1
            rows.append((whole[:-1], whole[1:], len(cont)))
        if self.truncated:
            logging.warning("lm-eval: %d inputs so far were longer than max_length=%d tokens and lost their left "
                            "end (as lm-eval's hf model does)", self.truncated, self.max_length)
        out = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for start in tqdm(range(0, len(order), self.batch_size), desc="lm-eval loglikelihood", leave=False,
                          disable=disable_tqdm):
            idx = order[start:start + self.batch_size]
            for i, s, g in zip(idx, *self._score_batch([rows[i] for i in idx])):
                out[i] = (float(s), bool(g))
        return out

    def _score_batch(self, rows):
        """Padded arrays of up to ``batch_size`` rows (the last row repeated to fill), scored on the device."""
        width = width_of(max(len(r[0]) for r in rows), self.max_length)
        arrays = np.zeros((4, self.batch_size, width), np.int32)
        for b in range(self.batch_size):
            inp, tgt, n_cont = rows[min(b, len(rows) - 1)]
            arrays[0, b, :len(inp)], arrays[1, b, :len(inp)] = inp, 1
            arrays[2, b, :len(tgt)], arrays[3, b, len(tgt) - n_cont:len(tgt)] = tgt, 1
        tokens, mask, targets, scored = sharding.put_batch(tuple(arrays), self.mesh)
        s, g = _scores(self.decode, self.params, tokens, mask, targets, scored.astype(bool))
        return np.asarray(sharding.to_host(s))[:len(rows)], np.asarray(sharding.to_host(g))[:len(rows)]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """A whole text's log-likelihood: the sum over lm-eval's disjoint windows (the first after the prefix token)."""
        windows, owner = [], []
        for k, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(k)
        totals = np.zeros(len(requests))
        for k, (s, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[k] += s
        return [float(t) for t in totals]

    def generate_until(self, requests, disable_tqdm=False):
        """Each context's continuation, greedy unless ``do_sample`` (then at the task's temperature), cut at the
        first of the task's ``until`` strings; contexts with the same settings run ``batch_size`` at a time."""
        groups = {}
        for k, req in enumerate(requests):
            context, kw = req.args
            groups.setdefault(json.dumps(kw, sort_keys=True, default=str), []).append((k, context))
        out = [None] * len(requests)
        for key, items in groups.items():
            options = Generation.of(json.loads(key), self)
            items.sort(key=lambda it: -len(it[1]))
            for start in tqdm(range(0, len(items), self.batch_size), desc="lm-eval generate", leave=False,
                              disable=disable_tqdm):
                batch = items[start:start + self.batch_size]
                for (k, _), text in zip(batch, self._generate_batch([c for _, c in batch], options)):
                    out[k] = text
        return out

    def _generate_batch(self, contexts, g: "Generation"):
        keep = self.max_length - g.max_new_tokens
        rows = [self.tok_encode(c)[-keep:] for c in contexts]
        width = width_of(max(map(len, rows)), keep)
        prompt, mask = np.zeros((2, self.batch_size, width), np.int32)
        for b in range(self.batch_size):
            ids = rows[min(b, len(rows) - 1)]
            prompt[b, width - len(ids):], mask[b, width - len(ids):] = ids, 1  # left-padded, as the sampler reads
        prompt, mask = sharding.put_batch((prompt, mask), self.mesh)
        toks, live = sampling.generate_stepwise(
            self.decode, self.params, prompt, mask, jax.random.PRNGKey(self.seed),
            sampling.Sampling(g.max_new_tokens, g.temperature, eos_token_id=self.eot_token_id,
                              pad_token_id=self.eot_token_id, greedy=g.greedy))
        toks, live = np.asarray(sharding.to_host(toks)), np.asarray(sharding.to_host(live))
        texts = [self.tok_decode([int(t) for t, m in zip(toks[b], live[b]) if m and t != self.eot_token_id])
                 for b in range(len(rows))]
        return [t[:min((t.find(s) for s in g.until if s and s in t), default=len(t))] for t in texts]


@dataclasses.dataclass(frozen=True)
class Generation:
    """A task's generation settings (lm-eval's ``gen_kwargs``) as our sampler takes them."""
    until: tuple
    max_new_tokens: int
    greedy: bool
    temperature: float

    @classmethod
    def of(cls, kw: dict, lm: JaxLM) -> "Generation":
        until = kw.get("until") or [lm.tok_decode([lm.eot_token_id])]
        temperature = float(kw.get("temperature", 0.0) or 0.0)
        return cls(tuple([until] if isinstance(until, str) else until), int(kw.get("max_gen_toks", lm.max_gen_toks)),
                   not kw.get("do_sample", False) or temperature == 0.0, temperature or 1.0)


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str = "") -> TaskManager:
    """lm-eval's task index, with the YAML tasks under ``include_path`` ("" : its own tasks only); built once
    per path (it reads every task YAML lm-eval ships: seconds)."""
    return TaskManager(include_path=include_path or None)


def check_tasks(tasks, include_path: str = "", field: str = "--tasks") -> list[str]:
    """``tasks`` (a comma list or a sequence) as a list of names lm-eval knows; else one line naming the first
    unknown one, the flag or field, and the nearest known names."""
    import difflib
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise InputError(f"{field}: no task given")
    if include_path and not os.path.isdir(include_path):
        raise InputError(f"{field}: the include path {include_path!r} is not a directory")
    known = task_manager(include_path).all_tasks
    for n in names:
        if n not in known:
            near = difflib.get_close_matches(n, known, n=3)
            raise InputError(f"{field}: lm-eval knows no task {n!r}" + (f" (did you mean {', '.join(near)}?)" if near
                                                                         else ""))
    return names


def run_tasks(lm: JaxLM, tasks, *, include_path="", limit=0, num_fewshot=None) -> dict:
    """lm-eval's ``simple_evaluate`` on ``lm``: its results dict (``results``, ``versions``, ``n-shot`` ...)."""
    return evaluator.simple_evaluate(model=lm, tasks=list(tasks), task_manager=task_manager(include_path),
                                     limit=limit or None, num_fewshot=num_fewshot, log_samples=False,
                                     bootstrap_iters=0)


def write(results: dict, out_dir: str) -> str:
    """``lm_eval.json`` (the scores) and ``lm_eval.md`` (lm-eval's table) in ``out_dir``; returns the table."""
    table = lm_utils.make_table(results)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "lm_eval.json"), "w") as f:
        json.dump({k: results[k] for k in ("results", "versions", "n-shot", "config") if k in results}, f, indent=1,
                  default=str)
    with open(os.path.join(out_dir, "lm_eval.md"), "w") as f:
        f.write(table + "\n")
    return table
