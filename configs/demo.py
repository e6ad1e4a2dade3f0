"""The embedded default: no download, a 2-core CPU, minutes. See dpkd_jax/demo.py."""

import ml_collections

from dpkd_jax.config import default_config


def get_config():
    c = default_config()
    c.workdir = "work_dirs/demo"
    c.resume = True  # a rerun reuses the stages already finished (printed as it goes)
    # four layers: unrolled, the CPU steps run 1.19-1.22x as fast as scanned (bench/demo_speed.py)
    c.model.scan_layers = False
    c.teacher.dtype = "float32"
    c.student.compute_dtype = "float32"
    c.data.dev_num = 100
    c.data.max_prompt_length = 96
    c.data.max_length = 136
    c.data.lm_seq_len = 64
    c.train.batch_size = 16
    c.train.log_every = 10
    c.train.save_every = 10**9
    c.train.warmup_steps = 10
    c.gen.max_new_tokens = 40
    c.eval.max_new_tokens = 40
    c.eval.batch_size = 50
    c.eval.seeds = (10, 20)
    c.eval.max_examples = 100
    c.demo = ml_collections.ConfigDict({
        "enabled": True, "vocab_size": 384,
        "teacher": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 512},
        "teacher_steps": 260, "teacher_lr": 2e-3,
        # the student: the trained teacher with its two middle layers removed (half the depth)
        "keep_layers": "0,3",
        "distill_steps": 40, "distill_lr": 5e-4, "seeds": (0, 1),
        "methods": ("sft", "kd", "seqkd", "dpkd"),
    })
    return c
