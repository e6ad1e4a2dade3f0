"""OPT-13B (SFT on Dolly) -> OPT-1.3B (SFT start), DPKD.

  python -m dpkd_jax.main --config=configs/opt13b_to_1p3b.py \
    --config.teacher.path=/ckpt/opt-13b-sft --config.student.path=/ckpt/opt-1.3b-sft \
    --config.data.train=/data/dolly/train.jsonl
Teacher in bf16 (26 GB), student float32 master weights with bf16 compute.
"""

from dpkd_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "dpkd"
    c.workdir = "work_dirs/opt13b_to_1p3b_dpkd"
    c.teacher.path = "checkpoints/opt-13b-sft"
    c.student.path = "checkpoints/opt-1.3b-sft"
    c.teacher.dtype = "bfloat16"
    c.student.dtype = "float32"
    c.student.compute_dtype = "bfloat16"
    c.data.train = "data/dolly/train.jsonl"
    c.data.dev_num = 500
    c.data.eval_sets = {"dolly": "data/dolly/valid.jsonl", "self_inst": "data/self-inst/valid.jsonl",
                        "sinst": "data/sinst/valid.jsonl"}
    c.data.pretrain = "data/openwebtext/train.txt"
    c.data.max_prompt_length = 256
    c.data.max_length = 512
    c.train.steps = 5000
    c.train.batch_size = 8
    c.train.grad_accum = 1
    c.train.lr = 1e-5  # the reference code's OPT-1.3B learning rate
    c.train.eval_every = 500
    c.loss.kd_ratio = 0.5
    c.loss.lm_coef = 0.5
    c.loss.beta = 0.1
    c.gen.max_new_tokens = 256
    return c
