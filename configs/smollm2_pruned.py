"""The real-weights experiment: SmolLM2-135M-Instruct (the teacher, from the package index)
and the same model with layers removed (the student), recovered by every method.

  python -m dpkd_jax.main --config=configs/smollm2_pruned.py          # the full scale (one GPU)
  python -m dpkd_jax.main --config=configs/smollm2_pruned.py:cpu      # reduced, ~2 h on 2 CPU cores
  # only the rows added since the published CPU table (opd, opd_iw, abkd, todi, taid), beside it:
  python -m dpkd_jax.main --config=configs/smollm2_pruned.py:cpu \
      --config.experiment.previous=bench/results/smollm2_pruned_cpu/results.json

See dpkd_jax/experiment/ and the README's "Does distillation work?".
"""

import ml_collections

from dpkd_jax.config import default_config

METHODS = ("sft", "kd", "seqkd", "rkl", "gkd", "dpkd", "dpkd_dpop", "dadpo", "plad", "minillm", "distillm2",
           "opd", "opd_iw", "abkd", "todi", "taid")
# The one switch between scales: what differs from the full (GPU) scale.
SCALES = {
    "gpu": {},
    "cpu": {"steps": 12, "n_train": 48, "n_dev": 16, "n_eval": 32, "eval_points": 3, "lr_grid": (3e-4, 1e-3),
            "batch_size": 4, "max_new_tokens": 24, "teacher_dtype": "float32", "compute_dtype": "float32",
            "machine": "this project's CPU box: 2 cores, 24 GiB, no accelerator"},
}


def get_config(scale="gpu"):
    if scale not in SCALES:
        raise ValueError(f"--config=configs/smollm2_pruned.py:<scale>: scale must be one of {sorted(SCALES)}, "
                         f"got {scale!r}")
    s = {"steps": 200, "n_train": 1900, "n_dev": 100, "n_eval": 200, "eval_points": 5, "lr_grid": (5e-5, 2e-4, 1e-3),
         "seeds": (0, 1, 2), "dpkd_betas": (0.1, 0.5, 1.0, 5.0), "dpkd_kd_ratios": (0.5, 1.0), "batch_size": 16,
         "max_new_tokens": 64, "teacher_dtype": "bfloat16", "compute_dtype": "bfloat16", "machine": "",
         **SCALES[scale]}
    c = default_config()
    c.workdir = f"work_dirs/smollm2_pruned_{scale}"
    c.teacher.path = "asset:smollm2-135m-instruct"
    c.teacher.dtype = s["teacher_dtype"]
    c.student.compute_dtype = s["compute_dtype"]
    c.data.template = "chat"
    c.data.max_prompt_length = 128  # the longest prompt of the set is 120 tokens with the chat template
    c.data.max_length = 128 + s["max_new_tokens"]
    c.gen.max_new_tokens = s["max_new_tokens"]
    c.gen.teacher_mode = "offline"  # y_t sampled once per prompt and cached, shared by every run
    c.train.batch_size = s["batch_size"]
    c.train.schedule = "constant"
    c.train.warmup_steps = max(1, s["steps"] // 10)
    c.train.log_every = max(1, s["steps"] // 12)
    c.eval.batch_size = 16
    c.experiment = ml_collections.ConfigDict({
        "enabled": True, "scale": scale, "title": f"A pruned SmolLM2-135M-Instruct recovered by distillation ({scale})",
        # 30 layers -> 20: layers 12-21 removed. Measured on 16 held-out prompts (greedy teacher answers):
        # forward KL 2.85 / token (CE 3.94 vs the teacher's 0.61); other cuts in the README
        "keep_layers": "0-11,22-29", "prompts": "", "methods": METHODS,
        # an earlier results.json: its rows are reported beside this run's and not retrained
        # (the CPU table's rows from sft to distillm2: bench/results/smollm2_pruned_cpu/results.json)
        "previous": "",
        # rows of which only the best on dev (after its lr grid) is trained over every seed
        "best_of": ("abkd", "todi", "taid"),
        "command": f"python -m dpkd_jax.main --config=configs/smollm2_pruned.py:{scale}",
        **{k: s[k] for k in ("steps", "n_train", "n_dev", "n_eval", "eval_points", "lr_grid", "seeds",
                             "dpkd_betas", "dpkd_kd_ratios", "machine")}})
    return c
