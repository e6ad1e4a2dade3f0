"""GPT-2 XL (1.5B, SFT on Dolly) -> GPT-2 base (120M, SFT start), DPKD, reference-code hyperparameters.

Point the paths at local HF checkpoint folders and the Dolly JSONL:
  python -m dpkd_jax.main --config=configs/gpt2_xl_to_base.py \
    --config.teacher.path=/ckpt/gpt2-xl-sft --config.student.path=/ckpt/gpt2-base-sft \
    --config.data.train=/data/dolly/train.jsonl --config.data.pretrain=/data/openwebtext.txt
"""

from dpkd_jax.config import paper_config


def get_config(student="gpt2-base"):
    return paper_config("checkpoints/gpt2-xlarge-sft", f"checkpoints/{student}-sft",
                        f"work_dirs/gpt2_xl_to_{student.split('-')[-1]}_dpkd")
