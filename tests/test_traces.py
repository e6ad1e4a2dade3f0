"""Reasoning traces (data/traces.py): rendered with a Qwen3 think block, the thinking trained on or only
read, cut at a paragraph boundary when too long (counted), and a line without its fields named."""

import json

import numpy as np
import pytest

from conftest import write_jsonl
from dpkd_jax import data as D
from dpkd_jax.data import traces

THINK = "First I add the units.\n\nThen I add the tens.\n\nSo the sum is 68."


@pytest.fixture
def trace_file(tmp_path):
    rows = [{"prompt": "Add 26 and 42.", "thinking": THINK, "answer": "68"},
            {"prompt": "Say hi.", "thinking": "", "answer": "hi there"}]
    return write_jsonl(tmp_path / "t.jsonl", rows)


def load(path, tok, loss, P=64, L=160):
    return D.load_instructions(path, tok, max_prompt_length=P, max_length=L, pad_token_id=tok.eos_token_id,
                               format=traces.Format("traces", loss), log=False)


def text(tok, ids, mask):
    return tok.decode([int(i) for i, m in zip(ids, mask) if m])


def test_the_thinking_is_trained_on_or_only_read(trace_file, tok):
    data, report = load(trace_file, tok, "all")
    assert report.kept == 2 and report.traces_cut == 0
    response = text(tok, data.response_ids[0], data.response_mask[0])
    assert response.startswith("<think>\nFirst I add the units.") and response.rstrip(tok.eos_token).endswith(
        "So the sum is 68.\n</think>\n\n68")
    assert data.references[0] == "68"  # evaluation scores the answer
    data, report = load(trace_file, tok, "answer", P=128, L=192)
    assert report.traces_cut == 0
    prompt, response = (text(tok, data.prompt_ids[0], data.prompt_mask[0]),
                        text(tok, data.response_ids[0], data.response_mask[0]))
    assert prompt.endswith(traces.think_block(THINK)) and response.replace(tok.eos_token, "") == "68"


def test_a_long_trace_is_cut_at_a_paragraph_and_keeps_its_answer(trace_file, tok):
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    full = len(ids(traces.think_block(THINK) + "68")) + 1
    two = len(ids(traces.think_block(THINK.rsplit("\n\n", 1)[0]) + "68")) + 1
    data, report = load(trace_file, tok, "all", P=64, L=64 + two)  # room for two paragraphs, not three
    assert two < full and report.traces_cut == 1 and report.response_truncated == 0
    response = text(tok, data.response_ids[0], data.response_mask[0])
    assert "Then I add the tens.\n</think>\n\n68" in response and "So the sum" not in response
    assert "traces cut at a segment boundary 1" in str(report)


def test_a_trace_without_its_fields_is_named_by_line(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "Add.", "thinking": "t", "answer": "1"}) + "\n"
                    + json.dumps({"prompt": "Add.", "answer": "2"}) + "\n")
    data, report = load(str(path), tok, "all")
    assert report.kept == 1 and report.malformed == 1
    assert "line 2: missing field 'thinking' (a trace has prompt, thinking and answer)" in str(report)
    assert str(path) in str(report)
