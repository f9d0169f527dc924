"""Hugging Face datasets: `hf:<name>` shortcuts or `hf:<repo>[:<config>]`, streamed when big.

A dataset uses its own validation split when it has one, else every k-th document
(k = 1 / val_fraction) is val. WikiText rows are lines, joined into one document per article.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

from ...errors import DataError
from .base import Piece, SourceKind, normalized_pieces

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

# hf:<name> shortcuts -> (hub id, config, stream it)
HF_DATASETS = {
    "wikitext-2-raw-v1": ("Salesforce/wikitext", "wikitext-2-raw-v1", False),
    "wikitext-103-raw-v1": ("Salesforce/wikitext", "wikitext-103-raw-v1", True),
    "tinystories": ("roneneldan/TinyStories", None, True),
}
DOWNLOADS = {"wikitext-2-raw-v1": "13 MB", "wikitext-103-raw-v1": "~300 MB, streamed", "tinystories": "~1.9 GB, streamed"}
HF_VAL_SPLITS = ("validation", "valid", "val")
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \n?$")  # " = Title = ": a new article starts


def hf_dataset_id(source: str) -> tuple[str, Optional[str], bool]:
    """`hf:<name>` -> (hub id or local folder, config, stream it)."""
    name = source[len("hf:") :]
    if name in HF_DATASETS:
        return HF_DATASETS[name]
    repo, _, config = name.partition(":")
    if not repo:
        raise DataError(f"data.source={source!r} names no dataset; use hf:<repo>[:<config>], e.g. hf:tinystories")
    return repo, config or None, True


def load_hf(repo: str, config: Optional[str], streaming: bool) -> Any:
    """`datasets.load_dataset(repo, config)`: a dict of splits (a local folder of parquet files works too)."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.source=hf:... needs the 'datasets' package: pip install 'slmkit[hf]'") from None
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(repo, config, streaming=streaming)
    except Exception as e:  # the hub client raises many kinds; the user needs the first line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"cannot load Hugging Face dataset {repo!r}{f' ({config})' if config else ''}: {first}; "
            "check the name and the network (or HF_DATASETS_OFFLINE)"
        ) from None


def _wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """WikiText rows are lines; join them into one document per article (a ' = Title = ' line starts one)."""
    article: list[str] = []
    for line in lines:
        if WIKITEXT_TITLE.match(line) and any(s.strip() for s in article):
            yield "".join(article)
            article = []
        article.append(line)
    if any(s.strip() for s in article):
        yield "".join(article)


class HFSource:
    """The rows of a Hugging Face dataset's text field, loaded once."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.repo, self.config, self.streaming = hf_dataset_id(cfg.source)  # a malformed id fails now
        self._splits: Any = None

    def pieces(self, split: str) -> Iterator[Piece]:
        for doc in self._documents(split):
            yield from normalized_pieces([doc], self.cfg)

    def all_documents(self) -> Iterator[str]:
        for split in ("train", "val"):
            for doc in self._documents(split):
                yield "".join(text for text, _ in normalized_pieces([doc], self.cfg))

    def size_hint(self) -> Optional[int]:
        return None

    def _documents(self, split: str) -> Iterator[str]:
        repo = self.repo
        if self._splits is None:  # a streamed split is iterable again from its start
            self._splits = load_hf(repo, self.config, self.streaming)
        splits = self._splits
        if "train" not in splits:
            raise DataError(f"Hugging Face dataset {repo!r} has no train split (it has {', '.join(splits)})")
        val_name = next((name for name in HF_VAL_SPLITS if name in splits), None)
        rows = splits["train" if split == "train" or val_name is None else val_name]
        texts = self._texts(rows, repo)
        docs = _wikitext_articles(texts) if "wikitext" in repo.lower() else texts
        if val_name is not None:
            yield from docs
            return
        # No val split of its own: every k-th document is val (k = 1 / val_fraction), which
        # needs no count of a streamed dataset.
        every = max(2, round(1 / self.cfg.val_fraction))
        yield from (doc for i, doc in enumerate(docs) if (i % every == every - 1) == (split == "val"))

    def _texts(self, rows: Iterable[Any], repo: str) -> Iterator[str]:
        field = self.cfg.text_field
        for row in rows:
            if field not in row:
                raise DataError(
                    f"Hugging Face dataset {repo!r} has no field {field!r} (fields: {', '.join(row)}); "
                    "set --data.text_field"
                )
            if isinstance(row[field], str):
                yield row[field]


def label(source: str) -> str:
    """`hf:tinystories` -> tinystories, `hf:user/repo:cfg` -> repo-cfg."""
    name = source[len("hf:") :]
    return re.sub(r"[^A-Za-z0-9_]+", "-", name.split("/")[-1]).strip("-")[:40] or "hf"


KIND = SourceKind(
    name="hf",
    form="'hf:<dataset>'",
    claims=lambda source: source.startswith("hf:"),
    open=HFSource,
    label=label,
    download=lambda source: DOWNLOADS.get(source[len("hf:") :], "a Hugging Face dataset"),
)
