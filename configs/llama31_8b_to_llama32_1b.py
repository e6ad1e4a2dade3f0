"""Llama-3.1-8B-Instruct -> Llama-3.2-1B-Instruct (same 128256-token tokenizer; both
use llama3 RoPE scaling). The models default to their Hugging Face Hub ids (gated: accept the
licence on the hub and set HF_TOKEN); local folders override them:

  python -m dpkd_jax.main --config=configs/llama31_8b_to_llama32_1b.py \\
      --config.teacher.path=/ckpt/llama-3.1-8b-instruct --config.student.path=/ckpt/llama-3.2-1b-instruct
"""

from dpkd_jax.config import paper_config


def get_config():
    c = paper_config("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-1B-Instruct",
                     "work_dirs/llama31_8b_to_llama32_1b")
    c.data.template = "chat"           # Llama 3 chat template; <|eot_id|> ends a turn
    c.train.lr = 1e-6
    c.train.warmup_steps = 50
    c.data.max_prompt_length, c.data.max_length = 512, 1024
    c.gen.max_new_tokens = 512
    c.model.remat = "dots"
    # 32 query heads and 8 KV heads on both: tensor=8 splits them exactly inside a host.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 8
    return c
