"""The run a user starts: load models (sharded on the mesh) and data, train with
one method (`loop.train_loop`), evaluate, export the final and best students."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from . import data as data_lib
from . import evaluate as eval_lib
from . import curves, memory, models, sharding, trackers
from . import run as run_lib
from . import objectives, teachers
from .assets import resolve
from .checkpoint import prepare_workdir
from .errors import InputError
from .model_options import model_options
from .runspec import RunSpec
from .sampling import Sampling


def data_options(cfg) -> dict:
    """The tokenization options every instruction set of a run shares."""
    return dict(max_prompt_length=cfg.data.max_prompt_length, max_length=cfg.data.max_length,
                pad_token_id=cfg.gen.pad_token_id, template=cfg.data.template,
                format=data_lib.traces.Format(cfg.data.format, cfg.data.trace_loss))


def load_eval_sets(cfg, tokenizer, dev, paths=None):
    """The dev split and each named eval set (``paths``, default ``data.eval_sets``), capped at
    ``eval.max_examples``."""
    sets = {} if dev is None else {"dev": dev}
    for name, path in (cfg.data.eval_sets if paths is None else paths).items():
        sets[name], report = data_lib.load_instructions(path, tokenizer, **data_options(cfg))
        if jax.process_index() == 0:
            print(report)
    if cfg.eval.max_examples:
        sets = {k: v.take(np.arange(min(len(v), cfg.eval.max_examples))) for k, v in sets.items()}
    return sets


def fitted(cfg: RunSpec, placement, run_inputs, generation=True) -> RunSpec:
    """The spec whose train step fits the device (``memory.fit``; one line when nothing asked for
    fits), with ``train.micro_batch`` resolved (``"auto"``: the largest that fits), a new spec.
    ``run_inputs``: the run's vocab, data (and in-process models), so the checked step is the one the
    run executes; ``generation``: check the generating programs too."""
    micro = memory.fit(cfg, cfg.mesh.sizes(), sharding.data_parallel_size(placement.mesh),
                       run_inputs, generation)
    return cfg.replace({"train.micro_batch": micro})


def load_model(cfg, placement, role, path, vocab):
    """One model from its HF folder or GGUF file as (decode call, flat params), each parameter
    placed on its shard of ``role`` as it is read; logits over the tokenizer's ``vocab`` real
    tokens (padded rows dropped)."""
    kw = model_options(cfg, role, vocab)
    rules = placement.rules(role)
    table = models.param_table(models.load_config(path, **kw), rules)
    model = models.from_pretrained(path, rules=rules, shardings=placement.params(table, role), seed=cfg.seed,
                                   allow_pickle=cfg.model.allow_pickle, **kw)
    return models.split(model)


def load_models(cfg, placement, vocab, teacher_vocab=None):
    """(teacher, student), each a (config, params) pair placed on the mesh."""
    return (load_model(cfg, placement, "teacher", cfg.teacher.path, teacher_vocab or vocab),
            load_model(cfg, placement, "student", cfg.student.path, vocab))


def check_teacher_tokenizer(name, path, student_path, tokenizer) -> int:
    """A teacher of ``teacher.paths`` shares the student's tokenizer (the shared vocabulary size),
    else one error naming it; the run and the preflight both call this."""
    try:
        return models.check_same_vocabulary(path, student_path, student_tok=tokenizer)
    except InputError as e:
        raise InputError(f"config.teacher.paths.{name}: every teacher must share the student's tokenizer: {e}") \
            from None


def load_teachers(cfg, placement, vocab, tokenizer, first):
    """Multi-teacher (``teacher.paths``): ``{name: (decoder, params)}``, each teacher sharing the
    student's tokenizer (a mismatch is an error naming the teacher); ``first``: the first one,
    already loaded as the run's teacher."""
    out = {}
    for i, (name, path) in enumerate(cfg.teacher.paths.items()):
        path = resolve(path, allow_pickle=cfg.model.allow_pickle)
        check_teacher_tokenizer(name, path, cfg.student.path, tokenizer)
        out[name] = first if i == 0 else load_model(cfg, placement, "teacher", path, vocab)
    return out


def load_train(cfg, tokenizer):
    """(train, dev, routing): the training rows, the dev split, and (multi-teacher) each train
    row's teacher; every row's teacher name is checked, dev rows' too."""
    field = cfg.data.teacher_field
    full, report = data_lib.load_instructions(cfg.data.train, tokenizer, **data_options(cfg),
                                              fields=(field,) if field else ())
    print(report)
    if field:
        teachers.route(full, field, tuple(cfg.teacher.paths), cfg.data.train)
    train_data, dev = data_lib.split_dev(full, cfg.data.dev_num, cfg.seed)
    routing = teachers.route(train_data, field, tuple(cfg.teacher.paths), cfg.data.train) if field else None
    if routing is not None:
        print(f"teachers ({field}): {routing.describe()} (train rows)")
    return train_data, dev, routing


def one_model(cfg):
    """``mode=generate``, or ``mode=eval`` without a teacher: the student alone is loaded (no teacher
    path is read); answers are written, or RougeL/EM on ``data.eval_sets`` (and the dev split when
    ``data.train`` is set) printed."""
    path = resolve(cfg.student.path, allow_pickle=cfg.model.allow_pickle)
    tokenizer = models.load_tokenizer(path)
    cfg = run_lib.resolved(cfg, tokenizer, student_path=path)
    placement = sharding.Placement(cfg.mesh.as_dict())
    s_cfg, params = load_model(cfg, placement, "student", path, models.real_vocab_size(tokenizer))
    if cfg.mode == "generate":
        return generate_mode(cfg, s_cfg, params, tokenizer, placement.mesh)
    dev = load_train(cfg, tokenizer)[1] if cfg.data.train else None
    sets = load_eval_sets(cfg, tokenizer, dev)
    if not sets:
        raise InputError("config.data.eval_sets: mode=eval needs an eval set (or data.train for its dev split)")
    results = {cfg.method: eval_lib.evaluate(s_cfg, params, sets, tokenizer, cfg.eval, Sampling.of(cfg.gen),
                                             os.path.join(cfg.workdir, "eval"), "student", mesh=placement.mesh)}
    if jax.process_index() == 0:
        print_table(results)
    return results


def run(cfg):
    """Train (or evaluate, or generate) with the models and data the config names: one stage of
    the shared run path (``run.py``). Generating, or evaluating without a teacher, loads the student only."""
    prepare_workdir(cfg)
    if cfg.mode == "generate" or (cfg.mode == "eval" and not cfg.teacher.path and not cfg.teacher.paths):
        return one_model(cfg)
    pickle = cfg.model.allow_pickle
    multi = tuple(cfg.teacher.paths.values())
    teacher_path, student_path = (resolve(p, allow_pickle=pickle) for p in (multi[0] if multi else cfg.teacher.path,
                                                                             cfg.student.path))
    tokenizer = models.load_tokenizer(student_path)
    cross_ok = objectives.build(cfg.method, cfg.loss).cross_tokenizer and cfg.mode == "train" and not multi
    vocab, t_vocab, t_tok = models.vocabularies(teacher_path, student_path, cross_ok=cross_ok,
                                                cross_methods=objectives.CROSS_METHODS, student_tok=tokenizer)
    cfg = run_lib.resolved(cfg, tokenizer, teacher_path=teacher_path, student_path=student_path)
    placement = sharding.Placement(cfg.mesh.as_dict())
    train_data, dev, routing = load_train(cfg, tokenizer)
    memory.note_shapes(cfg)
    if cfg.mode == "train" and cfg.check.memory:  # before any weights load
        cfg = fitted(cfg, placement, {"vocab": vocab, "data": train_data})
    (t_cfg, t_params), (s_cfg, params) = load_models(cfg, placement, vocab, t_vocab)
    all_teachers = load_teachers(cfg, placement, vocab, tokenizer, (t_cfg, t_params)) if multi else {"teacher": (t_cfg, t_params)}
    lm_rows = data_lib.load_packed(cfg.data.pretrain, tokenizer, cfg.data.lm_seq_len) if cfg.data.pretrain else None
    run = run_lib.Run(cfg, tokenizer, placement, next(iter(all_teachers.values())), train_data, dev, lm_rows,
                      load_eval_sets(cfg, tokenizer, dev), t_tok, all_teachers if multi else None, routing)
    if cfg.mode == "train":
        params, _, best = run_lib.train_stage(run, cfg, s_cfg, params)
        exports = {"final": params, "best": best} if best is not None else {"final": params}
        for name, p in exports.items():
            host = jax.tree.map(sharding.to_host, p)  # every process takes part in the gather
            if jax.process_index() == 0:
                export(s_cfg, host, tokenizer, os.path.join(cfg.workdir, "export", name), cfg.student.path)
        if cfg.train.final_lm_eval_tasks:
            final_lm_eval(cfg, s_cfg, params, tokenizer, placement.mesh)
    out_dir = os.path.join(cfg.workdir, "eval")
    results = {cfg.method: run_lib.evaluate(run, s_cfg, params, "student", out_dir)}
    if cfg.eval.eval_teacher and t_tok is None:  # across tokenizers the teacher is scored by its own run
        for name, (decoder, p) in all_teachers.items():
            tag = f"teacher {name}" if multi else "teacher"
            results[tag] = run_lib.evaluate(run, decoder, p, tag.replace(" ", "_"), out_dir)
    if jax.process_index() == 0:
        publish_table(cfg, print_table(results))
    curves.wait()
    return results


def publish_table(cfg, table: str):
    """The final table in ``<workdir>/table.md`` and in the run's trackers (``log.trackers``)."""
    os.makedirs(cfg.workdir, exist_ok=True)
    with open(os.path.join(cfg.workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    with trackers.open_for(cfg) as tr:
        tr.table("results", table)


def final_lm_eval(cfg, decoder, params, tokenizer, mesh):
    """``train.final_lm_eval_tasks`` on the final student (every process computes; process 0 writes
    ``lm_eval.json`` and ``lm_eval.md`` in the work dir and sends the table to the trackers)."""
    from . import lm_eval_adapter as adapter  # lm-eval is an optional extra, checked at start-up
    t = cfg.train
    lm = adapter.JaxLM(decoder, params, tokenizer, batch_size=cfg.eval.batch_size, mesh=mesh, seed=cfg.seed)
    results = adapter.run_tasks(lm, adapter.check_tasks(t.final_lm_eval_tasks, t.final_lm_eval_include_path),
                                include_path=t.final_lm_eval_include_path, limit=t.final_lm_eval_limit)
    if jax.process_index() == 0:
        table = adapter.write(results, cfg.workdir)
        print(table)
        with trackers.open_for(cfg) as tr:
            tr.table("lm_eval", table)


def export(decoder, params, tokenizer, path, base_model=""):
    """A Hugging Face folder (config, safetensors, tokenizer) that transformers loads; a LoRA
    student's adapters are merged into it, and also written as a PEFT adapter in
    ``<path>/adapter`` (``base_model``: the folder it adapts)."""
    model = models.merge(decoder, params)
    models.save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    if model.config.lora.rank:
        models.save_peft_adapter(model, os.path.join(path, "adapter"), base_model)
    # transformers takes special-token ids from config.json: write the tokenizer's, not a family default
    cfg_file = os.path.join(path, "config.json")
    with open(cfg_file) as f:
        hf = json.load(f)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):  # None where the tokenizer has no such token
        v = getattr(tokenizer, k, None)
        hf[k] = None if v is None else int(v)
    with open(cfg_file, "w") as f:
        json.dump(hf, f, indent=1, sort_keys=True)


def generate_mode(cfg, s_cfg, params, tokenizer, mesh=None):
    g = cfg.generate
    if g.prompt:
        records = [{"instruction": g.prompt, "context": "", "response": "", "category": ""}]
    elif g.input_file:
        records = data_lib.read_jsonl(g.input_file, data_lib.Report(g.input_file))
    else:
        raise InputError("config.generate: set generate.prompt or generate.input_file for mode=generate")
    rep = data_lib.Report(g.input_file or "prompt")
    data = data_lib.tokenize(records, tokenizer, report=rep, **data_options(cfg))
    answers = eval_lib.generate_answers(s_cfg, params, data, tokenizer, eval_lib.answer_options(cfg.eval, cfg.gen),
                                        batch_size=min(cfg.eval.batch_size, len(data)), seed=cfg.seed, mesh=mesh)
    out = g.output_file or os.path.join(cfg.workdir, "answers.jsonl")
    if jax.process_index() != 0:
        return answers
    with open(out, "w") as f:
        for p, a in zip(data.prompts, answers):
            f.write(json.dumps({"prompt": p, "answer": a}) + "\n")
    for a in answers[:5]:
        print(a)
    return answers


def print_table(results):
    """Method × eval set table of RougeL / EM."""
    sets = sorted({s for r in results.values() for s in r})
    head = "| method | " + " | ".join(f"{s} RougeL | {s} EM" for s in sets) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(sets))]
    for name, r in results.items():
        cells = []
        for s in sets:
            cells += [f"{r[s]['rougeL']:.2f}", f"{r[s]['exact_match']:.2f}"] if s in r else ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table
