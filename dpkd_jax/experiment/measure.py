"""What the experiment reports for one student on held-out prompts (each a mean over the
prompts): RougeL of its greedy answer against the teacher's; the teacher's per-token
log-prob of that answer; per-token forward and reverse KL between teacher and student on
the teacher's answers; distinct-2 and length (tokens) of the student's answers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses, sampling
from ..evaluate import decode_responses, rouge_l
from ..objectives import distinct_2
from ..sharding import put_batch, to_host
from ..teacher_cache import static_batches

METRICS = ("rougeL", "teacher_logp", "forward_kl", "reverse_kl", "distinct2", "length")


@functools.partial(jax.jit, static_argnums=(0, 2))
def _score(student, params, teacher, teacher_params, prompt_ids, prompt_mask, t_on_t, t_ids, t_mask, s_ids, s_mask):
    """Per row, in the order of ``METRICS[1:]``: the teacher's per-token log-prob of y_s; forward and
    reverse KL on y_t (``t_on_t``: the teacher's logits there, the same for every student); distinct-2
    and length of y_s."""
    s_on_t = sampling.response_logits(student, params, prompt_ids, prompt_mask, t_ids, t_mask)
    t_on_s = sampling.response_logits(teacher, teacher_params, prompt_ids, prompt_mask, s_ids, s_mask)
    total, n = losses.sequence_logprobs(t_on_s, s_ids, s_mask)
    return (total / jnp.maximum(n, 1), losses.forward_kl(s_on_t, t_on_t, t_mask),
            losses.reverse_kl(s_on_t, t_on_t, t_mask), distinct_2(s_ids, s_mask), s_mask.sum(1))


class Measure:
    """The metrics of one held-out set; the teacher's logits on its own answers are computed
    once here, since they are the same for every student."""

    def __init__(self, teacher, teacher_params, data, tokenizer, *, batch_size, max_new_tokens, eos_token_id,
                 pad_token_id, mesh=None, full=True):
        self.teacher, self.teacher_params, self.data, self.tokenizer = teacher, teacher_params, data, tokenizer
        self.gen = dict(max_new_tokens=max_new_tokens, greedy=True, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id)
        self.eos, self.full = eos_token_id, full
        self.batches = []
        for _, sl, idx in static_batches(len(data), batch_size):
            arrays = put_batch((data.prompt_ids[idx], data.prompt_mask[idx], data.response_ids[idx],
                                data.response_mask[idx]), mesh)
            t_on_t = (sampling.response_logits(teacher, teacher_params, arrays[0], arrays[1], arrays[2], arrays[3])
                      if full else None)
            self.batches.append((sl, arrays, t_on_t))

    def __call__(self, student, params) -> dict:
        """``METRICS`` for ``params`` (RougeL only when ``full=False``)."""
        rows = {k: [] for k in (METRICS if self.full else METRICS[:1])}
        for sl, (p, m, t_ids, t_mask), t_on_t in self.batches:
            s_ids, s_mask = sampling.generate_stepwise(student, params, p, m, jax.random.PRNGKey(0), **self.gen)
            if self.full:
                out = _score(student, params, self.teacher, self.teacher_params, p, m, t_on_t, t_ids, t_mask,
                             s_ids, s_mask)
                for k, v in zip(METRICS[1:], out):
                    rows[k].extend(to_host(v)[: len(sl)].tolist())
            texts = decode_responses(self.tokenizer, to_host(s_ids), to_host(s_mask), self.eos)[: len(sl)]
            rows["rougeL"].extend(rouge_l(a, self.data.references[j]) for a, j in zip(texts, sl))
        return {k: float(np.mean(v)) for k, v in rows.items()}
