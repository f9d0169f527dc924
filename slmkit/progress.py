"""Progress bars: one per stage, drawn only on a terminal.

A stage (prepare, train, eval, export, sweep) makes one `Bar` with the total it knows (bytes, steps,
tokens, tensors, runs). When stdout or stderr is not a terminal (a pipe, a file, a CI log) nothing is
drawn: the stage's own lines (its one-line summary; train's and sweep's lines per evaluation and run)
are its whole record there, with no carriage returns in between.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from tqdm import tqdm


def on_terminal() -> bool:
    """Whether bars are drawn: stdout (where the stages' lines go) and stderr (where the bars go) are terminals."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


class Bar:
    """One stage's progress bar on stderr, if `enabled` and on a terminal; else it draws nothing.

    `total` is what the stage knows it will do (None only for a source of unknown size: a counter, no
    bar); `text` is shown after the figures. `write` prints a line above the bar (or just prints it when
    there is no bar); `options` go to tqdm.
    """

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", enabled: bool = True, initial: int = 0,
                 text: str = "", **options: Any):  # fmt: skip
        self._bar = None
        if enabled and on_terminal():
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, postfix=text or None,
                             dynamic_ncols=True, **options)  # fmt: skip

    def update(self, n: int = 1, text: Optional[str] = None) -> None:
        """`n` more done; `text`: what was just done (shown after the figures)."""
        if self._bar is not None:
            if text is not None:
                self._bar.set_postfix_str(text, refresh=n == 0)  # else the update draws it
            self._bar.update(n)

    def move_to(self, n: int, total: Optional[int] = None, text: Optional[str] = None) -> None:
        """At `n` of `total` (a new estimate of it, e.g. the steps a time budget allows)."""
        if self._bar is not None:
            if total is not None:
                self._bar.total = total
            self.update(n - self._bar.n, text)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)  # clears the bar, prints the line on stdout, draws the bar again below it
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
