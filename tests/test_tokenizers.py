"""models/tokenizers.py: a folder's tokenizer is the class its tokenizer_config.json names, loaded directly, and
equals what transformers.AutoTokenizer gives; anything AutoTokenizer has more to decide goes through it."""

import json
import shutil

from transformers import AutoTokenizer

from dpkd_jax.models import tokenizers

TEXTS = ("Hello world <b>ok</b> 12345 ünï", "Add the numbers.\n\n1 and 2")


def same_tokenizer(ours, theirs):
    """The same class, ids, special tokens, chat template and padding side."""
    assert type(ours) is type(theirs)
    for text in TEXTS:
        assert ours(text).input_ids == theirs(text).input_ids
    assert ours.all_special_tokens == theirs.all_special_tokens and ours.chat_template == theirs.chat_template
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.padding_side) == \
        (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.padding_side)


def test_the_named_class_loads_as_auto_tokenizer_would(hf_pair):
    teacher, _, _ = hf_pair
    assert tokenizers._named_class(teacher) is not None
    same_tokenizer(tokenizers.load_tokenizer(teacher), AutoTokenizer.from_pretrained(teacher))


def test_remote_code_or_an_unknown_class_is_left_to_auto_tokenizer(hf_pair, tmp_path):
    teacher, _, _ = hf_pair
    for change in ({"auto_map": {"AutoTokenizer": ["x.Tok", None]}}, {"tokenizer_class": "NoSuchTokenizer"}):
        folder = tmp_path / next(iter(change))
        shutil.copytree(teacher, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
        assert tokenizers._named_class(str(folder)) is None
