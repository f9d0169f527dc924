"""What to sample: `SamplingParams`, the one object that carries the sampling options.

The recipe's `sample` section (`SampleConfig.params()`), `slm sample`'s flags, `slm serve`'s
request body and the keyword arguments of `generate`/`stream` all become one SamplingParams,
validated here and nowhere else. It is frozen and holds no state: a sequence's generator and
stop matching live in generate.py (`TokenSampler`, `StopMatcher`), one per sequence.
No torch here, so the CLI can build and check it before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ConfigError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's largest signed seed


class SamplingError(ConfigError):
    """A sampling option out of range; `field` names it as SamplingParams does."""

    def __init__(self, field: str, value: Any, rule: str, prefix: str = ""):
        super().__init__(f"{prefix}{field}={value!r} {rule}")
        self.field, self.value, self.rule = field, value, rule


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to end.

    temperature 0 = greedy; top_k 0 and top_p 1 = off; repetition_penalty > 1 makes tokens
    already in the context less likely (CTRL), 1 = off; generation ends after max_new_tokens
    or before the first `stop` string (which is not emitted); the same seed gives the same
    text (None: torch's global RNG).
    """

    max_new_tokens: int = 300
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # stop="\n" means one stop string, not one per character
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop or ()))

    def validate(self, prefix: str = "") -> "SamplingParams":
        """Return self, or raise SamplingError naming the first bad option (`prefix` + its name)."""

        def check(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise SamplingError(field, getattr(self, field), rule, prefix)

        finite = "a finite number"
        check(_is_int(self.max_new_tokens) and self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
        temperature_ok = _is_number(self.temperature) and self.temperature >= 0
        check(temperature_ok, "temperature", f"must be {finite} >= 0 (0 = greedy)")
        check(_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        check(_is_number(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1] (1 = off)")
        penalty_ok = _is_number(self.repetition_penalty) and self.repetition_penalty > 0
        check(penalty_ok, "repetition_penalty", f"must be {finite} > 0 (1 = off)")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings")
        seed_ok = self.seed is None or (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED)
        check(seed_ok, "seed", f"must be in [0, {MAX_SEED}]")
        return self

    def replace(self, **options: Any) -> "SamplingParams":
        """A copy with `options` changed (unknown names are a TypeError naming them)."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **options) if options else self

    def nth(self, i: int) -> "SamplingParams":
        """The params of sample i of several: seed + i (so sample 0 is the single sample's text)."""
        return self if self.seed is None or i == 0 else dataclasses.replace(self, seed=self.seed + i)


FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
