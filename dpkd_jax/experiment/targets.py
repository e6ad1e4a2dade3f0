"""The teacher's responses (greedy, chat template): what SFT trains on and what evaluation
compares against. Computed once per prompt set and cached like the teacher samples."""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm

from .. import data as data_lib
from .. import sampling, teacher_cache
from ..evaluate import decode_responses
from ..sharding import put_batch, to_host


def prompts_only(records, tokenizer, *, max_prompt_length, max_new_tokens, pad_token_id, template, source):
    """Left-padded prompts of ``records`` (their responses are not used)."""
    report = data_lib.Report(source)
    report.read = len(records)
    d = data_lib.tokenize([dict(r, response="") for r in records], tokenizer, report=report,
                          max_prompt_length=max_prompt_length, max_length=max_prompt_length + max_new_tokens,
                          pad_token_id=pad_token_id, template=template)
    return d, report


def greedy_targets(teacher, teacher_params, prompts: data_lib.Tokenized, tokenizer, *, max_new_tokens, batch_size,
                   eos_token_id, pad_token_id, path=None, mesh=None) -> data_lib.Tokenized:
    """``prompts`` with the teacher's greedy responses (EOS included when reached) as the
    responses and their text as the references; cached at ``path`` (hash-checked)."""
    settings = {"what": "greedy targets", "max_new_tokens": max_new_tokens, "eos": eos_token_id}
    key = teacher_cache.cache_key(settings, teacher, teacher_params, prompts.prompt_ids, prompts.prompt_mask)

    def compute():
        ids, masks = [], []
        n = len(prompts)
        for i in tqdm(range(0, n, batch_size), desc="teacher targets", leave=False):
            sl = np.arange(i, min(i + batch_size, n))
            idx = np.concatenate([sl, np.full(batch_size - len(sl), sl[0])])
            p, m = put_batch((prompts.prompt_ids[idx], prompts.prompt_mask[idx]), mesh)
            toks, tm = sampling.generate_stepwise(teacher, teacher_params, p, m, jax.random.PRNGKey(0),
                                                  max_new_tokens=max_new_tokens, greedy=True,
                                                  eos_token_id=eos_token_id, pad_token_id=pad_token_id)
            ids.append(to_host(toks)[: len(sl)])
            masks.append(to_host(tm)[: len(sl)])
        return {"ids": np.concatenate(ids).astype(np.int32), "mask": np.concatenate(masks).astype(np.int32)}

    z = teacher_cache.cached(path, key, "teacher targets", compute)
    refs = decode_responses(tokenizer, z["ids"], z["mask"], eos_token_id)
    return data_lib.Tokenized(prompts.prompt_ids, prompts.prompt_mask, z["ids"], z["mask"], refs,
                              list(prompts.prompts))
