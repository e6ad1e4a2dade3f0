"""Generation-based evaluation: RougeL and exact match, as the paper computes them."""

from __future__ import annotations

import json
import os
import string

import jax
import numpy as np
from rouge_score import rouge_scorer
from tqdm import tqdm

from . import sampling, sharding

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
BUCKETS = (("<=30", 0, 30), ("30-70", 31, 69), (">=70", 70, 10**9))


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation, articles kept (method.md): lower-case, strip
    punctuation, collapse white space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    return " ".join(s.split())


def exact_match(prediction: str, references) -> float:
    refs = [references] if isinstance(references, str) else references
    return 100.0 * max(float(normalize_answer(prediction) == normalize_answer(r)) for r in refs)


def rouge_l(prediction: str, references) -> float:
    refs = [references] if isinstance(references, str) else references
    return 100.0 * max(_SCORER.score(r, prediction)["rougeL"].fmeasure for r in refs)


def bucket_of(reference: str) -> str:
    n = len(reference.split())
    return next(name for name, lo, hi in BUCKETS if lo <= n <= hi)


def final_answer(text: str) -> str:
    """A generation's answer: the text after a closing ``</think>`` (reasoning traces), else all of it."""
    return text.rsplit("</think>", 1)[-1].strip() if "</think>" in text else text


def score_answers(predictions, references):
    """Mean RougeL and EM (×100), overall and per gold-length bucket; a prediction's thinking block is not
    scored (:func:`final_answer`)."""
    rows = [(rouge_l(final_answer(p), r), exact_match(final_answer(p), r), bucket_of(r if isinstance(r, str) else r[0]))
            for p, r in zip(predictions, references)]
    out = {"rougeL": float(np.mean([r[0] for r in rows])), "exact_match": float(np.mean([r[1] for r in rows])),
           "n": len(rows)}
    for name, _, _ in BUCKETS:
        sel = [r for r in rows if r[2] == name]
        if sel:
            out[f"rougeL_{name}"] = float(np.mean([r[0] for r in sel]))
            out[f"n_{name}"] = len(sel)
    return out


def decode_responses(tokenizer, tokens, mask, eos_token_id):
    """Text of each generated row, cut at EOS (the EOS itself dropped)."""
    out = []
    for row, m in zip(np.asarray(tokens), np.asarray(mask)):
        ids = [int(t) for t, k in zip(row, m) if k and t != eos_token_id]
        out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return out


def answer_options(ec, gc) -> sampling.Sampling:
    """How evaluation answers: ``config.eval``'s length and sampler, ``config.gen``'s EOS and padding."""
    return sampling.Sampling(int(ec.max_new_tokens), float(ec.temperature), int(ec.top_k), float(ec.top_p),
                             int(gc.eos_token_id), int(gc.pad_token_id), bool(ec.greedy))


def generate_answers(decode, params, data, tokenizer, opts: sampling.Sampling, *, batch_size, seed, desc="generate",
                     mesh=None):
    """Answers for every prompt of ``data`` (a data.Tokenized), in order, sampled under ``opts``. With ``mesh``,
    each batch is split over its batch axes (every process gets every answer)."""
    answers = []
    n = len(data)
    for i in tqdm(range(0, n, batch_size), desc=desc, leave=False):
        sl = np.arange(i, min(i + batch_size, n))
        idx = np.concatenate([sl, np.full(batch_size - len(sl), sl[0])])  # static shape
        ids, mask = sharding.put_batch((data.prompt_ids[idx], data.prompt_mask[idx]), mesh)
        toks, m = sampling.generate_stepwise(decode, params, ids, mask, jax.random.PRNGKey(seed * 100003 + i), opts)
        toks, m = sharding.to_host(toks), sharding.to_host(m)
        answers.extend(decode_responses(tokenizer, toks, m, opts.eos_token_id)[: len(sl)])
    return answers


def evaluate(decode, params, eval_sets: dict, tokenizer, ec, gc, out_dir=None, tag="student", mesh=None):
    """Generate on each eval set for each seed; RougeL/EM averaged over seeds.
    Writes ``{tag}_{set}_answers.jsonl`` and ``{tag}_scores.json`` under ``out_dir``
    (process 0 only)."""
    if jax.process_index() != 0:
        out_dir = None
    results, opts = {}, answer_options(ec, gc)
    for name, data in eval_sets.items():
        per_seed = []
        answers_all = []
        for seed in ec.seeds:
            answers = generate_answers(decode, params, data, tokenizer, opts,
                                       batch_size=ec.batch_size, seed=seed, desc=f"eval {tag}/{name} seed {seed}",
                                       mesh=mesh)
            per_seed.append(score_answers(answers, data.references))
            answers_all.append(answers)
        res = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}
        res["rougeL_std_over_seeds"] = float(np.std([s["rougeL"] for s in per_seed]))
        results[name] = res
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, f"{tag}_{name}_answers.jsonl"), "w") as f:
                for i, prompt in enumerate(data.prompts):
                    f.write(json.dumps({"prompt": prompt, "reference": data.references[i],
                                        "answers": [a[i] for a in answers_all], "seeds": list(ec.seeds)}) + "\n")
    if out_dir:
        with open(os.path.join(out_dir, f"{tag}_scores.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results

