"""TRL's side of bench/peer_step.py: one whole process that trains the prepared student with TRL's GKDTrainer
(or DistillationTrainer) and prints one JSON line of timings. Runs in the bench's own venv (TRL + torch CPU),
never in ours:

    <trl venv>/bin/python bench/peer_trl.py --root=DIR --lmbda=0 --steps=12
"""

import argparse
import json
import os
import resource
import time

T0 = time.perf_counter()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402


class Clock(TrainerCallback):
    """Wall time of every optimizer step (its generation, forwards, backward and update)."""

    def __init__(self):
        self.times, self.t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t)


class Profile(TrainerCallback):
    """torch.profiler over optimizer steps ``first``..``last`` (1-based); its op table (self CPU time) to ``out``."""

    def __init__(self, first, last, out):
        self.first, self.last, self.out, self.prof = first, last, out, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.first:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is not None and state.global_step == self.last:
            self.prof.__exit__(None, None, None)
            with open(self.out, "w") as f:
                f.write(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            self.prof = None


def common(a):
    """The settings both sides share, written out: fp32, no gradient checkpointing, AdamW, constant lr."""
    return dict(output_dir=os.path.join(a.root, "trl_out"), max_steps=a.steps, per_device_train_batch_size=a.batch,
                learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
                max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, logging_steps=1,
                save_strategy="no", report_to="none", bf16=False, fp16=False, gradient_checkpointing=False,
                use_cpu=True, dataloader_num_workers=0, seed=0, disable_dropout=True)


def trainer_of(a, student, teacher, tok, rows, clock):
    """TRL's GKDTrainer on chat rows, or (``--trainer=distillation``) its DistillationTrainer on prompts alone: on-policy
    at temperature 1, the divergence chosen by ``beta`` (1: reverse KL)."""
    if a.trainer == "distillation":
        from trl import DistillationConfig, DistillationTrainer
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}]} for r in rows])
        args = DistillationConfig(**common(a), beta=a.beta, temperature=1.0, max_completion_length=a.new,
                                  shuffle_dataset=False)
        return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                   processing_class=tok, callbacks=[clock]), None
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    data = Dataset.from_list([{"messages": [{"role": "user", "content": r["instruction"]},
                                            {"role": "assistant", "content": r["response"]}]} for r in rows])
    args = GKDConfig(**common(a), lmbda=a.lmbda, beta=a.beta, temperature=a.temperature, max_new_tokens=a.new,
                     max_length=a.prompt + a.response)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok,
                         callbacks=[clock])
    return trainer, trainer.data_collator([data[0]])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--trainer", default="gkd", choices=("gkd", "distillation"))
    ap.add_argument("--lmbda", type=float, default=0.0)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=192)
    ap.add_argument("--new", type=int, default=192)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--profile", default="", help="first,last,out: torch.profiler's op table of those steps")
    a = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(os.path.join(a.root, "student"))
    load = lambda n: AutoModelForCausalLM.from_pretrained(os.path.join(a.root, n), dtype=torch.float32)
    student, teacher = load("student"), load("teacher")
    rows = [json.loads(line) for line in open(os.path.join(a.root, "train.jsonl"))]
    clock = Clock()
    trainer, first = trainer_of(a, student, teacher, tok, rows, clock)
    if a.profile:
        lo, hi, out = a.profile.split(",", 2)
        trainer.add_callback(Profile(int(lo), int(hi), out))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    ids = {} if first is None else {"input_ids": first["input_ids"][0].tolist(), "prompt_ids": first["prompts"][0].tolist()}
    print(json.dumps({"side": "trl", "wall_s": time.perf_counter() - T0, "step_s": clock.times, "first_loss": losses[0],
                      **ids,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
