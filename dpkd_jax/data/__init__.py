"""Data: Dolly-format instruction sets, templates, pre-training text, static-shape batches."""

from .instructions import (Batches, Report, Tokenized, format_prompt, load_instructions, load_records, read_jsonl,
                           render_prompt, split_dev, tokenize)
from .pretrain import load_packed

__all__ = ["Batches", "Report", "Tokenized", "format_prompt", "load_instructions", "load_records", "read_jsonl",
           "render_prompt", "split_dev", "tokenize", "load_packed"]
