"""Instruction data: templates, filtering with counts, deterministic resumable batches, packing."""

import os

import numpy as np
import pytest

from conftest import write_jsonl
from dpkd_jax import data as D

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_template_matches_reference():
    assert D.format_prompt("Do X.") == ("Below is an instruction that describes a task. Write a response that "
                                        "appropriately completes the request.\n\n### Instruction:\nDo X.\n\n"
                                        "### Response:\n")
    assert "### Input:\nctx\n\n### Response:\n" in D.format_prompt("Do X.", "ctx")


@pytest.fixture(scope="module")
def turns_tok(tmp_path_factory):
    """A BPE tokenizer with Gemma's turn tokens added as special tokens."""
    from conftest import make_tokenizer
    t = make_tokenizer(str(tmp_path_factory.mktemp("turns")), vocab_size=200, corpus=["user model say hi"] * 20)
    t.add_special_tokens({"additional_special_tokens": ["<bos>", "<start_of_turn>", "<end_of_turn>"]})
    return t


def test_written_turn_format_renders_and_ends_responses_with_its_end_token(turns_tok, tok):
    rec = {"instruction": "Say hi.", "context": "", "response": "hi"}
    text = D.render_prompt(rec, turns_tok, "gemma")
    assert text == "<bos><start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"
    end = turns_tok.convert_tokens_to_ids("<end_of_turn>")
    assert D.end_token_id(turns_tok, "gemma") == end != turns_tok.eos_token_id
    assert D.end_token_id(turns_tok, "dolly") == turns_tok.eos_token_id
    d = D.tokenize([rec], turns_tok, max_prompt_length=24, max_length=32, report=D.Report("x"), pad_token_id=0,
                   template="gemma")
    ids = d.prompt_ids[0][d.prompt_mask[0].astype(bool)].tolist()
    assert ids[0] == turns_tok.convert_tokens_to_ids("<bos>") and ids.count(end) == 1  # special tokens, one id each
    response = d.response_ids[0][d.response_mask[0].astype(bool)].tolist()
    assert response[-1] == end and turns_tok.decode(response[:-1]) == "hi"
    with pytest.raises(D.instructions.InputError, match="config.data.template: 'gemma' needs the special tokens "
                                                         "<bos>, <end_of_turn>, <start_of_turn>"):
        D.render_prompt(rec, tok, "gemma")


def test_malformed_lines_counted_with_line_numbers_and_filters(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Say hi.", "response": "hi"},
        "{not json",
        {"instruction": "", "response": "x"},
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"response": "no instruction"},
        {"instruction": "Say hi.", "context": "", "response": "hi " * 50},
        {"instruction": "long " * 200, "response": "x"},
    ])
    data, rep = D.load_instructions(path, tok, max_prompt_length=64, max_length=80, pad_token_id=0)
    assert (rep.read, rep.malformed, rep.prompt_too_long, rep.response_truncated, rep.kept) == (7, 3, 1, 1, 3)
    assert rep.malformed_lines[0].startswith("line 2: bad JSON") and "line 3" in rep.malformed_lines[1]
    assert "line 5" in rep.malformed_lines[2] and "'instruction'" in rep.malformed_lines[2]
    assert data.prompt_ids.shape == (3, 64) and data.response_ids.shape == (3, 16)
    # left-padded prompts, responses end with EOS
    row = data.response_ids[0][data.response_mask[0] == 1]
    assert row[-1] == tok.eos_token_id
    assert data.prompt_mask[0, -1] == 1 and data.prompt_mask[0, 0] == 0
    assert tok.decode(data.prompt_ids[1][data.prompt_mask[1] == 1]) == D.format_prompt("Add.", "1 and 2")


def test_empty_dataset_is_an_error_naming_the_file(tmp_path, tok):
    path = write_jsonl(tmp_path / "empty.jsonl", ["{bad", {"instruction": "x"}])
    with pytest.raises(ValueError, match="empty.jsonl: no usable examples"):
        D.load_instructions(path, tok, max_prompt_length=64, max_length=80, pad_token_id=0)


def test_batches_are_deterministic_and_resumable(tmp_path, tok):
    rows = [{"instruction": f"Say {i}.", "response": str(i)} for i in range(23)]
    data, _ = D.load_instructions(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_prompt_length=64,
                                  max_length=80, pad_token_id=0)
    a = D.Batches(data, 5, seed=3)
    seq = [a.next()["example_ids"] for _ in range(6)]
    assert a.dropped_per_epoch == 3
    assert len(set(np.concatenate(seq[:4]))) == 20  # an epoch sees distinct examples
    b = D.Batches(data, 5, seed=3)
    for _ in range(3):
        b.next()
    c = D.Batches(data, 5, seed=3)
    c.restore(b.state())
    np.testing.assert_array_equal(c.next()["example_ids"], seq[3])
    train, dev = D.split_dev(data, 4, seed=0)
    assert len(train) == 19 and len(dev) == 4 and not set(train.prompts) & set(dev.prompts)


def test_longest_row_bounds_every_example_and_rounds_up(tmp_path, tok):
    rows = [{"instruction": "Say " + "a " * i, "response": "b " * (9 - i)} for i in range(9)]
    rows.append({"instruction": "Say it all " + "c " * 12, "response": "d " * 6})
    data, _ = D.load_instructions(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_prompt_length=64,
                                  max_length=80, pad_token_id=0)
    real = data.prompt_mask.sum(1) + data.response_mask.sum(1)
    assert data.longest_row(multiple=1) == real.max() < 80
    assert data.longest_row() % 8 == 0 and 0 <= data.longest_row() - real.max() < 8
    assert data.take(np.argsort(real)[:3]).longest_row(multiple=1) < real.max()  # a subset's own bound
    assert data.longest_row(multiple=1000) == 80  # never past the padded rows


def test_pretraining_text_is_packed(tmp_path, tok):
    p = tmp_path / "t.txt"
    p.write_text("hi there\n" * 20)
    rows = D.load_packed(str(p), tok, 8)
    assert rows.shape[1] == 8 and rows.shape[0] >= 2 and (rows == tok.eos_token_id).any()

