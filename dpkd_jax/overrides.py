"""The command line's door: a ``--config.<path>=<value>`` override that the config refuses, explained in one
plain line that names the field, its section and what would fit.

ml_collections refuses an unknown field or a value of the wrong type with its own exception text (a KeyError's
quoted repr, an escaped newline, a hint). :func:`explain` walks the override's path through the loaded config
instead and says, for example::

    --config.train.warmup=10: config.train has no field 'warmup' (did you mean 'warmup_steps'?)
    --config.train.steps=ten: config.train.steps must be an int, got 'ten'
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os

import ml_collections

from .errors import TYPE_NAMES



def load_config_file(argv) -> ml_collections.ConfigDict | None:
    """The config ``--config=FILE[:ARG]`` names in ``argv``, loaded as ml_collections loads it (None if it
    cannot be: the flag parser's own message then stands)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location(os.path.basename(path).removesuffix(".py"), path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:  # noqa: BLE001 -- a config that does not load is the flag parser's to report
        return None


def _field(node, key):
    """``node[key]`` (None when absent) and whether it is there."""
    try:
        return node[key], True
    except (KeyError, AttributeError, TypeError):
        return None, False


def _expected_type(node, key):
    """The type ml_collections holds the field to (a FieldReference's declared type, else its value's)."""
    if isinstance(node, ml_collections.ConfigDict):
        ref = node._fields.get(key)  # noqa: SLF001 -- the declared type lives on the reference
        if isinstance(ref, ml_collections.FieldReference):
            return ref.get_type()
    value, _ = _field(node, key)
    return type(value)


def _parses_as(text: str, kind) -> bool:
    """Whether the flag's text is a value of ``kind`` as ml_collections reads it (a Python literal)."""
    if kind is str or kind is object or kind is type(None):
        return True
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return kind is tuple and "," not in text and text.strip() != ""  # a bare word is a 1-tuple
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def explain(cfg, flag: str) -> str | None:
    """One line for an override ``--config.a.b=v`` that ``cfg`` refuses: an unknown field (with the nearest names
    of its section) or a value of the wrong type; None when the override is fine here."""
    name, has_value, text = flag.partition("=")
    path = name.removeprefix("--").split(".")[1:]
    node, where = cfg, "config"
    for i, key in enumerate(path):
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return f"{flag}: {where} is a value ({node!r}), not a section with fields"
        value, there = _field(node, key)
        if not there:
            fields = sorted(node.keys())
            near = difflib.get_close_matches(key, fields, n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(repr(n) for n in near)}?" if near else
                    f"its fields: {', '.join(fields)}" if fields else "it has none")
            return f"{flag}: {where} has no field {key!r} ({hint})"
        if i == len(path) - 1 and has_value:
            kind = _expected_type(node, key)
            if kind in TYPE_NAMES and not _parses_as(text, kind):
                return f"{flag}: {where}.{key} must be {TYPE_NAMES[kind]}, got {text!r}"
        node, where = value, f"{where}.{key}"
    return None


def explain_argv(argv) -> str | None:
    """The first override in ``argv`` that the config it names refuses, explained (None: none found)."""
    cfg = load_config_file(argv)
    if cfg is None:
        return None
    for flag in argv[1:]:
        if flag.startswith("--config.") and (line := explain(cfg, flag)):
            return line
    return None
