"""How much removing layers hurts SmolLM2-135M-Instruct before any training: the student's CE
and per-token forward KL to the teacher on the teacher's greedy answers to held-out prompts.

    python bench/prune_damage.py [--prompts 16] [--cuts 0-11,22-29 0-3,14-29 ...]

The experiment (configs/smollm2_pruned.py) keeps 0-11,22-29: a third of the depth removed,
a large gap that training can close.
"""

import argparse
import json
import os

import jax.numpy as jnp

from dpkd_jax import data as data_lib
from dpkd_jax import losses, models, sampling
from dpkd_jax.assets import resolve
from dpkd_jax.experiment.targets import greedy_targets, prompts_only
from dpkd_jax.tools.prune import parse_layers, prune

CUTS = ["0-13,24-29", "0-11,22-29", "0-3,14-29", "0-9,24-29", "0-11,26-29", "0-3,8-29", "0-15,20-29",
        "0-19,24-29", "0-23,28-29", "0-3,8-11,16-29"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--cuts", nargs="*", default=CUTS)
    args = ap.parse_args()
    path = resolve("asset:smollm2-135m-instruct")
    tok = models.load_tokenizer(path)
    m = models.from_pretrained(path, output_vocab=len(tok))
    cfg, params = models.split(m)
    eos = tok.eos_token_id
    recs = data_lib.read_jsonl(os.path.join(os.path.dirname(data_lib.__file__), "prompts", "eval.jsonl"),
                               data_lib.Report("eval"))[: args.prompts]
    prompts, _ = prompts_only(recs, tok, max_prompt_length=128, max_new_tokens=args.new, pad_token_id=eos,
                              template="chat", source="eval")
    d = greedy_targets(cfg, params, prompts, tok, max_new_tokens=args.new, batch_size=args.prompts, eos_token_id=eos,
                       pad_token_id=eos)
    ids, mask = jnp.asarray(d.response_ids), jnp.asarray(d.response_mask)
    logits = lambda c, p: sampling.response_logits(c, p, d.prompt_ids, d.prompt_mask, ids, mask)
    t = logits(cfg, params)
    rows = []
    for spec in args.cuts:
        keep = parse_layers(spec, cfg.config.n_layers)
        c2, p2 = prune(cfg, params, keep)
        s = logits(c2, p2)
        rows.append({"keep": spec, "layers": len(keep), "ce": float(losses.cross_entropy(s, ids, mask).mean()),
                     "forward_kl": float(losses.forward_kl(s, t, mask).mean())})
        print(json.dumps(rows[-1]), flush=True)
    print(f"teacher CE on its own answers: {float(losses.cross_entropy(t, ids, mask).mean()):.2f}")


if __name__ == "__main__":
    main()
