import functools
import http.server
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slmkit.config import DataConfig
from slmkit.data import sources
from slmkit.data.sources import files as _files  # noqa: F401  (sources.files)
from slmkit.data.sources import Corpus, normalize
from slmkit.data.sources.files import read_pieces
from slmkit.data.sources.hf import hf_dataset_id, load_hf
from slmkit.data.sources.kjv import read_kjv
from slmkit.data.sources.tinyshakespeare import TINYSHAKESPEARE_SHA256, fetch_verified
from slmkit.errors import DataError
from slmkit.tokenizer import GPT2Tokenizer


def load_splits(cfg: DataConfig) -> dict[str, list[str]]:
    """Both splits' whole documents."""
    corpus = Corpus(cfg)
    return {split: list(corpus.documents(split)) for split in ("train", "val")}


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


# ---------------------------------------------------------------- streaming pieces

PARAGRAPHS = "".join(
    f"Chapter {i}.\n\n  Indented line of ünïcode — 日本語 {i}.\nAnd   the earth\twas without form.\n\n\n"
    for i in range(400)
)


def test_big_file_is_read_in_pieces_that_tokenize_like_the_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.files, "CHUNK_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_text(PARAGRAPHS, encoding="utf-8")
    pieces = list(read_pieces(path))
    assert len(pieces) > 20 and "".join(pieces) == PARAGRAPHS
    tokenizer = GPT2Tokenizer()
    assert [i for p in pieces for i in tokenizer.encode(p)] == tokenizer.encode(PARAGRAPHS)
    for options in [{}, {"lowercase": True, "collapse_whitespace": True, "drop_empty_lines": True}]:
        cfg = DataConfig(source=str(path), **options)
        normalized = list(sources.normalized_pieces(read_pieces(path), cfg))
        assert "".join(text for text, _ in normalized) == normalize(PARAGRAPHS, cfg)
        assert [ends for _, ends in normalized] == [False] * (len(normalized) - 1) + [True]


def test_single_big_file_char_split_matches_whole_text_split(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.files, "CHUNK_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_text(PARAGRAPHS, encoding="utf-8")
    cut = int(len(PARAGRAPHS) * 0.9)
    corpus = Corpus(DataConfig(source=str(path)))
    assert list(corpus.documents("train")) == [PARAGRAPHS[:cut]]
    assert list(corpus.documents("val")) == [PARAGRAPHS[cut:]]
    assert sum(ends for _, ends in corpus.pieces("train")) == 1


def test_bad_bytes_are_reported_at_their_offset_in_a_big_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.files, "CHUNK_BYTES", 1000)
    good = PARAGRAPHS.encode("utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(good[:5000] + b"\xff" + good[5000:])
    with pytest.raises(DataError, match=r"bad.txt is not UTF-8 text \(bad byte at offset 5000\)"):
        list(read_pieces(bad))
    assert "\ufffd" in "".join(read_pieces(bad, errors="replace"))
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DataError, match=r"image.txt is not UTF-8 text \(bad byte at offset 0\)"):
        load_splits(DataConfig(source=str(binary)))
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text\x00\x01\x02")
    with pytest.raises(DataError, match=r"nul.txt looks binary \(NUL byte at offset 4\).*data.errors=replace"):
        load_splits(DataConfig(source=str(nul)))


# ---------------------------------------------------------------- parquet and Hugging Face datasets


def write_parquet(path, texts, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({field: texts, "id": list(range(len(texts)))}), path)


def test_parquet_files_with_a_text_field(tmp_path):
    write_parquet(tmp_path / "a.parquet", [f"row {i}" for i in range(10)], field="body")
    splits = load_splits(DataConfig(source=str(tmp_path / "a.parquet"), text_field="body", val_fraction=0.2))
    assert splits == {"train": [f"row {i}" for i in range(8)], "val": ["row 8", "row 9"]}
    with pytest.raises(DataError, match=r"has no column 'text' \(columns: body, id\)"):
        load_splits(DataConfig(source=str(tmp_path / "a.parquet")))


def test_hf_ids_map_to_the_hub():
    assert hf_dataset_id("hf:wikitext-2-raw-v1") == ("Salesforce/wikitext", "wikitext-2-raw-v1", False)
    assert hf_dataset_id("hf:wikitext-103-raw-v1") == ("Salesforce/wikitext", "wikitext-103-raw-v1", True)
    assert hf_dataset_id("hf:tinystories") == ("roneneldan/TinyStories", None, True)
    assert hf_dataset_id("hf:user/repo:cfg") == ("user/repo", "cfg", True)
    with pytest.raises(DataError, match="names no dataset"):
        hf_dataset_id("hf:")


def test_hf_dataset_uses_its_own_validation_split(tmp_path):
    # The same code path as hf:tinystories, on a local folder laid out like a hub repo.
    repo = tmp_path / "stories"
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", [f"Once {i}." for i in range(30)] + [""])
    write_parquet(repo / "data" / "validation-00000-of-00001.parquet", ["Val one.", "Val two."])
    splits = load_splits(DataConfig(source=f"hf:{repo}", lowercase=True))
    assert splits["train"] == [f"once {i}." for i in range(30)]  # the empty row is dropped
    assert splits["val"] == ["val one.", "val two."]
    with pytest.raises(DataError, match="has no field 'story'"):
        load_splits(DataConfig(source=f"hf:{repo}", text_field="story"))


def test_hf_dataset_without_validation_split_and_wikitext_articles(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    rows = []
    for a in range(10):
        rows += ["", f" = Article {a} = \n", "", f" Text of {a} . \n", f" = = Section = = \n", f" More {a} . \n"]
    repo = tmp_path / "my-wikitext"
    write_parquet(repo / "train.parquet", rows)
    corpus = Corpus(DataConfig(source=f"hf:{repo}", val_fraction=0.2))
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    # one document per article; no validation split, so every 5th article is val
    assert [d.splitlines()[0] for d in val] == [" = Article 4 = ", " = Article 9 = "]
    assert len(train) == 8 and train[0] == " = Article 0 = \n Text of 0 . \n = = Section = = \n More 0 . \n"
    # not streamed (as hf:wikitext-2-raw-v1): the same rows
    loaded = load_hf(str(repo), None, streaming=False)
    assert list(loaded["train"]["text"]) == rows


def test_hf_errors_are_one_line(monkeypatch):
    hub_error = r"cannot load Hugging Face dataset 'Salesforce/wikitext' \(wikitext-2-raw-v1\)"
    with pytest.raises(DataError, match=hub_error):
        load_splits(DataConfig(source="hf:wikitext-2-raw-v1"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r"pip install 'slmkit\[hf\]'"):
        load_splits(DataConfig(source="hf:tinystories"))


# ---------------------------------------------------------------- tinyshakespeare over HTTP

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the clone (or beside a worktree's parent); a user's clone has none
SHARED_TINYSHAKESPEARE = next(
    (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if (p / "data/tinyshakespeare.txt").is_file()),
    None,
)


@contextmanager
def http_server(folder):
    """A local HTTP server on 127.0.0.1 serving `folder`."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.skipif(SHARED_TINYSHAKESPEARE is None, reason="needs ../shared/data/tinyshakespeare.txt")
def test_tinyshakespeare_is_downloaded_verified_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    with http_server(SHARED_TINYSHAKESPEARE / "data") as url:
        monkeypatch.setenv("SLMKIT_TINYSHAKESPEARE_URL", f"{url}/tinyshakespeare.txt")
        splits = load_splits(DataConfig(source="tinyshakespeare"))
    cached = tmp_path / "cache" / "tinyshakespeare.txt"
    assert cached.stat().st_size == 1_115_394
    assert splits["train"][0].startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert len(splits["train"][0]) + len(splits["val"][0]) == 1_115_394
    monkeypatch.setenv("SLMKIT_TINYSHAKESPEARE_URL", "http://127.0.0.1:9/nothing")  # no server: the cache is used
    assert load_splits(DataConfig(source="tinyshakespeare")) == splits


def test_download_with_a_wrong_hash_or_no_server_leaves_nothing(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_bytes(b"not shakespeare\n")
    dest = tmp_path / "cache" / "input.txt"
    with http_server(served) as url:
        with pytest.raises(DataError, match=r"input.txt has sha256 .*expected 86c4e6aa9db7"):
            fetch_verified(f"{url}/input.txt", dest, 16, TINYSHAKESPEARE_SHA256)
        with pytest.raises(DataError, match=r"gave 16 bytes, expected 1115394"):
            fetch_verified(f"{url}/input.txt", dest, 1_115_394, TINYSHAKESPEARE_SHA256)
        with pytest.raises(DataError, match=r"cannot download .*missing.txt"):
            fetch_verified(f"{url}/missing.txt", dest, 16, TINYSHAKESPEARE_SHA256)
    assert list(dest.parent.iterdir()) == []
