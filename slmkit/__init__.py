"""slmkit: build small language models from scratch.

    import slmkit
    run = slmkit.load_run("runs/kjv-bpe")
    print(slmkit.generate(run.model, run.tokenizer, "In the beginning", max_new_tokens=100))

The pipeline, one module per stage, data flowing one way: data/sources/ (where text comes
from) -> tokenizer/ (char, word, bpe, wordpiece, gpt2) -> data/prepare.py, shards.py (binary token shards)
-> model.py (the GPT and its KV cache; quantize.py its int8 form) -> train.py (the loop) ->
runs.py (the run folder: every file in it, saving, loading, resuming) -> evaluate.py, generate.py
(sampling; its options are sampling.SamplingParams), export.py, serve.py; config.py holds one
typed section per stage, recipes/ the YAML recipes, cli.py the `slm` command.

The names below are imported on first use (module __getattr__), so `import slmkit` and the
CLI's --help do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "GPT": "model",
    "GPTConfig": "model",
    "Run": "runs",
    "RunConfig": "config",
    "SamplingParams": "sampling",
    "SlmError": "errors",
    "Tokenizer": "tokenizer",
    "evaluate_run": "evaluate",
    "export_hf": "export",
    "finetune": "finetune",
    "generate": "generate",
    "import_hf": "export",
    "load_recipe": "config",
    "load_run": "runs",
    "load_tokenizer": "tokenizer",
    "plot_runs": "plot",
    "prepare": "data.prepare",
    "quantize_run": "runs",
    "stream": "generate",
    "train": "train",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` the first time it is asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slmkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
