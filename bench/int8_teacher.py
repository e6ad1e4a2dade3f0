"""The weight-only int8 teacher against the float one, on the real SmolLM2-135M-Instruct:
the per-token KL(p_float || p_int8) on the float teacher's greedy answers to held-out
prompts, the greedy answers' agreement, and the parameter bytes.

    python bench/int8_teacher.py [--prompts 16] [--new 32] [--out bench/results/int8_teacher_cpu.json]
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import data as data_lib
from dpkd_jax import losses, models, sampling
from dpkd_jax.assets import resolve
from dpkd_jax.experiment.targets import greedy_targets, prompts_only


def param_bytes(model):
    return sum(int(v.size) * v.dtype.itemsize for v in models.split(model)[1].values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16", help="the float teacher's dtype")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    path = resolve("asset:smollm2-135m-instruct")
    tok = models.load_tokenizer(path)
    dt = jnp.dtype(args.dtype)
    full = models.from_pretrained(path, dtype=dt, output_vocab=len(tok))
    q = models.from_pretrained(path, dtype=dt, output_vocab=len(tok), quantize="int8")
    recs = data_lib.read_jsonl(os.path.join(os.path.dirname(data_lib.__file__), "prompts", "eval.jsonl"),
                               data_lib.Report("eval"))[: args.prompts]
    eos = tok.eos_token_id
    prompts, _ = prompts_only(recs, tok, max_prompt_length=128, max_new_tokens=args.new, pad_token_id=eos,
                              template="chat", source="eval")
    kw = dict(max_new_tokens=args.new, batch_size=args.prompts, eos_token_id=eos, pad_token_id=eos)
    (fd, fp), (qd, qp) = models.split(full), models.split(q)
    d = greedy_targets(fd, fp, prompts, tok, **kw)
    d8 = greedy_targets(qd, qp, prompts, tok, **kw)
    ids, mask = jnp.asarray(d.response_ids), jnp.asarray(d.response_mask)
    logits = lambda dec, p: sampling.response_logits(dec, p, d.prompt_ids, d.prompt_mask, ids, mask)
    lf, lq = logits(fd, fp).astype(jnp.float32), logits(qd, qp).astype(jnp.float32)
    kl = losses.forward_kl(lq, lf, mask)  # KL(p_float || p_int8), token mean per answer
    same_tokens = np.asarray((jnp.argmax(lf, -1) == jnp.argmax(lq, -1)) * mask).sum() / float(mask.sum())
    identical = int(np.sum([np.array_equal(a, b) for a, b in zip(d.response_ids, d8.response_ids)]))
    out = {"device": jax.devices()[0].device_kind, "model": "SmolLM2-135M-Instruct", "dtype": args.dtype,
           "prompts": args.prompts, "new_tokens": args.new, "tokens_scored": int(mask.sum()),
           "kl_per_token_mean": float(kl.mean()), "kl_per_token_max_answer": float(kl.max()),
           "argmax_agreement": float(same_tokens), "identical_greedy_answers": identical,
           "param_bytes_float": param_bytes(full), "param_bytes_int8": param_bytes(q),
           "bytes_ratio": param_bytes(q) / param_bytes(full)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
