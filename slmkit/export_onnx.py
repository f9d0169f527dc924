"""ONNX export: the model's logits for (batch, sequence) token ids, for onnxruntime (and onnxruntime-web).

The logits graph: input `input_ids` (int64, batch x sequence, both dynamic, sequence at most
block_size), output `logits` (float32, batch x sequence x vocab). With `kv_cache`, the graph for
decoding: inputs `input_ids` (batch x new) and `past_keys`, `past_values` (float32, layers x batch x
n_kv_head x past x head_size; past = 0 at the start), outputs the last position's `logits`
(batch x 1 x vocab) and `present_keys`, `present_values` (past + new positions) to feed back; past +
new is at most block_size. Written by torch's TorchScript-based exporter, which needs only the `onnx`
package and traces a tiny model in seconds.
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


class _PastKV:
    """What GPT.forward and the attention use of a KVCache, over `past` keys and values given as tensors
    (L, B, n_kv, P, hs): each layer's new keys/values are appended (concatenated), so P is a dynamic axis."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.past = (keys, values)
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._step = self  # the attention reads cache._step: this object is its own step

    def begin(self, slots: list[int], T: int) -> "_PastKV":
        self.T, self.start = T, self.past[0].shape[3]  # every row starts after P cached positions
        self.keys = self.start + T
        positions = torch.arange(T) + self.start
        self.mask = torch.arange(self.keys)[None, None, None, :] <= positions[None, None, :, None]  # (1, 1, T, P + T)
        self.causal = False  # the mask says it: is_causal would align the queries with the first keys
        return self

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = torch.cat((self.past[0][layer], k), 2), torch.cat((self.past[1][layer], v), 2)  # (B, n_kv, P + T, hs)
        self.present.append((k, v))
        return k, v

    def end(self) -> None:
        pass


class _CachedLogits(torch.nn.Module):
    """GPT.forward over past keys/values: (input_ids, past_keys, past_values) -> (logits, present_keys, present_values)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor):
        cache = _PastKV(past_keys, past_values)
        logits = self.model(input_ids, cache=cache)[0]  # (B, 1, vocab)
        return logits, torch.stack([k for k, _ in cache.present]), torch.stack([v for _, v in cache.present])


def export_onnx(run_dir: Path | str, out: Path | str, kv_cache: bool = False) -> Path:
    """Write the run's best model as an ONNX file (atomically) and return its path; `kv_cache`: the
    decoding graph with past keys/values in and out (see the module's docstring)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ExportError("--format onnx needs the onnx package: pip install 'slmkit[export]'") from None
    run = load_run(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = run.config.model
    example = (torch.zeros(2, min(3, cfg.block_size), dtype=torch.long),)  # not 1: the tracer would fix a size of 1
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    names, module = (["input_ids"], ["logits"]), _Logits(run.model.eval())
    if kv_cache:
        past = torch.zeros(cfg.n_layer, 2, cfg.kv_heads, min(2, cfg.block_size - example[0].shape[1]), cfg.head_size)
        example += (past, past.clone())
        kv_axes = {0: "layers", 1: "batch", 3: "past"}
        axes = {"input_ids": axes["input_ids"], "past_keys": kv_axes, "past_values": kv_axes, "logits": {0: "batch"},
                "present_keys": {1: "batch", 3: "past+sequence"}, "present_values": {1: "batch", 3: "past+sequence"}}
        names = (["input_ids", "past_keys", "past_values"], ["logits", "present_keys", "present_values"])
        module = _CachedLogits(run.model.eval())
    with atomic_path(out) as tmp, warnings.catch_warnings(), Bar(1, "export onnx", unit="file") as bar:
        warnings.simplefilter("ignore")  # the tracer's notes about the Python-side length check
        torch.onnx.export(module, example, str(tmp), input_names=names[0], output_names=names[1],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        bar.update()
    return out
