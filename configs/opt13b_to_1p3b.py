"""OPT-13B (SFT on Dolly) -> OPT-1.3B (SFT start), DPKD.

  python -m dpkd_jax.main --config=configs/opt13b_to_1p3b.py \
    --config.teacher.path=/ckpt/opt-13b-sft --config.student.path=/ckpt/opt-1.3b-sft \
    --config.data.train=/data/dolly/train.jsonl
Teacher in bf16 (26 GB), student float32 master weights with bf16 compute.
"""

from dpkd_jax.config import paper_config


def get_config():
    c = paper_config("checkpoints/opt-13b-sft", "checkpoints/opt-1.3b-sft", "work_dirs/opt13b_to_1p3b_dpkd")
    c.train.lr = 1e-5  # the reference code's OPT-1.3B learning rate
    return c
