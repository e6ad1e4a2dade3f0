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

METRICS = ("rougeL", "teacher_logp", "forward_kl", "reverse_kl", "distinct2", "length")


@functools.partial(jax.jit, static_argnums=(0, 2))
def _score(student, params, teacher, teacher_params, prompt_ids, prompt_mask, t_ids, t_mask, s_ids, s_mask):
    """Per row, in the order of ``METRICS[1:]``: the teacher's per-token log-prob of y_s; forward and
    reverse KL on y_t; distinct-2 and length of y_s."""
    s_on_t = sampling.response_logits(student, params, prompt_ids, prompt_mask, t_ids, t_mask)
    t_on_t = sampling.response_logits(teacher, teacher_params, prompt_ids, prompt_mask, t_ids, t_mask)
    t_on_s = sampling.response_logits(teacher, teacher_params, prompt_ids, prompt_mask, s_ids, s_mask)
    total, n = losses.sequence_logprobs(t_on_s, s_ids, s_mask)
    return (total / jnp.maximum(n, 1), losses.forward_kl(s_on_t, t_on_t, t_mask),
            losses.reverse_kl(s_on_t, t_on_t, t_mask), distinct_2(s_ids, s_mask), s_mask.sum(1))


def measure(student, params, teacher, teacher_params, data, tokenizer, *, batch_size, max_new_tokens, eos_token_id,
            pad_token_id, mesh=None) -> dict:
    """The metrics of ``METRICS`` for ``params`` on ``data`` (responses = the teacher's answers)."""
    rows = {k: [] for k in METRICS}
    n = len(data)
    for i in range(0, n, batch_size):
        sl = np.arange(i, min(i + batch_size, n))
        idx = np.concatenate([sl, np.full(batch_size - len(sl), sl[0])])
        p, m, t_ids, t_mask = put_batch((data.prompt_ids[idx], data.prompt_mask[idx], data.response_ids[idx],
                                         data.response_mask[idx]), mesh)
        s_ids, s_mask = sampling.generate_stepwise(student, params, p, m, jax.random.PRNGKey(0),
                                                   max_new_tokens=max_new_tokens, greedy=True,
                                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        out = _score(student, params, teacher, teacher_params, p, m, t_ids, t_mask, s_ids, s_mask)
        for k, v in zip(METRICS[1:], out):
            rows[k].extend(to_host(v)[: len(sl)].tolist())
        texts = decode_responses(tokenizer, to_host(s_ids), to_host(s_mask), eos_token_id)[: len(sl)]
        rows["rougeL"].extend(rouge_l(a, data.references[j]) for a, j in zip(texts, sl))
    return {k: float(np.mean(v)) for k, v in rows.items()}
