"""What Gemma 3's 262144-token vocabulary costs in the cross-tokenizer experiment's train step.

The experiment's step (configs/smollm2_to_gemma3.py, its samples given: the step after the
host round trip) compiled on abstract parameters for one XLA:CPU device, for the real
Gemma 3 270M student and for the same student with its vocabulary cut to SmolLM2's 49152
rows. Reported: parameters + optimizer state (the arguments) and the compiled temporaries
(``memory_analysis()``), beside the size of one dense ``[2B, 2N, V]`` float32 logits tensor
(what the student's log-probs of y_t and y_s would hold without chunking).

  python bench/cross_memory.py --scale=cpu --out bench/results/cross_memory_gemma3_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GiB = 2**30


def load_config(scale):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", "smollm2_to_gemma3.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from dpkd_jax.runspec import RunSpec
    return RunSpec.of(mod.get_config(scale))


def abstract_inputs(cfg, spec, student, teacher, tx, sh):
    """Abstract (state, batch, rng, teacher params) at the experiment's shapes: y_t and y_s given
    in both tokenizations (``2N`` tokens: the crossed length)."""
    import jax
    import numpy as np
    from dpkd_jax.batch import Batch, TeacherView
    from dpkd_jax.train import init_state
    abstract = lambda d, shs: {n: jax.ShapeDtypeStruct(i.shape, i.dtype, sharding=shs[n]) for n, i in d.info.items()}
    s_abs = abstract(student, sh["params"])
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         jax.eval_shape(lambda p: init_state(student, p, tx, spec.objective), s_abs), sh["state"])
    B, P, R, N2 = spec.batch_size, cfg.data.max_prompt_length, cfg.data.max_length - cfg.data.max_prompt_length, \
        2 * cfg.gen.max_new_tokens
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32, sharding=sh["batch"])
    view = TeacherView(i32(B, P), i32(B, P), i32(B, N2), i32(B, N2), i32(B, N2), i32(B, N2))
    batch = Batch(i32(B, P), i32(B, P), i32(B, R), i32(B, R), teacher_ids=i32(B, N2), teacher_mask=i32(B, N2),
                  student_ids=i32(B, N2), student_mask=i32(B, N2), teacher_view=view)
    rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=sh["replicated"])
    return state, batch, rng, abstract(teacher, sh["teacher"])


def measure(cfg, method, student_vocab=None):
    """Compiled memory of ``method``'s step; ``student_vocab``: cut the student's vocabulary."""
    from dpkd_jax import models, sharding, specs
    from dpkd_jax.assets import resolve
    from dpkd_jax.models import decoder_for
    from dpkd_jax.optim import make_optimizer
    from dpkd_jax.run import stage_config
    from dpkd_jax.planner import model_config
    from dpkd_jax.train import make_step, step_shardings
    c = stage_config(cfg, method, cfg.workdir)
    placement = sharding.Placement({"data": 1, "fsdp": 1, "tensor": 1})
    t_path, s_path = resolve(c.teacher.path), resolve(c.student.path)
    t_cfg = model_config(t_path, c.teacher.dtype, c.teacher.dtype, "teacher.path")
    s_cfg = model_config(s_path, c.student.dtype, c.student.compute_dtype, "student.path")
    t_cfg = t_cfg.replace(output_vocab=models.real_vocab_size(models.load_tokenizer(t_path)))
    V = student_vocab or models.real_vocab_size(models.load_tokenizer(s_path))
    s_cfg = s_cfg.replace(vocab_size=V, output_vocab=V)
    teacher, student = decoder_for(t_cfg, placement.rules("teacher")), decoder_for(s_cfg, placement.rules("student"))
    spec = specs.Step.of(c)
    spec = dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, eos_token_id=1, pad_token_id=0))
    tx = make_optimizer(c.train, kinds={n: i.kind for n, i in student.info.items()})
    import jax
    p_sh = placement.params(student.info, "student")
    s_abs = {n: jax.ShapeDtypeStruct(i.shape, i.dtype, sharding=p_sh[n]) for n, i in student.info.items()}
    sh = step_shardings(placement, student, teacher, tx, s_abs, spec.objective)
    state, batch, rng, t_abs = abstract_inputs(c, spec, student, teacher, tx, sh)
    mem = make_step(spec, student, teacher, tx, None, None, sh).lower(state, batch, rng, t_abs, None).compile() \
        .memory_analysis()
    B, N2 = spec.batch_size, 2 * c.gen.max_new_tokens
    return {"method": method, "student_vocab": V, "batch": B, "prompt": c.data.max_prompt_length, "crossed_len": N2,
            "arguments_gib": mem.argument_size_in_bytes / GiB, "temp_gib": mem.temp_size_in_bytes / GiB,
            "dense_logits_tensor_gib": 2 * B * N2 * V * 4 / GiB}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--methods", default="dpkd,seqkd")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = load_config(args.scale)
    rows = []
    for method in args.methods.split(","):
        for vocab in (None, 49152):
            rows.append(measure(cfg, method, vocab))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": "this project's CPU box (2 cores), XLA:CPU, 1 device", "scale": args.scale,
                       "command": " ".join(["python", "bench/cross_memory.py", *sys.argv[1:]]), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
