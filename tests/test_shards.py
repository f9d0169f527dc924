import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmkit.config import RunConfig
from slmkit.data.shards import HEADER_SIZE, MAGIC, BatchSampler, Shard, load_prepared, prepare, write_shard
from slmkit.errors import DataError


def test_write_read_header_and_tokens(tmp_path):
    tokens = np.arange(1000) % 65
    write_shard(tmp_path / "a.bin", tokens, vocab_size=65)
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


def test_ids_outside_vocab_are_refused(tmp_path):
    with pytest.raises(DataError, match="outside"):
        write_shard(tmp_path / "c.bin", np.array([1, 70]), vocab_size=65)
    assert not (tmp_path / "c.bin").exists()


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
    sampler = BatchSampler(shard, block_size=16, batch_size=4, seed=0)
    x, y = sampler.next()
    assert x.shape == y.shape == (4, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    state = sampler.state()
    expected = sampler.next()
    sampler.set_state(state)
    again = sampler.next()
    assert (expected[0] == again[0]).all()
    with pytest.raises(DataError, match="fewer than one block"):
        BatchSampler(shard, block_size=500, batch_size=1, seed=0)


def test_prepare_splits_kjv_by_verse(tmp_path):
    cfg = RunConfig()
    cfg.data.shard_dir = str(tmp_path / "kjv")
    out = prepare(cfg, log=lambda *_: None)
    tokenizer, shards, manifest = load_prepared(out)
    assert manifest["splits"]["train"]["documents"] == 27992  # int(0.9 * 31,103)
    assert manifest["splits"]["val"]["documents"] == 31103 - 27992  # 31,103 verses
    assert tokenizer.vocab_size == 65
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
    sampler = BatchSampler(shard, block_size=16, batch_size=4, seed=0)
    assert isinstance(shard.tokens, np.memmap) and sampler.tokens is shard.tokens
    assert not shard.tokens.flags.writeable and Path(shard.tokens.filename) == (tmp_path / "a.bin").resolve()
    x, _ = sampler.next()
    assert x.numel() == 4 * 16 and not np.shares_memory(x.numpy(), shard.tokens)
