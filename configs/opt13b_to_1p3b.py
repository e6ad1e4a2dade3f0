"""OPT-13B (SFT on Dolly) -> OPT-1.3B (SFT start), DPKD.

The paths default to the base models on the Hugging Face Hub (``facebook/opt-13b``,
``facebook/opt-1.3b``); the paper starts from both fine-tuned on Dolly, so point them at your SFT folders:
  python -m dpkd_jax.main --config=configs/opt13b_to_1p3b.py \
    --config.teacher.path=/ckpt/opt-13b-sft --config.student.path=/ckpt/opt-1.3b-sft \
    --config.data.train=/data/dolly/train.jsonl
Teacher in bf16 (26 GB), student float32 master weights with bf16 compute.
"""

from dpkd_jax.config import paper_config


def get_config():
    c = paper_config("facebook/opt-13b", "facebook/opt-1.3b", "work_dirs/opt13b_to_1p3b_dpkd")
    c.train.lr = 1e-5  # the reference code's OPT-1.3B learning rate
    return c
