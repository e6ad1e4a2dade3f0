"""Compiled train-step temporaries against the vocabulary (issue 21's measurement).

Qwen2-shaped teacher and student (width 64, 2 layers each), batch 8, prompt 64, 512 new
tokens (and 512-token gold responses), one XLA:CPU device; the planner's own compile
(``tools/plan.plan_one``): parameters are abstract, the figure is
``memory_analysis().temp_size_in_bytes``. Runs on any revision of this project (set
``loss_chunk_tokens`` where the config has it), so ``bench/compare_revisions.py``-style
worktrees can give the "before" column:

  python bench/vocab_memory.py --out bench/results/vocab_memory_cpu.json [--chunks 0,1024]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GiB = 2**30


def qwen_folder(root, name, vocab):
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    cfg = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def measure(method, vocab, chunk, root):
    from dpkd_jax.config import default_config
    from dpkd_jax.planner import plan_one
    from dpkd_jax.runspec import RunSpec
    c = default_config()
    c.method = method
    c.teacher.path, c.student.path = qwen_folder(root, f"t{vocab}", vocab), qwen_folder(root, f"s{vocab}", vocab)
    c.teacher.dtype, c.student.dtype, c.student.compute_dtype = "float32", "float32", "float32"
    c.train.batch_size, c.data.max_prompt_length, c.data.max_length, c.gen.max_new_tokens = 8, 64, 576, 512
    c.data.pretrain = ""
    if chunk is not None and "loss_chunk_tokens" in c.model:
        c.model.loss_chunk_tokens = chunk
    row = plan_one(RunSpec.of(c), {"data": 1, "fsdp": 1, "tensor": 1}, 1)
    return {"method": method, "vocab": vocab, "chunk_tokens": chunk, "temp_gib": row["temp"] / GiB,
            "total_gib": row["total"] / GiB, "logits_tensor_gib": 8 * 512 * vocab * 4 / GiB}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="dpkd,kd")
    ap.add_argument("--vocabs", default="4096,151936")
    ap.add_argument("--chunks", default="", help="comma-separated loss_chunk_tokens (empty: the config default)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    chunks = [int(x) for x in args.chunks.split(",")] if args.chunks else [None]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for method in args.methods.split(","):
            for vocab in (int(v) for v in args.vocabs.split(",")):
                for chunk in chunks:
                    rows.append(measure(method, vocab, chunk, root))
                    print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": "CPU box, 2 cores, XLA:CPU, 1 device", "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
