import json

import pytest

from slmkit.errors import DataError
from slmkit.tokenizer import CharTokenizer, load_tokenizer


def test_char_round_trip_and_save_load(tmp_path):
    text = "And God said, Let there be light.\nÆsop's fables: ünïcode too."
    tok = CharTokenizer.fit([text])
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert tok.eot_id == tok.encode("\n")[0]
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, CharTokenizer)
    assert again.encode(text) == ids
    assert load_tokenizer(tmp_path).encode("light") == tok.encode("light")  # a folder holding tokenizer.json


def test_char_vocab_is_sorted_and_always_has_newline():
    tok = CharTokenizer.fit(["cab"])
    assert tok.chars == ["\n", "a", "b", "c"]
    assert tok.encode("abc") == [1, 2, 3]


def test_char_unseen_characters_policy():
    tok = CharTokenizer.fit(["abc"])
    with pytest.raises(DataError, match="'z'"):
        tok.encode("abz")
    assert tok.encode("abz", unknown="skip") == tok.encode("ab")
    assert tok.unknown_chars("xaz") == ["x", "z"]


def test_load_tokenizer_rejects_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe not json")
    with pytest.raises(DataError, match="not a tokenizer file"):
        load_tokenizer(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(DataError, match="unknown tokenizer kind"):
        load_tokenizer(wrong)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"kind": "char", "chars": ["a", "a"]}))
    with pytest.raises(DataError, match="duplicates"):
        load_tokenizer(broken)
