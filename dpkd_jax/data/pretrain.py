"""Pre-training text for the LM loss: plain text or JSONL ``text``, packed into fixed-length rows."""

from __future__ import annotations

import json

import numpy as np

from ..errors import InputError


def load_packed(path: str, tokenizer, seq_len: int) -> np.ndarray:
    """``[n, seq_len]`` token rows: documents joined with EOS and cut into full rows.
    The tail shorter than one row is dropped (at most ``seq_len - 1`` tokens)."""
    ids = []
    eos = tokenizer.eos_token_id
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read the pre-training text ({e.strerror or e})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            text = line
            if path.endswith(".jsonl"):
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{path}: line {lineno} is not a JSON object with a 'text' field") from None
            ids.extend(tokenizer(text.strip(), add_special_tokens=False)["input_ids"] + [eos])
    n = len(ids) // seq_len
    if n == 0:
        raise InputError(f"{path}: {len(ids)} tokens, fewer than one row of {seq_len}")
    return np.asarray(ids[: n * seq_len], np.int32).reshape(n, seq_len)
