"""The teacher's responses (greedy, chat template): what SFT trains on and what evaluation
compares against. Computed once per prompt set and cached like the teacher samples."""

from __future__ import annotations

import numpy as np

from .. import data as data_lib
from .. import sampling, teacher_cache
from ..evaluate import decode_responses


def prompts_only(records, tokenizer, *, max_prompt_length, max_new_tokens, pad_token_id, template, source):
    """Left-padded prompts of ``records`` (their responses are not used)."""
    report = data_lib.Report(source)
    report.read = len(records)
    d = data_lib.tokenize([dict(r, response="") for r in records], tokenizer, report=report,
                          max_prompt_length=max_prompt_length, max_length=max_prompt_length + max_new_tokens,
                          pad_token_id=pad_token_id, template=template)
    return d, report


def greedy_targets(teacher, teacher_params, prompts: data_lib.Tokenized, tokenizer, opts: sampling.Sampling, *,
                   batch_size, path=None, mesh=None) -> data_lib.Tokenized:
    """``prompts`` with the teacher's greedy responses (``opts``' length, EOS and padding; EOS included when
    reached) as the responses and their text as the references; cached at ``path`` (hash-checked)."""
    opts = opts.replace(greedy=True)
    settings = {"what": "greedy targets", "max_new_tokens": opts.max_new_tokens, "eos": opts.eos_token_id}
    key = teacher_cache.cache_key(settings, teacher, teacher_params, prompts.prompt_ids, prompts.prompt_mask)

    def compute():
        ids, mask = teacher_cache.generate_all(teacher, teacher_params, prompts, batch_size, opts, seed=0,
                                               desc="teacher targets", mesh=mesh)
        return {"ids": ids.astype(np.int32), "mask": mask.astype(np.int32)}

    z = teacher_cache.cached(path, key, "teacher targets", compute)
    refs = decode_responses(tokenizer, z["ids"], z["mask"], opts.eos_token_id)
    return data_lib.Tokenized(prompts.prompt_ids, prompts.prompt_mask, z["ids"], z["mask"], refs,
                              list(prompts.prompts))
