"""Tokenizers beside a checkpoint (or inside a GGUF file), through transformers,
and the check that teacher and student share one vocabulary."""

from __future__ import annotations

import json
import os

from .hf import is_gguf, load_config
from ..errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")


def _named_class(path):
    """The tokenizer class ``tokenizer_config.json`` names, as ``AutoTokenizer`` resolves it when the folder
    ships no remote code; None where AutoTokenizer has more to decide (no class named, remote code, unknown).
    Loading it directly skips AutoTokenizer's model-config machinery, which imports torch when it is installed
    (2-3 s of a run's start-up; docs/performance.md)."""
    import transformers  # third-party and 0.6 s to import: only when a tokenizer is loaded
    try:
        with open(os.path.join(path, "tokenizer_config.json")) as f:
            tc = json.load(f)
    except (OSError, ValueError):
        return None
    name = tc.get("tokenizer_class") if isinstance(tc, dict) and "auto_map" not in tc else None
    if not isinstance(name, str):
        return None
    cls = getattr(transformers, name, None) or getattr(transformers, name + "Fast", None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        return None
    return transformers.TokenizersBackend if cls.__name__ == "PythonBackend" else cls


def load_tokenizer(path):
    """The tokenizer of a checkpoint folder (the class its ``tokenizer_config.json`` names, else
    ``transformers.AutoTokenizer``) or of a ``.gguf`` file (its embedded tokenizer and chat template); one
    error naming the path if unreadable."""
    if is_gguf(path):
        kw = dict(pretrained_model_name_or_path=os.path.dirname(os.path.abspath(path)),
                  gguf_file=os.path.basename(path))
    else:
        if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise InputError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                             "beside the checkpoint (tokenizer.save_pretrained)")
        kw = dict(pretrained_model_name_or_path=path)
    import transformers
    cls = None if is_gguf(path) else _named_class(path)
    try:
        return (cls or transformers.AutoTokenizer).from_pretrained(**kw, local_files_only=True)
    except Exception as e:
        raise InputError(f"{path}: the tokenizer cannot be loaded ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); re-save it with tokenizer.save_pretrained") \
            from None


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS where it has none (GPT-2's)."""
    pad = tokenizer.pad_token_id
    return int(tokenizer.eos_token_id if pad is None else pad)


def real_vocab_size(tokenizer) -> int:
    """Token ids the tokenizer can produce: embedding matrices are often padded past it."""
    return len(tokenizer)


def _rows_hold(path, n):
    rows = load_config(path).vocab_size
    if rows < n:
        where = path if is_gguf(path) else os.path.join(path, "config.json")
        raise InputError(f"{where}: vocab_size={rows} is smaller than the tokenizer's {n} tokens")


def check_same_vocabulary(teacher_path, student_path, teacher_tok=None, student_tok=None, *, cross_methods=()) -> int:
    """Teacher and student must map the same ids to the same tokens; their embedding
    matrices may be padded differently (Qwen2.5-7B 152064 rows, 1.5B 151936). Returns
    the shared real vocabulary size; raises InputError explaining any difference (and
    naming ``cross_methods``, the methods that would work across the two tokenizers)."""
    t_tok = teacher_tok or load_tokenizer(teacher_path)
    s_tok = student_tok or load_tokenizer(student_path)
    if t_tok.get_vocab() != s_tok.get_vocab():
        also = f"; the sequence-level methods work across tokenizers: {', '.join(cross_methods)}" if cross_methods \
            else ""
        raise InputError(
            f"teacher and student tokenizers differ: the token->id maps of {teacher_path} ({len(t_tok)} tokens) "
            f"and {student_path} ({len(s_tok)} tokens) are not the same, so the same id means different text in "
            f"the two models; token-level objectives need one vocabulary{also}")
    n = real_vocab_size(t_tok)
    for path in (teacher_path, student_path):
        _rows_hold(path, n)
    return n


def vocabularies(teacher_path, student_path, *, cross_ok: bool, cross_methods=(), student_tok=None):
    """(student vocab, teacher vocab, the teacher's tokenizer when it differs else None).
    Different tokenizers are allowed when ``cross_ok`` (a sequence-level method)."""
    s_tok = student_tok or load_tokenizer(student_path)
    t_tok = load_tokenizer(teacher_path)
    if t_tok.get_vocab() == s_tok.get_vocab() or not cross_ok:
        n = check_same_vocabulary(teacher_path, student_path, t_tok, s_tok, cross_methods=cross_methods)
        return n, n, None
    _rows_hold(student_path, real_vocab_size(s_tok))
    _rows_hold(teacher_path, real_vocab_size(t_tok))
    return real_vocab_size(s_tok), real_vocab_size(t_tok), t_tok
