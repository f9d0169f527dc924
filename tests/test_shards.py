import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmkit.config import RunConfig
from slmkit.data import prepare as prepare_module
from slmkit.data import sources
from slmkit.data.shards import HEADER_SIZE, MAGIC, SPLITS, Shard, ShardWriter, describe
from slmkit.data.prepare import load_prepared, prepare
from slmkit.data.sampler import WindowSampler, windows
from slmkit.errors import DataError
from slmkit.tokenizer import CharTokenizer


def write_shard(path, tokens, vocab_size, pieces=1):
    """The tokens through the writer `slm prepare` uses, in `pieces` appends."""
    with ShardWriter(path, vocab_size) as writer:
        for part in np.array_split(np.asarray(tokens), pieces):
            writer.write(part)


def test_write_read_header_and_tokens(tmp_path):
    tokens = np.arange(1000) % 65
    write_shard(tmp_path / "a.bin", tokens, vocab_size=65, pieces=7)
    raw = (tmp_path / "a.bin").read_bytes()
    magic, version, itemsize, vocab, count = struct.unpack("<8sIIQQ", raw[:HEADER_SIZE])
    assert (magic, version, itemsize, vocab, count) == (MAGIC, 1, 2, 65, 1000)
    assert len(raw) == HEADER_SIZE + 2 * 1000
    shard = Shard(tmp_path / "a.bin")
    assert shard.dtype == np.uint16 and shard.vocab_size == 65
    np.testing.assert_array_equal(shard.tokens, tokens)


def test_large_vocab_uses_uint32(tmp_path):
    tokens = np.array([0, 70000, 5])
    write_shard(tmp_path / "b.bin", tokens, vocab_size=100_000)
    shard = Shard(tmp_path / "b.bin")
    assert shard.dtype == np.uint32
    np.testing.assert_array_equal(shard.tokens, tokens)


@pytest.mark.parametrize("ids", [[1, 70], [1, -1], [65], [2**16 + 3], [-(2**40)], [2**40]])
def test_ids_outside_vocab_are_refused_and_leave_no_file(tmp_path, ids):
    with pytest.raises(DataError, match=r"c.bin: token ids outside \[0, 65\)"):
        with ShardWriter(tmp_path / "c.bin", 65) as writer:
            writer.write([0, 1, 2])  # a good piece first: the partial file must go too
            writer.write(ids)
    assert list(tmp_path.iterdir()) == []


def test_wrong_magic_and_truncation_rejected(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(100), vocab_size=100)
    raw = bytearray((tmp_path / "a.bin").read_bytes())
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"NOTSHARD" + bytes(raw[8:]))
    with pytest.raises(DataError, match="bad magic"):
        Shard(bad)
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(raw[:-10]))
    with pytest.raises(DataError, match="truncated"):
        Shard(short)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"SLM")
    with pytest.raises(DataError, match="too short"):
        Shard(tiny)


def test_sampler_windows_are_shifted_and_resume_exactly(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(500) % 97, vocab_size=97)
    shard = Shard(tmp_path / "a.bin")
    sampler = WindowSampler(shard, seq_len=16, batch_size=4, seed=0)
    x, y = sampler.next()
    assert x.shape == y.shape == (4, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    state = sampler.state()
    expected = sampler.next()
    sampler.set_state(state)
    again = sampler.next()
    assert (expected[0] == again[0]).all()
    with pytest.raises(DataError, match="fewer than one window"):
        WindowSampler(shard, seq_len=500, batch_size=1, seed=0)


@given(length=st.integers(0, 200), block_size=st.integers(1, 40), batch_size=st.integers(1, 5))
def test_consecutive_windows_predict_every_token_once(length, block_size, batch_size):
    tokens = np.arange(length) * 7 % 101  # as a shard's memmapped array; a list of ids (serve's prompt) too
    batches = list(windows(tokens, block_size, batch_size))
    rows = [row for batch in batches for row in batch.tolist()]
    assert all(b.dtype == torch.int64 and b.shape[0] <= batch_size for b in batches)
    assert all(len(row) == block_size + 1 for row in rows[:-1])  # only the last window may be shorter
    assert [t for row in rows for t in row[1:]] == tokens[1:].tolist()  # every target once, in order
    assert [row[0] for row in rows] == tokens[: max(length - 1, 0) : block_size].tolist()  # each from scratch
    assert [b.tolist() for b in windows(tokens.tolist(), block_size, batch_size)] == [b.tolist() for b in batches]


def test_prepare_splits_kjv_by_verse(tmp_path):
    cfg = RunConfig()
    cfg.data.shard_dir = str(tmp_path / "kjv")
    out = prepare(cfg, log=lambda *_: None)
    tokenizer, shards, manifest = load_prepared(out)
    assert manifest["splits"]["train"]["documents"] == 27992  # int(0.9 * 31,103)
    assert manifest["splits"]["val"]["documents"] == 31103 - 27992  # 31,103 verses
    # fitted on the train split only: '[' and ']' occur once each in the val split and nowhere in train
    assert tokenizer.vocab_size == 63 and tokenizer.unknown_chars("[]") == ["[", "]"]
    assert (manifest["splits"]["train"]["dropped_chars"], manifest["splits"]["val"]["dropped_chars"]) == (0, 2)
    assert tokenizer.decode(shards["train"].tokens[:55].tolist()) == "In the beginning God created the heaven and the earth.\n"
    assert tokenizer.decode(shards["val"].tokens[-58:].tolist()).endswith("The grace of our Lord Jesus Christ be with you all. Amen.\n")
    # a complete folder is reused, an incomplete one (no manifest) is rebuilt
    assert prepare(cfg, log=lambda *_: None) == out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    magic=st.one_of(st.just(MAGIC), st.binary(min_size=8, max_size=8)),
    version=st.one_of(st.just(1), st.integers(0, 2**32 - 1)),
    itemsize=st.one_of(st.sampled_from([2, 4]), st.integers(0, 2**32 - 1)),
    vocab_size=st.integers(0, 2**64 - 1),
    count=st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)),
    body=st.binary(max_size=256),
)
def test_random_headers_are_rejected_or_read_exactly(tmp_path, magic, version, itemsize, vocab_size, count, body):
    """Any header either loads a shard whose length is its count and whose bytes are its body, or raises DataError."""
    path = tmp_path / "fuzz.bin"
    path.write_bytes(struct.pack("<8sIIQQ", magic, version, itemsize, vocab_size, count) + body)
    try:
        shard = Shard(path)
    except DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert (magic, version, itemsize) == (MAGIC, 1, itemsize) and itemsize in (2, 4)
    assert len(shard) == count and len(body) == count * itemsize
    assert shard.tokens.tobytes() == body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=80))
def test_random_bytes_are_never_taken_for_a_shard(tmp_path, data):
    path = tmp_path / "junk.bin"
    path.write_bytes(data)
    with pytest.raises(DataError):
        Shard(path)


def test_sampler_reads_through_a_memmap_so_memory_does_not_grow_with_the_corpus(tmp_path):
    """The sampler keeps the shard's memmap (no in-memory copy) and copies only its windows per batch."""
    write_shard(tmp_path / "a.bin", np.arange(200_000) % 97, vocab_size=97)
    shard = Shard(tmp_path / "a.bin")
    sampler = WindowSampler(shard, seq_len=16, batch_size=4, seed=0)
    assert isinstance(shard.tokens, np.memmap) and sampler.tokens is shard.tokens
    assert not shard.tokens.flags.writeable and Path(shard.tokens.filename) == (tmp_path / "a.bin").resolve()
    x, _ = sampler.next()
    assert x.numel() == 4 * 16 and not np.shares_memory(x.numpy(), shard.tokens)


def corpus_folder(tmp_path, n=12):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(n):
        text = f"Document {i}: " + "and the earth was without form. " * (i + 1)
        (folder / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


def gpt2_config(source, shard_dir, workers):
    cfg = RunConfig()
    cfg.data.source, cfg.data.shard_dir, cfg.data.num_workers = str(source), str(shard_dir), workers
    cfg.tokenizer.kind = "gpt2"
    return cfg


def test_parallel_streaming_prepare_equals_encoding_each_document(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 200)  # many batches, so the worker pool and ordering are exercised
    folder = corpus_folder(tmp_path)
    one = prepare(gpt2_config(folder, tmp_path / "one", 1), log=lambda *_: None)
    two = prepare(gpt2_config(folder, tmp_path / "two", 2), log=lambda *_: None)
    tokenizer, split_shards, manifest = load_prepared(two)
    docs = [p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())]
    expected = [i for d in docs[:10] for i in tokenizer.encode(d) + [50256]]
    np.testing.assert_array_equal(split_shards["train"].tokens, expected)
    assert split_shards["train"].dtype == np.uint16 and split_shards["train"].vocab_size == 50257
    assert manifest["splits"]["val"] == {
        "tokens": len(tokenizer.encode(docs[10])) + len(tokenizer.encode(docs[11])) + 2,
        "documents": 2,
        "bytes": len(docs[10]) + len(docs[11]),
        "dropped_chars": 0,
    }
    for split in SPLITS:
        assert (one / f"{split}.bin").read_bytes() == (two / f"{split}.bin").read_bytes()


def test_big_single_file_streams_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.files, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 5000)
    text = "".join(f"Verse {i}. And God saw the light, that it was good.\n" for i in range(3000))
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    out = prepare(gpt2_config(tmp_path / "big.txt", tmp_path / "s", 2), log=lambda *_: None)
    tokenizer, split_shards, manifest = load_prepared(out)
    cut = int(len(text) * 0.9)
    np.testing.assert_array_equal(split_shards["train"].tokens, tokenizer.encode(text[:cut]) + [50256])
    np.testing.assert_array_equal(split_shards["val"].tokens, tokenizer.encode(text[cut:]) + [50256])
    assert manifest["splits"]["train"]["documents"] == manifest["splits"]["val"]["documents"] == 1


def test_an_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    folder = corpus_folder(tmp_path)
    cfg = gpt2_config(folder, tmp_path / "shards", 1)
    original = sources.Corpus.pieces

    def interrupted(self, split):
        if split == "val":
            raise KeyboardInterrupt
        return original(self, split)

    monkeypatch.setattr(sources.Corpus, "pieces", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == [folder]  # no shard folder, no staging folder
    # a run killed outright leaves its hidden staging folder: the next run removes it
    (tmp_path / ".shards.abc123.tmp").mkdir()
    (tmp_path / ".shards.abc123.tmp" / "train.bin").write_bytes(b"partial")
    monkeypatch.setattr(sources.Corpus, "pieces", original)
    out = prepare(cfg, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "shards"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json", "train.bin", "val.bin"]


def test_empty_corpus_leaves_nothing(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text("\n\n")
    cfg = gpt2_config(folder, tmp_path / "shards", 1)
    cfg.data.drop_empty_lines = True
    with pytest.raises(DataError, match="has no text"):
        prepare(cfg, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == [folder]


def test_tokenizer_of_another_kind_in_a_shard_folder_is_refused(tmp_path):
    out = prepare(gpt2_config(corpus_folder(tmp_path), tmp_path / "s", 1), log=lambda *_: None)
    CharTokenizer.fit(["abc"]).save(out / "tokenizer.json")
    with pytest.raises(DataError, match="holds a 'char' tokenizer, expected 'gpt2'"):
        load_prepared(out)


def test_describe_a_shard_folder_and_file(tmp_path):
    out = prepare(gpt2_config(corpus_folder(tmp_path), tmp_path / "s", 1), log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    lines = describe(out).splitlines()
    assert lines[0].split() == ["split", "tokens", "documents", "dtype", "vocab", "file", "bytes", "text", "bytes"]
    assert lines[1].split() == [
        "train", f"{train['tokens']:,}", "10", "uint16", "50257", f"{32 + 2 * train['tokens']:,}", f"{train['bytes']:,}"
    ]
    assert lines[3].split()[:3] == ["total", f"{train['tokens'] + val['tokens']:,}", "12"]
    assert describe(out / "val.bin").splitlines()[1].split()[:3] == ["val", f"{val['tokens']:,}", "2"]
    with pytest.raises(DataError, match="does not exist"):
        describe(tmp_path / "nothing")


def test_a_bad_file_found_while_encoding_leaves_nothing(tmp_path):
    folder = corpus_folder(tmp_path)
    (folder / "99.txt").write_bytes(b"fine text, then \xff")  # the last document: read only while encoding val
    with pytest.raises(DataError, match=r"99.txt is not UTF-8 text \(bad byte at offset 16\)"):
        prepare(gpt2_config(folder, tmp_path / "new" / "shards", 2), log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


# --- issue 23: honest splits, small corpora, line endings, one shard folder per text ------------------


def word_config(source, shard_dir, **tokenizer):
    cfg = RunConfig()
    cfg.data.source, cfg.data.shard_dir, cfg.data.num_workers = str(source), str(shard_dir), 1
    cfg.data.val_fraction = 0.25
    cfg.tokenizer.kind, cfg.tokenizer.min_frequency = "word", 1
    for key, value in tokenizer.items():
        setattr(cfg.tokenizer, key, value)
    return cfg.validate()


@pytest.mark.parametrize("kind", ["word", "wordpiece", "bpe"])
def test_tokenizer_is_fitted_on_the_train_split_only(tmp_path, kind):
    """Issue 23.2: a word that only the val split holds is not in the vocabulary."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text("the earth was without form and void\n" * 20, encoding="utf-8")
    (folder / "3.txt").write_text("zyzzyva quagga\n" * 20, encoding="utf-8")  # the val split (last quarter)
    out = prepare(word_config(folder, tmp_path / "shards", kind=kind, vocab_size=300), log=lambda *_: None)
    tokenizer, split_shards, _ = load_prepared(out)
    vocab = tokenizer.backend.get_vocab()
    assert "earth" in vocab or "Ġearth" in vocab
    assert not any("zyzzyva" in piece or "quagga" in piece for piece in vocab)
    if tokenizer.unk_id is not None:
        assert tokenizer.unk_id in split_shards["val"].tokens.tolist()


@pytest.mark.parametrize("kind, asked", [("bpe", 4000), ("wordpiece", 4000), ("word", 4000)])
def test_a_fit_that_learns_fewer_tokens_than_asked_says_so(tmp_path, kind, asked):
    """Issue 23.7: one short text cannot give 4,000 tokens; prepare says how many it got."""
    (tmp_path / "one.txt").write_text("and the earth was without form\n" * 50, encoding="utf-8")
    lines = []
    out = prepare(word_config(tmp_path / "one.txt", tmp_path / "s", kind=kind, vocab_size=asked), log=lines.append)
    vocab = load_prepared(out)[0].vocab_size
    assert vocab < asked
    assert any(f"tokenizer.vocab_size={asked:,} asked" in line and f"only {vocab:,} {kind} tokens" in line for line in lines)
    lines.clear()
    prepare(word_config(tmp_path / "one.txt", tmp_path / "t", kind=kind, vocab_size=vocab), log=lines.append)
    assert not any("asked" in line for line in lines)  # a reachable size says nothing


def test_crlf_becomes_lf_unless_kept(tmp_path):
    """Issue 23.8: Windows line endings give the same tokens as Unix ones by default."""
    (tmp_path / "unix.txt").write_bytes(b"first line\nsecond line\n" * 30)
    (tmp_path / "windows.txt").write_bytes(b"first line\r\nsecond line\r\n" * 30)
    char = {"kind": "char"}
    unix = load_prepared(prepare(word_config(tmp_path / "unix.txt", tmp_path / "u", **char), log=lambda *_: None))
    windows = load_prepared(prepare(word_config(tmp_path / "windows.txt", tmp_path / "w", **char), log=lambda *_: None))
    assert "\r" not in windows[0].chars
    np.testing.assert_array_equal(unix[1]["train"].tokens, windows[1]["train"].tokens)
    kept = word_config(tmp_path / "windows.txt", tmp_path / "k", **char)
    kept.data.keep_crlf = True
    tokenizer, split_shards, _ = load_prepared(prepare(kept, log=lambda *_: None))
    assert "\r" in tokenizer.chars and tokenizer.decode(split_shards["train"].tokens[:13].tolist()) == "first line\r\ns"


def test_folder_and_glob_forms_of_one_source_share_a_shard_folder(tmp_path, monkeypatch):
    """Issue 23.9: `sotu`, `sotu/` and `sotu/*.txt` are the same files, so one shard folder; the run is named after them."""
    from slmkit.config import load_recipe
    from slmkit.data.prepare import shard_dir_for

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sotu").mkdir()
    for i in range(3):
        (tmp_path / "sotu" / f"{i}.txt").write_text(f"speech {i}\n", encoding="utf-8")
    cfgs = [load_recipe(None, {"data.source": s, "tokenizer.kind": "bpe"}) for s in ("sotu", "sotu/", "sotu/*.txt")]
    assert len({shard_dir_for(cfg) for cfg in cfgs}) == 1 and shard_dir_for(cfgs[0]).name.startswith("sotu-bpe-")
    assert {cfg.name for cfg in cfgs} == {"sotu-bpe"}
    assert load_recipe(None).name == "kjv-bpe" and load_recipe("shakespeare-char").name == "shakespeare-char"
    (tmp_path / "sotu" / "notes.md").write_text("not a speech\n", encoding="utf-8")  # now the forms differ
    assert shard_dir_for(load_recipe(None, {"data.source": "sotu"})) != shard_dir_for(
        load_recipe(None, {"data.source": "sotu/*.txt"})
    )
