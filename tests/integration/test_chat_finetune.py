"""`slm finetune --data.format chat`: grown embedding, the loss on assistant tokens only, exact resume."""

import csv
import importlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from slmkit.chat import SPECIAL_TOKENS, arithmetic_reversal_set
from slmkit.config import load_recipe
from slmkit.data.chat import IGNORE, chat_sampler, masked_loss
from slmkit.data.prepare import shard_dir_for
from slmkit.data.shards import Shard
from slmkit.finetune import finetune
from slmkit.runs import BEST, CHAT_TEMPLATE, LAST, METRICS, load_run
from slmkit.tokenizer import ChatTokenizer
from slmkit.train import train

engine = importlib.import_module("slmkit.train")
PLAIN = "What is the word? Reverse: the order of 0123456789 and abcdefghijklmnopqrstuvwxyz plus more.\n" * 30


@pytest.fixture
def base_and_chat(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.chdir(tmp_path)  # fine-tuning writes shards/ under the working folder
    (tmp_path / "plain.txt").write_text(PLAIN, encoding="utf-8")
    overrides = {**tiny_overrides, "data.source": str(tmp_path / "plain.txt"), "train.max_steps": 6}
    train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "base", progress_bar=False)
    with open(tmp_path / "chat.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in arithmetic_reversal_set(200, seed=0))
    return tmp_path / "base", tmp_path / "chat.jsonl"


FAST = {"data.format": "chat", "train.max_steps": 8, "train.eval_interval": 4, "train.warmup_steps": 2, "data.num_workers": 1}


def test_chat_finetune_grows_the_vocabulary_and_counts_assistant_tokens_only(tmp_path, base_and_chat):
    base, data = base_and_chat
    result = finetune(base, {**FAST, "data.source": str(data)}, out=tmp_path / "chat", progress_bar=False)
    run, before = load_run(tmp_path / "chat"), load_run(base)
    assert isinstance(run.tokenizer, ChatTokenizer) and (tmp_path / "chat" / CHAT_TEMPLATE).is_file()
    n = before.tokenizer.vocab_size
    assert run.config.model.vocab_size == n + len(SPECIAL_TOKENS)
    # the embedding grew by the markers' rows; the old rows started from the base run's weights
    assert run.model.transformer.wte.weight.shape[0] == n + len(SPECIAL_TOKENS)
    assert not run.model.transformer.wte.weight[:n].equal(before.model.transformer.wte.weight)  # trained on
    assert (run.model.transformer.wte.weight[:n] - before.model.transformer.wte.weight).abs().max() < 0.05
    # evaluation is the masked loss: the final report equals masked_loss over every val conversation
    val = chat_sampler(shard_dir_for(run.config), "val", run.tokenizer, 32, 8, 0)
    loss, counted = masked_loss(run.model, val.every_conversation())
    assert result.final_val.metrics["loss"] == pytest.approx(loss) and result.final_val.tokens == counted
    batches = val.every_conversation()
    everything = sum(int(x.numel()) for x, _ in batches)
    assert 0 < counted < everything / 3  # prompt tokens (and padding) are not counted
    _, logits_loss = run.model(batches[0][0], torch.where(batches[0][1] == IGNORE, batches[0][0], batches[0][1]))
    assert abs(logits_loss.item() - loss) > 1e-3  # an unmasked loss differs
    rows = list(csv.DictReader(open(tmp_path / "chat" / METRICS)))
    assert [r["step"] for r in rows if r["val_loss"]] == ["4", "8"]


def test_chat_finetune_resumes_exactly(tmp_path, base_and_chat, monkeypatch):
    base, data = base_and_chat
    overrides = {**FAST, "data.source": str(data)}
    finetune(base, overrides, out=tmp_path / "full", progress_bar=False)
    original = engine.save_checkpoint

    def checkpoint_then_crash(run_dir, model, state, keep_last_k):
        original(run_dir, model, state, keep_last_k)
        if state["step"] == 4:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(engine, "save_checkpoint", checkpoint_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(base, overrides, out=tmp_path / "crashed", progress_bar=False)
    monkeypatch.setattr(engine, "save_checkpoint", original)
    train(resume=tmp_path / "crashed", progress_bar=False)
    for name in (LAST, BEST):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "crashed" / name)
        assert all(a[k].equal(b[k]) for k in a), name


def test_eval_of_a_chat_run_is_the_masked_loss_on_chat_data_and_every_token_on_text(tmp_path, base_and_chat, capsys):
    from slmkit.cli import main
    from slmkit.data.chat import ChatSampler, encode_conversations, read_conversations
    from slmkit.evaluate import CHAT_LOSS, TEXT_LOSS, evaluate_run, mean_loss, text_tokens

    base, data = base_and_chat
    result = finetune(base, {**FAST, "data.source": str(data)}, out=tmp_path / "chat", progress_bar=False)
    run = load_run(tmp_path / "chat")
    # its own val split: the masked loss the training reported, and the output says which loss it is
    split = evaluate_run(tmp_path / "chat")
    assert split.source == f"val split {CHAT_LOSS}"
    assert split.metrics["loss"] == pytest.approx(result.final_val.metrics["loss"])
    assert split.tokens == result.final_val.tokens
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "chat")]) == 0
    assert capsys.readouterr().out.startswith("val split (chat: the loss on the assistant's tokens only): ")
    # a .jsonl of conversations: the masked loss over every conversation in it (train and val alike)
    whole = evaluate_run(tmp_path / "chat", source=str(data))
    conversations = sum(read_conversations(str(data)).values(), [])
    ids, mask, trained_bytes = encode_conversations(run.tokenizer, conversations)
    windows = ChatSampler(ids, mask, 32, 8, 0, run.tokenizer.eot_id).every_conversation()
    assert whole.source == f"{data} {CHAT_LOSS}" and whole.text_bytes == trained_bytes
    assert whole.metrics["loss"] == pytest.approx(masked_loss(run.model, windows)[0])
    assert abs(whole.metrics["loss"] - mean_loss(run.model, ids)) > 0.05  # not the loss on every token
    # plain text on a chat run: every token, and said so; a base run's eval is unchanged
    text = evaluate_run(tmp_path / "chat", source=str(tmp_path / "plain.txt"))
    tokens, _, _ = text_tokens(run.config, run.tokenizer, str(tmp_path / "plain.txt"))
    assert text.source == f"{tmp_path / 'plain.txt'} {TEXT_LOSS}"
    assert text.metrics["loss"] == pytest.approx(mean_loss(run.model, tokens))
    base_eval = evaluate_run(base)
    assert base_eval.source == "val split" and base_eval.metrics["loss"] == pytest.approx(
        mean_loss(load_run(base).model, np.asarray(Shard(shard_dir_for(load_run(base).config) / "val.bin").tokens))
    )
