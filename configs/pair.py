"""Your own teacher and student: Hugging Face folders, .gguf files, asset:<name> or hub ids, one
tokenizer or two (the sequence-level methods cross tokenizers). The reference DPKD hyperparameters
(method.md) with no data paths: name them on the command line.

  python -m dpkd_jax.main --config=configs/pair.py --config.teacher.path=TEACHER \\
      --config.student.path=STUDENT --config.data.train=train.jsonl
"""

from dpkd_jax.config import paper_config


def get_config():
    c = paper_config("", "", "work_dirs/pair")
    c.data.train, c.data.pretrain = "", ""
    c.data.eval_sets = {}              # the dev split (data.dev_num rows of data.train) is always evaluated
    c.data.dev_num = 100
    c.loss.dpkd.lm_coef = 0.0          # no pre-training text named: set data.pretrain and lm_coef to add it
    c.eval.seeds = (10,)
    return c
