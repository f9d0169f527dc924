"""ONNX export: the model's logits for (batch, sequence) token ids, for onnxruntime (and onnxruntime-web).

One graph, no KV cache: input `input_ids` (int64, batch x sequence, both dynamic, sequence at most
block_size), output `logits` (float32, batch x sequence x vocab). Written by torch's TorchScript-based
exporter, which needs only the `onnx` package and traces a tiny model in seconds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .atomic import atomic_path
from .runs import load_run
from .errors import ExportError
from .model import GPT
from .progress import Bar

OPSET = 17  # onnxruntime >= 1.14 and onnxruntime-web run it


class _Logits(torch.nn.Module):
    """GPT.forward without targets or cache, returning only the logits (B, T, vocab)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]


def export_onnx(run_dir: Path | str, out: Path | str) -> Path:
    """Write the run's best model as an ONNX file (atomically) and return its path."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ExportError("--format onnx needs the onnx package: pip install 'slmkit[export]'") from None
    run = load_run(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, min(8, run.config.model.block_size), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    with atomic_path(out) as tmp, warnings.catch_warnings(), Bar(1, "export onnx", unit="file") as bar:
        warnings.simplefilter("ignore")  # the tracer's notes about the Python-side length check
        torch.onnx.export(_Logits(run.model.eval()), (example,), str(tmp), input_names=["input_ids"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        bar.update()
    return out
