"""`slm chat`: a conversation with a chat run, its history kept within the block size."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

from .generate import stream
from .model import GPT
from .sampling import SamplingParams
from .tokenizer import Tokenizer
from .tokenizer.chat import chat_prompt, fit_history

COMMANDS = "/reset forgets the conversation, /exit (or end of input) leaves"


class ChatSession:
    """The messages so far; `reply` streams the assistant's answer to a user message and keeps both."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, params: SamplingParams, system: str = ""):
        chat_prompt(tokenizer, [{"role": "user", "content": ""}])  # not a chat run: the error now, not at the first reply
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages = list(self.system)

    def reset(self) -> None:
        self.messages = list(self.system)

    def reply(self, text: str) -> Iterator[str]:
        """The answer's pieces as they are sampled; the oldest turns go when the prompt would leave the model
        fewer than max_new_tokens positions of its block (always at least a quarter of it)."""
        text, _ = self.tokenizer.drop_unknown(text)  # characters a char tokenizer lacks
        block = self.model.config.block_size
        room = max(block - self.params.max_new_tokens, block // 4)
        self.messages = fit_history(self.tokenizer, self.messages + [{"role": "user", "content": text}], room)
        pieces: list[str] = []
        for piece in stream(self.model, self.tokenizer, params=self.params, messages=self.messages):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})


def chat_loop(session: ChatSession, lines: Iterable[str], write: Callable[[str], None],
              prompt: Optional[Callable[[], None]] = None) -> None:  # fmt: skip
    """Answer each line of `lines` (/reset, /exit as COMMANDS says), writing the answers as they stream."""
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip() == "/exit":
            return
        if text.strip() == "/reset":
            session.reset()
            write("(conversation reset)\n")
        elif text.strip():
            for piece in session.reply(text):
                write(piece)
            write("\n")
        if prompt is not None:
            prompt()
