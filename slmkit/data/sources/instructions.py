"""A generated instruction set: `data.source=arithmetic-reversal`, chat.arithmetic_reversal_set's records.

"What is 17 plus 25?" -> "42" and "Reverse: abc" -> "cba", SIZE distinct records made by slmkit
itself (seeded: the same on every machine), so the chat recipe needs no download. With
data.format=chat they are conversations (data/chat.py reads `chat_records`); as text, each
record is a document "prompt\\ncompletion".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from ...chat import arithmetic_reversal_set
from .base import DocumentSource, SourceKind

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

NAME = "arithmetic-reversal"
SIZE = 6000
SEED = 0
MAX_NUMBER = 99  # additions of two numbers up to this


class InstructionSource(DocumentSource):
    """The SIZE generated records; the last val_fraction of them are val."""

    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        self.chat_records = arithmetic_reversal_set(SIZE, seed=SEED, max_number=MAX_NUMBER)

    def count(self) -> int:
        return len(self.chat_records)

    def raw_documents(self, skip: int = 0) -> Iterator[Iterable[str]]:
        yield from ([f"{r['prompt']}\n{r['completion']}"] for r in self.chat_records[skip:])


KIND = SourceKind(
    name=NAME, form=f"'{NAME}'", claims=lambda source: source == NAME, open=InstructionSource, label=lambda source: NAME
)
