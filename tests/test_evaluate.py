import math
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from slmkit.config import ModelConfig, load_recipe
from slmkit.data.sources import Corpus
from slmkit.errors import DataError
from slmkit.evaluate import evaluate_run, mean_loss, report, split_tokens, text_tokens
from slmkit.model import GPT
from slmkit.runs import LOG, load_run
from slmkit.tokenizer.hf import WORD_PATTERN
from slmkit.train import train


def by_hand(model: GPT, tokens: list[int]) -> float:
    """Mean next-token cross-entropy with an explicit log-softmax, one window of block_size at a time."""
    T = model.config.block_size
    nll = []
    with torch.no_grad():
        for s in range(0, len(tokens) - 1, T):
            window = tokens[s : s + T + 1]
            logits, _ = model(torch.tensor([window[:-1]]))
            logits = logits[0].double()
            log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            nll += [-log_probs[i, window[i + 1]].item() for i in range(len(window) - 1)]
    return sum(nll) / len(nll)


def test_mean_loss_matches_hand_computed_cross_entropy():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=11)).eval()
    tokens = list(torch.randint(0, 11, (30,)).tolist())  # 29 targets: 3 full windows and a short one
    expected = by_hand(model, tokens)
    assert mean_loss(model, np.array(tokens), batch_size=2) == pytest.approx(expected, abs=1e-5)
    r = report(expected, 29, 58)
    assert r["perplexity"] == pytest.approx(math.exp(expected))
    assert r["bits_per_byte"] == pytest.approx(expected / math.log(2) * 29 / 58)


def test_evaluate_run_on_a_text_file(tiny_run, tmp_path):
    text = "And God said, Let there be light.\n"
    path = tmp_path / "eval.txt"
    path.write_text(text, encoding="utf-8")
    run = load_run(tiny_run)
    result = evaluate_run(tiny_run, source=str(path))
    ids = [run.tokenizer.eot_id] + run.tokenizer.encode(text)  # eot in front: every character is predicted
    loss = by_hand(run.model, ids)
    assert result.tokens == len(text) and result.text_bytes == len(text.encode())
    assert result.metrics["loss"] == pytest.approx(loss, abs=1e-5)
    assert result.metrics["bits_per_byte"] == pytest.approx(loss / math.log(2) * len(text) / len(text), abs=1e-5)


def test_evaluate_run_on_val_split_matches_training_report(tiny_run):
    result = evaluate_run(tiny_run)
    run = load_run(tiny_run)
    tokens, manifest_bytes = split_tokens(run.config, "val")
    docs = list(Corpus(run.config.data).documents("val"))
    # bits per byte over the bytes of the text itself: the manifest's count, end-of-text markers not counted
    assert result.source == "val split" and result.tokens == len(tokens) - 1 > 100
    assert result.text_bytes == manifest_bytes == sum(len(doc.encode("utf-8")) for doc in docs)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(result.metrics["loss"]))
    assert result.metrics["bits_per_byte"] == pytest.approx(result.metrics["loss"] / math.log(2) * result.tokens / manifest_bytes)
    assert result.unknown_share is None  # char: lossless
    # the end of training printed exactly these numbers
    assert f"on the {result.summary()}\n" in (tiny_run / LOG).read_text()


def test_a_lossy_tokenizer_reports_the_bytes_it_could_not_represent(tmp_path, tiny_overrides):
    overrides = dict(tiny_overrides, **{"tokenizer.kind": "word", "tokenizer.vocab_size": 12, "train.max_steps": 4,
                                        "train.eval_interval": 4})  # fmt: skip
    trained = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    result = evaluate_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    # by hand: the bytes of the val text's pieces (words, marks, spaces) that are not in the vocabulary
    vocab = run.tokenizer.backend.get_vocab()
    docs = list(Corpus(run.config.data).documents("val"))
    assert result.text_bytes == sum(len(doc.encode()) for doc in docs)
    unknown = sum(len(piece.encode()) for doc in docs for piece in re.findall(WORD_PATTERN, doc) if piece not in vocab)
    assert 0 < result.unknown_share == pytest.approx(unknown / result.text_bytes)
    assert f"not comparable across tokenizers: {result.unknown_share:.2%} of the bytes" in result.summary()
    assert trained.final_val.unknown_share == result.unknown_share
    assert f"on the {result.summary()}\n" in (tmp_path / "run" / LOG).read_text()


def test_test_split_missing_is_a_clear_error(tiny_run):
    with pytest.raises(DataError, match="no 'test' split"):
        evaluate_run(tiny_run, split="test")


def test_documents_are_joined_with_eot(tiny_run, tmp_path):
    (tmp_path / "a.txt").write_text("And", encoding="utf-8")
    (tmp_path / "b.txt").write_text("God", encoding="utf-8")
    run = load_run(tiny_run)
    tokens, n_bytes, _ = text_tokens(run.config, run.tokenizer, str(tmp_path))
    eot = run.tokenizer.eot_id
    assert tokens.tolist() == [eot, *run.tokenizer.encode("And"), eot, *run.tokenizer.encode("God")]
    assert n_bytes == 6


def test_text_with_characters_the_tokenizer_lacks_is_refused_or_dropped(tiny_run, tmp_path):
    """Issue 23.6: the default names the option; --data.unknown=drop evaluates the rest and says how much went."""
    from slmkit.cli import main

    path = tmp_path / "other.txt"
    path.write_text("And God said \u263a\u263a, Let there be light \u00a7.\n", encoding="utf-8")
    with pytest.raises(DataError, match="--data.unknown=drop"):
        evaluate_run(tiny_run, source=str(path))
    result = evaluate_run(tiny_run, source=str(path), unknown="drop")
    plain = tmp_path / "plain.txt"
    plain.write_text("And God said , Let there be light .\n", encoding="utf-8")
    expected = evaluate_run(tiny_run, source=str(plain))
    assert result.dropped_chars == 3 and "3 characters the tokenizer lacks were dropped" in result.summary()
    assert (result.tokens, result.text_bytes) == (expected.tokens, expected.text_bytes)
    assert result.metrics["loss"] == pytest.approx(expected.metrics["loss"], abs=1e-6)
    assert main(["eval", "--run", str(tiny_run), "--data.source", str(path), "--data.unknown", "drop"]) == 0
    assert main(["eval", "--run", str(tiny_run), "--data.source", str(path)]) == 1
