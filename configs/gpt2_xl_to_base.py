"""GPT-2 XL (1.5B, SFT on Dolly) -> GPT-2 base (120M, SFT start), DPKD, reference-code hyperparameters.

Point the paths at local HF checkpoint folders and the Dolly JSONL:
  python -m dpkd_jax.main --config=configs/gpt2_xl_to_base.py \
    --config.teacher.path=/ckpt/gpt2-xl-sft --config.student.path=/ckpt/gpt2-base-sft \
    --config.data.train=/data/dolly/train.jsonl --config.data.pretrain=/data/openwebtext.txt
"""

from dpkd_jax.config import default_config


def get_config(student="gpt2-base"):
    c = default_config()
    c.method = "dpkd"
    c.workdir = f"work_dirs/gpt2_xl_to_{student.split('-')[-1]}_dpkd"
    c.teacher.path = "checkpoints/gpt2-xlarge-sft"
    c.student.path = f"checkpoints/{student}-sft"
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
    c.data.lm_seq_len = 512
    c.train.steps = 5000
    c.train.batch_size = 8
    c.train.lr = 5e-4
    c.train.weight_decay = 0.01
    c.train.grad_clip = 1.0
    c.train.schedule = "cosine"
    c.train.eval_every = 500
    c.train.save_every = 500
    c.loss.kd_ratio = 0.5
    c.loss.lm_coef = 0.5
    c.loss.beta = 0.1
    c.gen.max_new_tokens = 256
    c.gen.temperature, c.gen.top_k, c.gen.top_p = 1.0, 0, 1.0
    c.eval.seeds = (10, 20, 30, 40, 50)
    return c
