"""The cross-tokenizer experiment between two real models: SmolLM2-135M-Instruct (the teacher,
its chat template, Llama-style tokenizer of 49152 tokens) teaches Gemma 3 270M, the pretrained
base (the student, Gemma's turn format written down in ``data.TURNS``, 262144 tokens), to answer
like it. Both come from the package index (``python -m dpkd_jax.assets --list``).

  python -m dpkd_jax.main --config=configs/smollm2_to_gemma3.py:cpu   # ~1.5 h on 2 CPU cores
  python -m dpkd_jax.main --config=configs/smollm2_to_gemma3.py       # the full scale (one GPU)

Only the sequence-level methods work across tokenizers; each gets the same steps, batch and
learning rate. See dpkd_jax/experiment/cross.py and the README's "Across tokenizers".
"""

import ml_collections

from dpkd_jax.config import default_config

METHODS = ("seqkd", "dpkd", "plad", "dadpo_a0")
SCALES = {
    "gpu": {},
    "cpu": {"steps": 8, "n_train": 32, "n_dev": 8, "n_eval": 16, "eval_points": 2, "lr_grid": (5e-5,),
            "batch_size": 4, "max_new_tokens": 24, "max_prompt_length": 64, "dtype": "float32",
            "machine": "this project's CPU box: 2 cores, 24 GiB, no accelerator"},
}


def get_config(scale="gpu"):
    if scale not in SCALES:
        raise ValueError(f"--config=configs/smollm2_to_gemma3.py:<scale>: scale must be one of {sorted(SCALES)}, "
                         f"got {scale!r}")
    s = {"steps": 200, "n_train": 1400, "n_dev": 50, "n_eval": 150, "eval_points": 5, "lr_grid": (2e-5, 1e-4),
         "seeds": (0, 1, 2), "dpkd_betas": (0.1, 1.0), "batch_size": 16, "max_new_tokens": 64,
         "max_prompt_length": 128, "dtype": "bfloat16", "machine": "", **SCALES[scale]}
    c = default_config()
    c.workdir = f"work_dirs/smollm2_to_gemma3_{scale}"
    c.method = "seqkd"  # the experiment's own methods are experiment.methods
    c.teacher.path = "asset:smollm2-135m-instruct"
    c.student.path = "asset:gemma3-270m"
    c.teacher.dtype = s["dtype"]
    c.student.compute_dtype = s["dtype"]
    c.data.template = "gemma"          # the student's turn format (its base checkpoint ships no template)
    c.data.teacher_template = "chat"   # the teacher's own chat template
    N = s["max_new_tokens"]
    c.data.max_prompt_length = s["max_prompt_length"]
    c.data.max_length = s["max_prompt_length"] + 2 * N  # the teacher's N tokens re-encoded: room for twice as many
    c.gen.max_new_tokens = N
    c.gen.teacher_mode = "online"      # across tokenizers y_t is drawn each step and crossed as text
    c.train.batch_size = s["batch_size"]
    c.train.schedule = "constant"
    c.train.warmup_steps = max(1, s["steps"] // 10)
    c.train.log_every = 1
    c.eval.batch_size = 8
    c.experiment = ml_collections.ConfigDict({
        "enabled": True, "cross": True, "scale": scale,
        "title": f"SmolLM2-135M-Instruct teaches Gemma 3 270M (base) across tokenizers ({scale})",
        "start_label": "Gemma 3 270M base before training", "prompts": "", "methods": METHODS, "previous": "",
        "best_of": (), "dpkd_kd_ratios": (0.5,),
        "command": f"python -m dpkd_jax.main --config=configs/smollm2_to_gemma3.py:{scale}",
        **{k: s[k] for k in ("steps", "n_train", "n_dev", "n_eval", "eval_points", "lr_grid", "seeds", "dpkd_betas",
                             "machine")}})
    return c
