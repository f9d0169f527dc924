"""The chat template, chat records and chat fine-tuning (slmkit/chat.py, tokenizer/chat.py, data/chat.py)."""

import json
import re

import jinja2.sandbox
import pytest
import torch

from slmkit.chat import CHAT_TEMPLATE, END, SPECIAL_TOKENS, arithmetic_reversal_set, parse_line, render
from slmkit.config import DataConfig
from slmkit.data.chat import IGNORE, TRAINED, ChatSampler, encode_conversations, read_conversations
from slmkit.errors import ConfigError, DataError
from slmkit.tokenizer import CharTokenizer, ChatTokenizer, load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "Reverse: ab"},
    {"role": "assistant", "content": "ba"},
]


def char_chat() -> ChatTokenizer:
    return ChatTokenizer(CharTokenizer.fit(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?:.,"]))


@pytest.mark.parametrize("generation", [False, True])
def test_jinja_template_renders_what_slmkit_trains_on(generation):
    # transformers' apply_chat_template renders the template with jinja2 like this
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    jinja = env.from_string(CHAT_TEMPLATE).render(messages=CONVERSATION, add_generation_prompt=generation)
    assert jinja == render(CONVERSATION, add_generation_prompt=generation)
    assert jinja.startswith("<|system|>Be brief.<|end|><|user|>")
    assert jinja.endswith("<|assistant|>ba<|end|>" + ("<|assistant|>" if generation else ""))


def test_transformers_apply_chat_template_matches_slmkit():
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=_hf_backend(), chat_template=CHAT_TEMPLATE)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == render(CONVERSATION, add_generation_prompt=True)


def _hf_backend():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))


def test_markers_are_special_ids_after_the_vocabulary_and_only_assistant_tokens_are_trained():
    tok = char_chat()
    base = tok.base.vocab_size
    assert tok.vocab_size == base + len(SPECIAL_TOKENS)
    ids, trained = tok.encode_chat(CONVERSATION)
    assert tok.decode(ids) == render(CONVERSATION)
    assert [i for i in ids if i >= base] == [base + SPECIAL_TOKENS.index(t) for t in
                                             ["<|system|>", END, "<|user|>", END, "<|assistant|>", END, "<|user|>", END, "<|assistant|>", END]]
    # trained: "5", its END, "ba", its END
    assert tok.decode([i for i, t in zip(ids, trained) if t]) == "5" + END + "ba" + END
    # text never becomes a marker: "<|end|>" typed by a user is ordinary characters (char: refused as unknown)
    assert all(i < base for i in tok.encode("abc <"[:3]))


def test_chat_tokenizer_saves_beside_the_base_and_loads_back(tmp_path):
    tok = char_chat()
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "chat_template.json").read_text())["chat_template"] == CHAT_TEMPLATE
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(loaded, ChatTokenizer) and loaded.encode_chat(CONVERSATION) == tok.encode_chat(CONVERSATION)
    (tmp_path / "other").mkdir()
    CharTokenizer.fit(["xyz"]).save(tmp_path / "other" / "tokenizer.json")
    (tmp_path / "other" / "chat_template.json").write_text((tmp_path / "chat_template.json").read_text())
    with pytest.raises(DataError, match="belong to different runs"):
        load_tokenizer(tmp_path / "other" / "tokenizer.json")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"data.jsonl:3 is not valid JSON"),
        ('{"text": "x"}', r"data.jsonl:3: no 'messages' \(nor 'prompt' and 'completion'\); keys: text"),
        ('{"messages": []}', r"data.jsonl:3: 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r"data.jsonl:3: message 0 has role 'bot'; valid: system"),
        ('{"messages": [{"role": "user", "content": 5}]}', r"data.jsonl:3: message 0 \(user\) has no string 'content'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"data.jsonl:3: no assistant message"),
        ('{"prompt": "hi", "completion": null}', r"data.jsonl:3: 'prompt' and 'completion' must both be strings"),
        ("[1, 2]", r"data.jsonl:3: a chat record is an object"),
    ],
)
def test_malformed_records_name_the_line_and_what_is_wrong(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b"})
    path.write_text(f"{good}\n\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_conversations(str(path))
    assert "\n" not in str(info.value)


def test_files_folders_globs_and_prompt_completion_pairs(tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n" * 2, encoding="utf-8")
    (folder / "b.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(9)))
    for source in (str(folder), str(folder / "*.jsonl")):
        splits = read_conversations(source, val_fraction=0.2)
        assert splits["train"][0] == CONVERSATION and len(splits["train"]) == 8
        assert splits["val"] == [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in (7, 8)]
    with pytest.raises(DataError, match="chat data is JSONL"):
        (tmp_path / "x.txt").write_text("hello")
        read_conversations(str(tmp_path / "x.txt"))
    with pytest.raises(ConfigError, match="data.format='dialog' must be 'text' or 'chat'"):
        DataConfig(format="dialog").validate()


def test_hf_dataset_with_a_messages_column(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    (tmp_path / "repo").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "repo" / "train.parquet")
    splits = read_conversations(f"hf:{tmp_path / 'repo'}", val_fraction=0.2)
    assert [c[0]["content"] for c in splits["val"]] == ["q4", "q9"]  # no validation split: every 5th row
    assert len(splits["train"]) == 8 and splits["train"][0][1] == {"role": "assistant", "content": "a0"}


def test_sampler_windows_start_at_a_conversation_and_mask_prompt_and_padding():
    tok = char_chat()
    convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "ab"[: i % 2 + 1]}] for i in range(5)]
    ids, mask, trained_bytes = encode_conversations(tok, convs)
    assert trained_bytes == 1 + 2 + 1 + 2 + 1
    sampler = ChatSampler(ids, mask, seq_len=16, batch_size=4, seed=0, pad_id=tok.eot_id)
    starts = set(sampler.starts.tolist())
    for x, y in [sampler.next() for _ in range(5)] + sampler.every_conversation():
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            assert row_x[0] == tok.special_ids["<|user|>"]
            # every counted target is an assistant token (or its END); the rest are ignored
            counted = [t for t in row_y if t != IGNORE]
            answers = ["".join("ab"[: k % 2 + 1] + END for k in range(i, 5)) for i in range(5)]
            assert any(a.startswith(tok.decode(counted)) for a in answers)
            assert counted and len(counted) < len(row_y)
    windows = sampler.every_conversation()
    assert sum(len(x) for x, _ in windows) == len(starts) == 5
    # the last window runs past the end: padded, its padding ignored
    last_x, last_y = windows[-1][0][-1], windows[-1][1][-1]
    assert last_x[-1].item() == tok.eot_id and last_y[-1].item() == IGNORE
    assert int((mask == TRAINED).sum()) == sum(len(c[1]["content"]) + 1 for c in convs)


def test_generated_set_is_right_and_disjoint():
    records = arithmetic_reversal_set(200, seed=0)
    held = arithmetic_reversal_set(50, seed=1, exclude=frozenset(r["prompt"] for r in records))
    assert not {r["prompt"] for r in records} & {r["prompt"] for r in held}
    for r in records:
        if r["prompt"].startswith("What is"):
            a, b = r["prompt"][len("What is ") : -1].split(" plus ")
            assert int(r["completion"]) == int(a) + int(b)
        else:
            assert r["completion"] == r["prompt"].removeprefix("Reverse: ")[::-1]
    assert parse_line(json.dumps(records[0]), "x:1")[1]["content"] == records[0]["completion"]


def tiny_chat_model(tok):
    from slmkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=tok.vocab_size)).eval()


def test_messages_reply_continues_after_the_assistant_marker_and_ends_at_end():
    from slmkit.generate import generate, sample_ids
    from slmkit.tokenizer.chat import chat_prompt

    tok = char_chat()
    model = tiny_chat_model(tok)
    messages = CONVERSATION[:2]
    ids = chat_prompt(tok, messages)
    assert tok.decode(ids) == render(messages, add_generation_prompt=True)
    raw = tok.decode(list(sample_ids(model, ids, max_new_tokens=40, temperature=1.0, seed=3)))
    reply = generate(model, tok, messages=messages, max_new_tokens=40, temperature=1.0, seed=3)
    assert reply == re.split("|".join(map(re.escape, SPECIAL_TOKENS)), raw)[0]  # the same tokens, up to a marker
    with pytest.raises(DataError, match="messages= needs a chat run"):
        generate(model, tok.base, messages=messages)
    with pytest.raises(DataError, match="message 0 has role 'bot'"):
        generate(model, tok, messages=[{"role": "bot", "content": "x"}])


def test_history_keeps_the_system_message_and_the_newest_turns_within_the_room():
    from slmkit.tokenizer.chat import chat_prompt, fit_history

    tok = char_chat()
    turns = [{"role": r, "content": f"{r[0]}{i}" * 3} for i in range(6) for r in ("user", "assistant")]
    kept = fit_history(tok, [CONVERSATION[0]] + turns, room=40)
    assert kept[0] == CONVERSATION[0] and kept[-1] == turns[-1] and kept[1]["role"] == "user"
    assert len(chat_prompt(tok, kept)) <= 40 < len(chat_prompt(tok, [kept[0]] + turns[-len(kept) - 1 :]))


def test_chat_loop_streams_replies_keeps_history_and_obeys_reset_and_exit():
    from slmkit.sampling import SamplingParams
    from slmkit.session import ChatSession, chat_loop

    tok = char_chat()
    session = ChatSession(tiny_chat_model(tok), tok, SamplingParams(max_new_tokens=8, temperature=0), system="Be brief.")
    out = []
    chat_loop(session, ["hi\n", "again\n"], out.append)
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert "".join(out).count("\n") == 2
    chat_loop(session, ["/reset\n", "hi\n", "/exit\n", "never\n"], out.append)
    assert [m["content"] for m in session.messages][:2] == ["Be brief.", "hi"] and len(session.messages) == 3
    with pytest.raises(DataError, match="needs a chat run"):
        ChatSession(tiny_chat_model(tok), tok.base, SamplingParams())


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_hf_export_carries_the_markers_and_the_chat_template(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    from slmkit.config import RunConfig
    from slmkit.export import export_hf
    from slmkit.model import GPT
    from slmkit.runs import BEST, save_weights, write_run_files
    from slmkit.tokenizer import fit_tokenizer
    from slmkit.config import TokenizerConfig

    text = ["Be brief. What is 2 plus 3? 5 Reverse: ab ba " * 20]
    tok = ChatTokenizer(char_chat().base if kind == "char" else fit_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), text))
    cfg = RunConfig()
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size = 2, 2, 32, 64
    cfg.model.vocab_size = tok.vocab_size
    cfg.tokenizer.kind = kind
    write_run_files(tmp_path / "run", cfg, tok)
    save_weights(GPT(cfg.model), tmp_path / "run" / BEST)
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.apply_chat_template(CONVERSATION, tokenize=False) == render(CONVERSATION)
    ids = hf.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tok.encode_chat(CONVERSATION, add_generation_prompt=True)[0]
