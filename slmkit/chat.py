"""The chat template: conversations as records, their rendering, and which tokens are trained.

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}`; a
record of a chat data file is `{"messages": [...]}` or `{"prompt": str, "completion": str}` (one
user turn and its answer). Each message is rendered as its role marker, its content and END:

    <|user|>What is 2 plus 3?<|end|><|assistant|>5<|end|>

The markers are special tokens the run's tokenizer adds after its own vocabulary (see
tokenizer/chat.py); text never turns into them. Training counts the loss on each assistant
message's content and its END marker only (so the model learns to answer, and to stop);
generation continues after a trailing `<|assistant|>` (add_generation_prompt). CHAT_TEMPLATE
is the same rendering in Jinja, for `tokenizer.apply_chat_template` in transformers.
No torch here: `slm --help` and the data readers import it.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from .errors import DataError

ROLES = ("system", "user", "assistant")
END = "<|end|>"
MARKERS = {role: f"<|{role}|>" for role in ROLES}
SPECIAL_TOKENS = (*MARKERS.values(), END)  # their ids follow the base vocabulary, in this order

# renders exactly what `render` does (test_chat checks it with jinja2)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

Message = dict[str, str]


def render(messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text with its markers (what CHAT_TEMPLATE renders)."""
    return "".join(text for text, _ in segments(messages, add_generation_prompt))


def segments(messages: list[Message], add_generation_prompt: bool = False) -> Iterator[tuple[str, bool]]:
    """(text, trained) parts of the rendered conversation; markers are parts of their own.

    trained: the assistant's content and its END marker, the tokens the loss counts.
    """
    for message in messages:
        assistant = message["role"] == "assistant"
        yield MARKERS[message["role"]], False
        if message["content"]:
            yield message["content"], assistant
        yield END, assistant
    if add_generation_prompt:
        yield MARKERS["assistant"], False


def check_messages(messages: Any, where: str) -> list[Message]:
    """`messages` as a list of {role, content} dicts; DataError naming `where` and what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {i} is {type(message).__name__}, not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has role {role!r}; valid: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} ({role}) has no string 'content'")
        checked.append({"role": role, "content": content})
    return checked


def parse_record(record: Any, where: str) -> list[Message]:
    """The messages of one chat record ({"messages": [...]} or {"prompt", "completion"}); DataError naming
    `where` (file:line) otherwise. A record must hold an assistant message: that is what is trained."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a chat record is an object with 'messages' (or 'prompt' and 'completion')")
    if "messages" in record:
        messages = check_messages(record["messages"], where)
    elif "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(f"{where}: 'prompt' and 'completion' must both be strings")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        raise DataError(f"{where}: no 'messages' (nor 'prompt' and 'completion'); keys: {', '.join(record) or 'none'}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message; there is nothing to train on")
    return messages


def parse_line(line: str, where: str) -> list[Message]:
    """The messages of one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON ({e.msg} at column {e.colno}); fix the line or remove it") from None
    return parse_record(record, where)


# ---------------------------------------------------------------- a generated instruction set

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def arithmetic_reversal_set(n: int, seed: int = 0, max_number: int = 49, exclude: frozenset = frozenset()) -> list[dict]:
    """`n` distinct {"prompt", "completion"} records, half "What is A plus B?" -> "A+B", half "Reverse: abc" ->
    "cba" (3 to 5 letters), none of whose prompts is in `exclude`: a capability test and the chat recipe's data."""
    import random

    if (n + 1) // 2 + sum(p.startswith("What is") for p in exclude) > (max_number + 1) ** 2:
        raise ValueError(f"there are only {(max_number + 1) ** 2} additions of numbers up to {max_number}; ask for fewer")
    rng = random.Random(seed)
    records, seen = [], set(exclude)
    while len(records) < n:
        if len(records) % 2 == 0:
            a, b = rng.randint(0, max_number), rng.randint(0, max_number)
            prompt, completion = f"What is {a} plus {b}?", str(a + b)
        else:
            word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5)))
            prompt, completion = f"Reverse: {word}", word[::-1]
        if prompt not in seen:
            seen.add(prompt)
            records.append({"prompt": prompt, "completion": completion})
    return records
