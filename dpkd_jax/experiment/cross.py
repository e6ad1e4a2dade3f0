"""The experiment across tokenizers (configs/smollm2_to_gemma3.py): a teacher and a student of
different families, each with its own tokenizer and prompt template; responses cross between
them as text (``cross_tokenizer.py``).

The prompts used are those that fit ``data.max_prompt_length`` in both tokenizers (the others
are counted and skipped). Targets: the teacher's greedy answers, computed in its own tokens and
cached; the student's gold responses are their text in the student's tokens.
"""

from __future__ import annotations

import os

from .. import data as data_lib
from .. import models, sharding
from .. import run as run_lib
from ..assets import resolve
from ..cross_tokenizer import Retokenizer
from ..errors import InputError
from ..pipeline import load_model
from ..sampling import Sampling
from .measure import CrossMeasure
from .runner import Experiment, read_prompts
from .targets import greedy_targets, prompts_only


def fitting(records, sides, max_prompt_length):
    """The records whose prompt fits ``max_prompt_length`` tokens on every ``(tokenizer, template)``
    side, and how many did not."""
    def fits(rec):
        return all(len(tok(data_lib.render_prompt(rec, tok, tpl), add_special_tokens=False)["input_ids"])
                   <= max_prompt_length for tok, tpl in sides)
    kept = [r for r in records if fits(r)]
    return kept, len(records) - len(kept)


class CrossExperiment(Experiment):
    """:class:`runner.Experiment` with a student of its own (``student.path``) instead of the
    pruned teacher, trained across tokenizers."""

    def __init__(self, cfg):
        self.placement = sharding.Placement(cfg.mesh.as_dict())
        t_path, s_path = resolve(cfg.teacher.path), resolve(cfg.student.path)
        self.teacher_tokenizer, self.tokenizer = models.load_tokenizer(t_path), models.load_tokenizer(s_path)
        cfg = run_lib.resolved(cfg, self.tokenizer, teacher_path=t_path, student_path=s_path)
        self.cfg, self.e = cfg, cfg.experiment
        self.t_template = cfg.data.teacher_template or cfg.data.template
        self.t_eos = data_lib.end_token_id(self.teacher_tokenizer, self.t_template)
        self.t_pad = models.pad_id(self.teacher_tokenizer)
        self.t_cfg, self.t_params = load_model(cfg, self.placement, "teacher", t_path,
                                               models.real_vocab_size(self.teacher_tokenizer))
        self.s_cfg, self.s_params = load_model(cfg, self.placement, "student", s_path,
                                               models.real_vocab_size(self.tokenizer))
        (self.train, _), (self.dev, self.dev_t), (self.eval, self.eval_t) = self._data()
        self.run_ctx = run_lib.Run(cfg, self.tokenizer, self.placement, (self.t_cfg, self.t_params), self.train,
                                   teacher_tokenizer=self.teacher_tokenizer)
        self._measures()

    def describe(self):
        return (f"teacher {os.path.basename(self.cfg.teacher.path)} ({self.t_template} template, vocabulary "
                f"{len(self.teacher_tokenizer)}); student {os.path.basename(self.cfg.student.path)} "
                f"({self.cfg.data.template} template, vocabulary {len(self.tokenizer)})")

    def _records(self):
        cfg, e = self.cfg, self.e
        sides = ((self.teacher_tokenizer, self.t_template), (self.tokenizer, cfg.data.template))
        out = {}
        for (split, file), recs in zip((("pool", "train.jsonl"), ("held", "eval.jsonl")), read_prompts(e)):
            out[split], skipped = fitting(recs, sides, cfg.data.max_prompt_length)
            print(f"experiment.prompts {file}: {len(out[split])} of {len(recs)} prompts fit data.max_prompt_length="
                  f"{cfg.data.max_prompt_length} in both tokenizers; {skipped} skipped")
        if len(out["pool"]) < e.n_train + e.n_dev or len(out["held"]) < e.n_eval:
            raise InputError(f"config.experiment: n_train + n_dev = {e.n_train + e.n_dev} and n_eval = {e.n_eval} "
                             f"need that many prompts that fit; {len(out['pool'])} and {len(out['held'])} do")
        return {"train": out["pool"][:e.n_train], "dev": out["pool"][e.n_train:e.n_train + e.n_dev],
                "eval": out["held"][:e.n_eval]}

    def _data(self):
        """Per split: (the student's data, gold = the teacher's answers as text; the teacher's targets)."""
        cfg = self.cfg
        P, N = cfg.data.max_prompt_length, cfg.gen.max_new_tokens
        out = []
        for name, recs in self._records().items():
            prompts, _ = prompts_only(recs, self.teacher_tokenizer, max_prompt_length=P, max_new_tokens=N,
                                      pad_token_id=self.t_pad, template=self.t_template, source=name)
            t_gen = Sampling.of(cfg.gen).replace(eos_token_id=self.t_eos, pad_token_id=self.t_pad)
            targets = greedy_targets(self.t_cfg, self.t_params, prompts, self.teacher_tokenizer, t_gen,
                                     batch_size=cfg.eval.batch_size, mesh=self.placement.mesh,
                                     path=os.path.join(cfg.workdir, f"teacher_targets_{name}.npz"))
            report = data_lib.Report(f"{name} (teacher answers in the student's tokens)")
            report.read = len(recs)
            student = data_lib.tokenize([dict(r, response=t) for r, t in zip(recs, targets.references)],
                                        self.tokenizer, max_prompt_length=P, max_length=cfg.data.max_length,
                                        report=report, pad_token_id=cfg.gen.pad_token_id, template=cfg.data.template)
            print(report)
            out.append((student, targets))
        return out

    def _measures(self):
        c = self.cfg
        to_teacher = Retokenizer(self.tokenizer, self.teacher_tokenizer, 2 * c.gen.max_new_tokens,
                                 src_eos=c.gen.eos_token_id, dst_eos=self.t_eos, dst_pad=self.t_pad)
        gen = Sampling.of(c.gen)
        kw = dict(batch_size=c.eval.batch_size, mesh=self.placement.mesh)
        teacher = (self.t_cfg, self.t_params)
        self.measure_eval = CrossMeasure(teacher, self.eval, self.eval_t, to_teacher, gen, **kw)
        self.measure_dev = CrossMeasure(teacher, self.dev, self.dev_t, to_teacher, gen, full=False, **kw)

    def teacher_row(self):
        return self.measure_eval.teacher_row(self.eval_t)
