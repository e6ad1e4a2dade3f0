"""daDPO's pair: Qwen2.5-7B-Instruct -> Qwen2.5-1.5B-Instruct (same tokenizer; the 7B's
embedding matrix is padded to 152064 rows, the 1.5B's to 151936: losses use the real
vocabulary). The models default to their Hugging Face Hub ids (fetched into the hub cache;
``HF_HUB_OFFLINE=1`` uses the cache only); local folders override them:

  python -m dpkd_jax.main --config=configs/qwen25_7b_to_1p5b.py \\
      --config.teacher.path=/ckpt/qwen2.5-7b-instruct --config.student.path=/ckpt/qwen2.5-1.5b-instruct
"""

from dpkd_jax.config import paper_config


def get_config():
    c = paper_config("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct",
                     "work_dirs/qwen25_7b_to_1p5b")
    c.data.template = "chat"           # instruct models: their own chat template, <|im_end|> ends a turn
    c.train.lr = 1e-6                  # instruct-tuned students: a small lr, as daDPO
    c.train.warmup_steps = 50
    c.data.max_prompt_length, c.data.max_length = 512, 1024
    c.gen.max_new_tokens = 512
    c.model.remat = "dots"             # 1024-token sequences on a 7B teacher: keep matmul outputs only
    # 28 query heads and 4 KV heads (teacher), 12 and 2 (student): tensor=4 splits both teachers' heads;
    # the student's 2 KV heads are replicated over it. fsdp takes the rest.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 4
    return c
