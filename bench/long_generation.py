"""Long generation on this box (issue "Long traces II"): 16,384 new tokens per row with the chunked early-exit
sampler and the O(T) prefill, with the KV cache in the compute dtype and in int8 (``model.kv_cache``).

For each cache: the generation's wall time and tokens/s (a thin Llama, batch 2, 64-token prompts, EOS off so
every row runs to the end), and the KV cache's bytes (the planner's formula, checked against the arrays). Then the
int8 cache's error: the generated rows teacher-forced through one cached forward with each cache, and
KL(float || int8) of every next-token distribution, over the first and the last 1,024 positions and all of them.
Last, the planner's KV bytes for Qwen3-1.7B's shape at the same length.

    python bench/long_generation.py --out bench/results/long_generation_cpu.json
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpkd_jax import models, sampling
from dpkd_jax.models import llama
from dpkd_jax import planner as plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def thin(kv_cache, new):
    arch = llama.tiny_config(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                             max_positions=2 * (64 + new))
    return models.init(arch.replace(kv_cache=kv_cache), 0)


def generate(kv_cache, ids, new):
    """(tokens, seconds, cache bytes) of one generation of ``new`` tokens (after a warm-up that compiles)."""
    decoder, params = thin(kv_cache, new)
    run = lambda n: models.generate((decoder, params), ids, jnp.ones_like(ids),
                                    sampling.Sampling(max_new_tokens=n, greedy=True, eos_token_id=-1, pad_token_id=0))
    jax.block_until_ready(run(new))  # compiles the prefill and the chunks
    t = time.perf_counter()
    toks, _ = jax.block_until_ready(run(new))
    seconds = time.perf_counter() - t
    cache = decoder.init_cache(ids.shape[0], ids.shape[1] + new)
    nbytes = sum(a.nbytes for a in jax.tree.leaves(cache))
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"))
    assert plan.kv_cache_bytes(decoder.config, mesh, ids.shape[0], ids.shape[1] + new) == nbytes
    return np.asarray(toks), seconds, nbytes


def cached_logits(kv_cache, tokens, new):
    """Log-probs of every next token of ``tokens`` from one forward that writes and reads the cache."""
    decoder, params = thin(kv_cache, new)
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = jnp.ones((B, T), jnp.int32)
    logits, _ = jax.jit(lambda p, c: decoder(p, tokens, positions, mask, c, 0))(params, decoder.init_cache(B, T))
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=16384)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "long_generation_cpu.json"))
    a = ap.parse_args()
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 512, (2, 64)), jnp.int32)
    out = {"new_tokens": a.new, "batch": 2, "prompt": 64}
    for kv in ("compute", "int8"):
        toks, seconds, nbytes = generate(kv, ids, a.new)
        out[kv] = {"seconds": seconds, "tokens_per_s": toks.size / seconds, "kv_cache_bytes": nbytes}
        print(f"{kv}: {toks.shape[1]} new tokens per row in {seconds:.1f} s ({toks.size / seconds:.0f} tokens/s), "
              f"KV cache {nbytes / 2**20:.1f} MiB", flush=True)
        if kv == "compute":
            rows = jnp.concatenate([ids, jnp.asarray(toks)], axis=1)
    p, q = cached_logits("compute", rows, a.new), cached_logits("int8", rows, a.new)
    kl = np.asarray(jnp.sum(jnp.exp(p) * (p - q), -1))
    out["kl_float_int8"] = {"mean": float(kl.mean()), "max": float(kl.max()),
                            "first_1024_mean": float(kl[:, :1024].mean()), "last_1024_mean": float(kl[:, -1024:].mean())}
    print("KL(float || int8) per position: mean {mean:.2e}, max {max:.2e}; first 1024 {first_1024_mean:.2e}, "
          "last 1024 {last_1024_mean:.2e}".format(**out["kl_float_int8"]))
    q3 = llama.tiny_config(vocab_size=151936, d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8, d_ff=6144,
                           max_positions=40960).replace(head_dim=128, compute_dtype="bfloat16")
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"))
    for kv in ("compute", "int8"):
        b = plan.kv_cache_bytes(q3.replace(kv_cache=kv), mesh, 1, 64 + a.new)
        out[f"qwen3_1p7b_shape_{kv}_bytes_per_row"] = b
        print(f"Qwen3-1.7B's shape (28 layers, 8 KV heads of 128), one row of {64 + a.new} slots, {kv}: "
              f"{b / 2**30:.2f} GiB")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
