"""Data: Dolly-format instruction sets, templates, pre-training text, static-shape batches."""

from .instructions import (TEMPLATES, TURNS, Batches, Report, Tokenized, end_token_id, format_prompt, load_instructions,
                           load_records, read_jsonl, render_prompt, split_dev, tokenize)
from .pretrain import load_packed

__all__ = ["TEMPLATES", "TURNS", "end_token_id", "Batches", "Report", "Tokenized", "format_prompt", "load_instructions", "load_records", "read_jsonl",
           "render_prompt", "split_dev", "tokenize", "load_packed"]
