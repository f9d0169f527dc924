"""A tokenizer with the chat template's special tokens (chat.SPECIAL_TOKENS) after its own vocabulary.

`ChatTokenizer(base)` gives the markers the ids base.vocab_size, base.vocab_size + 1, ...: where
Hugging Face's `add_special_tokens` puts added tokens, so an exported tokenizer can hold them at
the same ids. Ordinary text never becomes a marker (`encode` is the base's); `encode_chat` places
them. It saves as the base tokenizer's file plus TEMPLATE_FILE beside it (the markers and the
Jinja chat_template); `load_tokenizer` wraps a tokenizer file that has one beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text
from ..chat import CHAT_TEMPLATE, SPECIAL_TOKENS, Message, check_messages, segments
from ..errors import DataError
from .base import Tokenizer

TEMPLATE_FILE = "chat_template.json"


class ChatTokenizer(Tokenizer):
    """`base` plus the chat markers as special tokens."""

    def __init__(self, base: Tokenizer, specials: tuple[str, ...] = SPECIAL_TOKENS, template: str = CHAT_TEMPLATE):
        if isinstance(base, ChatTokenizer):
            base = base.base
        self.base, self.specials, self.template = base, tuple(specials), template
        self.kind = base.kind
        self.special_ids = {token: base.vocab_size + i for i, token in enumerate(self.specials)}

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.specials)

    @property
    def eot_id(self) -> int:
        return self.base.eot_id

    @property
    def unk_id(self) -> Optional[int]:
        return self.base.unk_id

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.base.encode_batch(texts)

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """Ids of the rendered conversation and, for each, whether training counts it (assistant tokens)."""
        ids: list[int] = []
        trained: list[bool] = []
        for text, counted in segments(messages, add_generation_prompt):
            piece = [self.special_ids[text]] if text in self.special_ids else self.base.encode(text)
            ids += piece
            trained += [counted] * len(piece)
        return ids, trained

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; markers decode to their own text."""
        n, out, run = self.base.vocab_size, [], []
        for i in ids:
            if i >= n:
                if run:
                    out.append(self.base.decode(run))
                    run = []
                out.append(self.specials[i - n])
            else:
                run.append(i)
        if run:
            out.append(self.base.decode(run))
        return "".join(out)

    def unknown_chars(self, text: str) -> list[str]:
        return self.base.unknown_chars(text)

    def drop_unknown(self, text: str) -> tuple[str, int]:
        return self.base.drop_unknown(text)

    def save(self, path: Path | str) -> None:
        """The base tokenizer to `path`, the markers and template to TEMPLATE_FILE beside it."""
        self.base.save(path)
        data = {"special_tokens": list(self.specials), "first_id": self.base.vocab_size, "chat_template": self.template}
        atomic_write_text(Path(path).parent / TEMPLATE_FILE, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, base: Tokenizer, path: Path) -> "ChatTokenizer":
        """`base` with the markers of the TEMPLATE_FILE at `path`."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            specials, first, template = data["special_tokens"], data["first_id"], data["chat_template"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} is not a chat template file (special_tokens, first_id, chat_template)") from None
        if first != base.vocab_size or not all(isinstance(t, str) for t in specials):
            raise DataError(
                f"{path}: its special tokens start at id {first} but the tokenizer beside it has {base.vocab_size} "
                "tokens; the two files belong to different runs"
            )
        return cls(base, tuple(specials), str(template))


def chat_prompt(tokenizer: Tokenizer, messages: list[Message]) -> list[int]:
    """Ids of `messages` followed by the assistant's marker: what generation continues."""
    if not isinstance(tokenizer, ChatTokenizer):
        raise DataError(
            "messages= needs a chat run (its tokenizer has no chat markers); "
            "fine-tune one with `slm finetune --from RUN --data.format chat --data.source FILE.jsonl`"
        )
    return tokenizer.encode_chat(check_messages(messages, "messages"), add_generation_prompt=True)[0]


def fit_history(tokenizer: ChatTokenizer, messages: list[Message], room: int) -> list[Message]:
    """`messages` without their oldest turns (a system message stays) until the prompt has at most `room` ids."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    while len(turns) > 1 and len(chat_prompt(tokenizer, system + turns)) > room:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":  # a conversation restarts at a user turn
            turns = turns[1:]
    return system + turns
