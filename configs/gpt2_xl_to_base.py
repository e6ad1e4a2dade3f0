"""GPT-2 XL (1.5B, SFT on Dolly) -> GPT-2 base (120M, SFT start), DPKD, reference-code hyperparameters.

The models default to the MiniLLM project's SFT checkpoints on the Hugging Face Hub (the ones the
DPKD paper starts from): ``MiniLLM/teacher-gpt2-1.5B`` and ``MiniLLM/init-gpt2-120M`` (fetched into
the hub cache; ``HF_HUB_OFFLINE=1`` uses the cache only). Local folders override them:
  python -m dpkd_jax.main --config=configs/gpt2_xl_to_base.py \
    --config.teacher.path=/ckpt/gpt2-xl-sft --config.student.path=/ckpt/gpt2-base-sft \
    --config.data.train=/data/dolly/train.jsonl --config.data.pretrain=/data/openwebtext.txt
"""

from dpkd_jax.config import paper_config


HUB_STUDENTS = {"gpt2-base": "MiniLLM/init-gpt2-120M", "gpt2-medium": "MiniLLM/init-gpt2-340M"}


def get_config(student="gpt2-base"):
    return paper_config("MiniLLM/teacher-gpt2-1.5B", HUB_STUDENTS[student],
                        f"work_dirs/gpt2_xl_to_{student.split('-')[-1]}_dpkd")
