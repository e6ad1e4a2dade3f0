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
def _score(student, params, teacher, teacher_params, arrays, t_on_t, answers):
    """Per row, in the order of ``METRICS[1:]``: the teacher's per-token log-prob of y_s; forward and
    reverse KL on y_t (``t_on_t``: the teacher's logits there, the same for every student); distinct-2
    and length of y_s. ``arrays``: the batch's (prompt ids, prompt mask, y_t ids, y_t mask); ``answers``:
    y_s (ids, mask)."""
    prompt_ids, prompt_mask, t_ids, t_mask = arrays
    s_ids, s_mask = answers
    s_on_t = sampling.response_logits(student, params, prompt_ids, prompt_mask, t_ids, t_mask)
    t_on_s = sampling.response_logits(teacher, teacher_params, prompt_ids, prompt_mask, s_ids, s_mask)
    total, n = losses.sequence_logprobs(t_on_s, s_ids, s_mask)
    return (total / jnp.maximum(n, 1), losses.forward_kl(s_on_t, t_on_t, t_mask),
            losses.reverse_kl(s_on_t, t_on_t, t_mask), distinct_2(s_ids, s_mask), s_mask.sum(1))


class Measure:
    """The metrics of one held-out set; the teacher's logits on its own answers are computed
    once here, since they are the same for every student."""

    def __init__(self, teacher, teacher_params, data, tokenizer, opts: sampling.Sampling, *, batch_size, mesh=None,
                 full=True):
        """``opts``: the student's length, EOS and padding (answers are greedy)."""
        self.teacher, self.teacher_params, self.data, self.tokenizer = teacher, teacher_params, data, tokenizer
        self.gen = opts.replace(greedy=True)
        self.eos, self.full = opts.eos_token_id, full
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
        for sl, arrays, t_on_t in self.batches:
            s_ids, s_mask = sampling.generate_stepwise(student, params, *arrays[:2], jax.random.PRNGKey(0), self.gen)
            if self.full:
                out = _score(student, params, self.teacher, self.teacher_params, arrays, t_on_t, (s_ids, s_mask))
                for k, v in zip(METRICS[1:], out):
                    rows[k].extend(to_host(v)[: len(sl)].tolist())
            texts = decode_responses(self.tokenizer, to_host(s_ids), to_host(s_mask), self.eos)[: len(sl)]
            rows["rougeL"].extend(rouge_l(a, self.data.references[j]) for a, j in zip(texts, sl))
        return {k: float(np.mean(v)) for k, v in rows.items()}


CROSS_METRICS = ("rougeL", "teacher_logp", "distinct2", "length", "student_nll")


def word_distinct_2(text: str) -> float:
    """Distinct word bigrams / word bigrams (1 when none): comparable across tokenizers."""
    words = text.split()
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


@functools.partial(jax.jit, static_argnums=(0,))
def _mean_logp(decode, params, prompt_ids, prompt_mask, ids, mask):
    """Per row: the mean per-token log-prob of ``ids`` (vocabulary projected in chunks)."""
    logps, mask = sampling.score(decode, params, prompt_ids, prompt_mask, ids, mask)
    return (logps * mask).sum(1) / jnp.maximum(mask.sum(1), 1)


class CrossMeasure:
    """``CROSS_METRICS`` of a student whose tokenizer is not the teacher's: RougeL of its greedy
    answer (as text) against the teacher's; the teacher's per-token log-prob of that answer,
    encoded in the teacher's tokens after the teacher's own prompt; distinct-2 and length in
    words (token counts differ between the tokenizers); the student's NLL per token of its own
    answer (the reward-hacking sign: a student that grows sure of answers the teacher rejects)."""

    def __init__(self, teacher, data, teacher_prompts, to_teacher, gen, *, batch_size, mesh=None, full=True):
        """``teacher``: (decoder, params); ``data``/``teacher_prompts``: the set in the student's and
        the teacher's tokens; ``to_teacher``: a :class:`cross_tokenizer.Retokenizer` from the
        student's tokenizer; ``gen``: the student's ``sampling.Sampling`` (answers are greedy)."""
        (self.teacher, self.teacher_params), self.data, self.tokenizer = teacher, data, to_teacher.src
        self.to_teacher, self.eos, self.full = to_teacher, gen.eos_token_id, full
        self.gen = gen.replace(greedy=True)
        self.batches = [(sl, put_batch((data.prompt_ids[idx], data.prompt_mask[idx]), mesh),
                         put_batch((teacher_prompts.prompt_ids[idx], teacher_prompts.prompt_mask[idx]), mesh))
                        for _, sl, idx in static_batches(len(data), batch_size)]
        self.mesh, self.batch_size = mesh, batch_size

    def __call__(self, student, params) -> dict:
        """``CROSS_METRICS`` for ``params`` (RougeL only when ``full=False``)."""
        rows = {k: [] for k in (CROSS_METRICS if self.full else CROSS_METRICS[:1])}
        for sl, (p, m), (tp, tm) in self.batches:
            s_ids, s_mask = sampling.generate_stepwise(student, params, p, m, jax.random.PRNGKey(0), self.gen)
            ids, mask = to_host(s_ids), to_host(s_mask)
            texts = decode_responses(self.tokenizer, ids, mask, self.eos)[: len(sl)]
            rows["rougeL"].extend(rouge_l(a, self.data.references[j]) for a, j in zip(texts, sl))
            if not self.full:
                continue
            t_ids, t_mask = put_batch(self.to_teacher(ids, mask), self.mesh)
            rows["teacher_logp"].extend(to_host(_mean_logp(self.teacher, self.teacher_params, tp, tm, t_ids,
                                                           t_mask))[: len(sl)].tolist())
            rows["student_nll"].extend((-to_host(_mean_logp(student, params, p, m, s_ids, s_mask)))[: len(sl)].tolist())
            rows["distinct2"].extend(word_distinct_2(t) for t in texts)
            rows["length"].extend(len(t.split()) for t in texts)
        return {k: float(np.mean(v)) for k, v in rows.items()}

    def teacher_row(self, targets) -> dict:
        """The teacher's own row: its greedy answers (``targets``, in its tokens) measured the same way."""
        rows = {k: [] for k in CROSS_METRICS}
        for _, sl, idx in static_batches(len(targets), self.batch_size):
            arrays = put_batch((targets.prompt_ids[idx], targets.prompt_mask[idx], targets.response_ids[idx],
                                targets.response_mask[idx]), self.mesh)
            logp = to_host(_mean_logp(self.teacher, self.teacher_params, *arrays))[: len(sl)]
            rows["teacher_logp"].extend(logp.tolist())
            rows["student_nll"].extend((-logp).tolist())
        texts = targets.references
        rows["rougeL"] = [rouge_l(t, t) for t in texts]
        rows["distinct2"] = [word_distinct_2(t) for t in texts]
        rows["length"] = [len(t.split()) for t in texts]
        return {k: float(np.mean(v)) for k, v in rows.items()}
