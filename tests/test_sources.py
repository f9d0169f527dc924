import pytest

from slmkit.config import DataConfig
from slmkit.data.sources import load_splits, normalize, read_kjv
from slmkit.errors import DataError


def test_kjv_is_built_in():
    verses = read_kjv()
    assert len(verses) == 31103
    assert verses[0] == "In the beginning God created the heaven and the earth."
    assert 4_000_000 < sum(map(len, verses)) < 4_200_000


def test_last_fraction_of_documents_is_val(tmp_path):
    for i in range(10):
        (tmp_path / f"{i:02d}.txt").write_text(f"document {i}\n")
    splits = load_splits(DataConfig(source=str(tmp_path), val_fraction=0.2))
    assert splits["train"] == [f"document {i}\n" for i in range(8)]
    assert splits["val"] == ["document 8\n", "document 9\n"]
    # a glob picks the same files
    assert load_splits(DataConfig(source=str(tmp_path / "*.txt"), val_fraction=0.2)) == splits


def test_single_file_is_split_by_characters(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a" * 90 + "b" * 10)
    splits = load_splits(DataConfig(source=str(path), val_fraction=0.1))
    assert splits == {"train": ["a" * 90], "val": ["b" * 10]}


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"body": "first"}\n{"body": "second"}\n\n{"body": "third"}\n')
    splits = load_splits(DataConfig(source=str(path), text_field="body", val_fraction=0.3))
    assert splits == {"train": ["first", "second"], "val": ["third"]}
    with pytest.raises(DataError, match="no text field 'text'"):
        load_splits(DataConfig(source=str(path)))


def test_normalization_options():
    cfg = DataConfig(lowercase=True, collapse_whitespace=True, drop_empty_lines=True)
    assert normalize("  Hello\t  World  \n\n\nCafe\u0301 ", cfg) == "hello world\ncafé"
    assert normalize("Cafe\u0301", DataConfig()) == "Café"  # NFC always


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="nor an existing file, folder or glob"):
        load_splits(DataConfig(source=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="has no text"):
        load_splits(DataConfig(source=str(tmp_path / "empty.txt")))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text \(bad byte at offset 3\).*data.errors=replace"):
        load_splits(DataConfig(source=str(bad)))
    splits = load_splits(DataConfig(source=str(bad), errors="replace", val_fraction=0.5))
    assert "\ufffd" in splits["train"][0]
    with pytest.raises(DataError, match="matches no files"):
        load_splits(DataConfig(source=str(tmp_path / "*.md")))
