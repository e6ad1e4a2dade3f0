"""Long reasoning traces: Qwen3-8B -> Qwen3-1.7B (one tokenizer) on JSONL traces of
``{"prompt", "thinking", "answer"}`` (data/traces.py) at 16,384 tokens per example, kd on the gold
traces with the thinking in the loss, packed (``data.packing``), O(T) attention (``auto``: splash on
TPU, cuDNN on GPU, blockwise on CPU). Meant for a TPU slice (v5p-8: ``mesh`` below); the plan of its
step is in docs/scale-out.md:

  python -m dpkd_jax.tools.plan --config=configs/qwen3_long_traces.py --topology=v5p:2x2x2 \\
      --mesh=data:1,fsdp:-1,tensor:4 --fit_lengths=16384
  python -m dpkd_jax.main --config=configs/qwen3_long_traces.py --config.data.train=/data/traces.jsonl
"""

from dpkd_jax.config import paper_config


def get_config():
    c = paper_config("Qwen/Qwen3-8B", "Qwen/Qwen3-1.7B", "work_dirs/qwen3_long_traces")
    c.method = "kd"                   # teacher-forced on the stored traces: packs
    c.data.train, c.data.format, c.data.trace_loss = "data/traces/train.jsonl", "traces", "all"
    c.data.eval_sets = {}             # the dev split of the traces (data.dev_num) is the eval set
    c.data.template = "chat"
    c.data.packing = True
    c.data.max_prompt_length, c.data.max_length = 1024, 16384
    c.data.pretrain = ""              # no pre-training LM term for trace distillation
    c.loss.kd.lm_coef = 0.0
    c.gen.max_new_tokens = 15360
    c.eval.max_new_tokens, c.eval.max_examples, c.eval.seeds = 15360, 64, (10,)
    c.train.batch_size = 8
    c.train.lr, c.train.warmup_steps = 1e-5, 50
    c.model.remat = "full"            # 16k-token rows: keep only each layer's input
    c.model.attention_kernel = "auto"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 4
    return c
