"""JSON Lines as the loaders read them: each non-blank line counted, a bad one counted with its line number."""

from __future__ import annotations

import json

from ..errors import InputError


def json_objects(path: str, report, what: str):
    """``(line number, object)`` for each line of ``path`` that is a JSON object; blank lines are skipped,
    others are counted in ``report`` (a ``data.Report``: ``read``, ``bad``). ``what`` names the file in the
    error when it cannot be opened."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.read += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                report.bad(lineno, f"bad JSON ({e.msg})")
                continue
            if not isinstance(rec, dict):
                report.bad(lineno, "not a JSON object")
                continue
            yield lineno, rec
