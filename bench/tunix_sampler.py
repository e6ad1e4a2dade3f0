"""Ours vs Tunix's sampler (a peer JAX sampler) on the same random Llama-shaped model,
interleaved in one process. Run it in a venv that has both (Tunix pins its own stack):

  python3 -m venv /tmp/tunix_venv && /tmp/tunix_venv/bin/pip install google-tunix -r requirements.txt -e .
  /tmp/tunix_venv/bin/python bench/tunix_sampler.py

Shapes as bench/generate.py --family llama: 4 layers, width 256, 4 heads, 1 KV head, head
dim 64, vocab 5000, B=8, 32-token prompts, 64 new tokens, temperature 1, top-p 1, no EOS.
Both models are random with the same shapes (the issue asks no more: decoding cost does not depend on the values).
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpkd_jax import models, sampling
from dpkd_jax.models import llama as our_llama
from dpkd_jax.models.config import Rope

L, D, H, G, K, F, V, B, P, N = 4, 256, 4, 1, 64, 704, 5000, 8, 32, 64


class NumberTokenizer:
    """Prompts are space-separated token ids: the same ids reach both samplers."""

    def encode(self, text, **kw):
        return [int(t) for t in text.split()]

    def decode(self, ids, **kw):
        return " ".join(map(str, ids))

    def bos_id(self):
        return 1

    def eos_id(self):
        return V + 1  # never sampled: every row runs N tokens

    def pad_id(self):
        return 0


def tunix_model():
    from tunix.models.llama3 import model as tm
    cfg = tm.ModelConfig(num_layers=L, vocab_size=V, embed_dim=D, hidden_dim=F, num_heads=H, head_dim=K,
                         num_kv_heads=G, rope_theta=500000, norm_eps=1e-5)
    return tm.Llama3(cfg, rngs=nnx.Rngs(0))


def main():
    from tunix.generate import sampler as ts
    model = tunix_model()
    s = ts.Sampler(model, NumberTokenizer(), ts.CacheConfig(cache_size=256, num_layers=L, num_kv_heads=G,
                                                             head_dim=K))
    ours_cfg = our_llama.tiny_config(vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=G, d_ff=F,
                                     attention=models.Attention(rope=Rope(theta=500000.0)), tied_head=False)
    ours = models.CausalLM(ours_cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, (B, P))
    prompts = [" ".join(map(str, r)) for r in ids]

    def run_tunix(seed):
        t = time.perf_counter()
        out = s(prompts, max_generation_steps=N, max_prompt_length=P, temperature=1.0, top_p=1.0, seed=seed,
                eos_tokens=[V + 1])
        jax.block_until_ready(out.tokens)
        return time.perf_counter() - t

    def run_ours(seed):
        t = time.perf_counter()
        toks, _ = models.generate(ours, ids, np.ones_like(ids),
                                  sampling.Sampling(max_new_tokens=N, eos_token_id=-1, pad_token_id=0),
                                  rng=jax.random.PRNGKey(seed))
        toks.block_until_ready()
        return time.perf_counter() - t

    run_tunix(0), run_ours(0)
    t_t, t_o, ratios = [], [], []
    for r in range(7):
        t_t.append(run_tunix(r + 1))
        t_o.append(run_ours(r + 1))
        ratios.append(t_t[-1] / t_o[-1])
    print(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                      "ours_tokens_per_s": B * N / statistics.median(t_o),
                      "tunix_tokens_per_s": B * N / statistics.median(t_t),
                      "speedup_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]},
                     indent=1))


if __name__ == "__main__":
    main()
