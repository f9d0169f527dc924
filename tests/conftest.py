import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the network: a hub call fails at once.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models run fastest on one thread (and the CLI processes the tests start inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_TEXT = (
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "And God said, Let there be light: and there was light.\n"
) * 40


@pytest.fixture
def tiny_corpus(tmp_path):
    """A small text file the tests write themselves."""
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


def tiny_settings(corpus: Path, shard_dir: Path) -> dict:
    """Overrides that make any recipe a seconds-long run of a 2-layer, 32-wide model on `corpus`."""
    return {
        "data.source": str(corpus),
        "data.shard_dir": str(shard_dir),
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.n_embd": 32,
        "model.block_size": 32,
        "train.batch_size": 8,
        "train.max_steps": 20,
        "train.max_minutes": 0,
        "train.warmup_steps": 5,
        "train.eval_interval": 10,
        "train.eval_batches": 2,
        "train.log_interval": 5,
        "sample.max_new_tokens": 20,
    }


@pytest.fixture
def tiny_overrides(tiny_corpus, tmp_path):
    """Overrides that make any recipe a seconds-long run of a 2-layer, 32-wide model."""
    return tiny_settings(tiny_corpus, tmp_path / "shards")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One trained tiny run folder of the GPT-2-style char reference (kjv-char-gpt2: it exports to every
    format and its tokenizer is characters) shared by the tests that only read it (do not modify it)."""
    from slmkit.config import load_recipe
    from slmkit.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    train(load_recipe("kjv-char-gpt2", tiny_settings(corpus, root / "shards")), out=root / "run", progress_bar=False)
    return root / "run"


@pytest.fixture(scope="session")
def trained_run(tiny_run):
    """The shared tiny run, for tests that copy it before changing it."""
    return tiny_run
