"""int8 weights for faster CPU inference: PyTorch's dynamic quantization of every nn.Linear of the blocks.

`torch.ao.quantization.quantize_dynamic` swaps each Linear of the blocks for a DynamicQuantizedLinear:
int8 weights (one scale per output row, symmetric), activations quantized on the fly,
fbgemm int8 matmuls. Embeddings, norms and the lm_head stay fp32 (the lm_head is tied to the
token embedding by default: one tensor, which the embedding lookup reads in fp32).

A model transform only; runs.py writes and reads the int8 file. Its tensors (int8_state), never
pickled: for each quantized layer `NAME`, `NAME.weight` (int8), `NAME.weight_scale` (fp32, one
per row) and `NAME.bias` (fp32), plus every fp32 tensor that is not a quantized weight (a tied
lm_head is stored once, as `transformer.wte.weight`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from .config import ModelConfig
from .model import GPT

SCHEME = "dynamic-int8-per-channel"


@contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao.quantization warns that it will move to torchao; it is still PyTorch's CPU int8 path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def quantize_model(model: GPT, inplace: bool = False) -> nn.Module:
    """A copy of `model` (or `model` itself, inplace) with every nn.Linear of its blocks as a dynamic
    int8 Linear (lm_head stays fp32)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    spec = {
        name: per_channel_dynamic_qconfig
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name != "lm_head"
    }
    with _quiet():
        return quantize_dynamic(model.cpu().eval(), spec, dtype=torch.qint8, inplace=inplace)


def _quantized_linears(qmodel: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: m for name, m in qmodel.named_modules() if isinstance(m, DynamicLinear)}


def int8_state(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors of the int8 form of a float `model` (see the module docstring)."""
    qmodel = quantize_model(model)
    linears = _quantized_linears(qmodel)
    out: dict[str, torch.Tensor] = {}
    for name, param in model.state_dict().items():
        if name.rpartition(".")[0] not in linears and not (name == "lm_head.weight" and model.config.tie_embeddings):
            out[name] = param.detach().contiguous()  # embeddings, norms, lm_head (stored once when tied)
    for name, layer in linears.items():
        with _quiet():
            weight = layer.weight()  # per-channel quantized (out, in)
            bias = layer.bias()
        out[f"{name}.weight"] = weight.int_repr().contiguous()
        out[f"{name}.weight_scale"] = weight.q_per_channel_scales().float().contiguous()
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().contiguous()
    return out


def int8_model(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the dynamic int8 model of `config` from the tensors of int8_state.

    Raises ValueError naming what does not fit (missing or unexpected tensors, a wrong shape).
    """
    model = GPT(config)
    floats = {k: v for k, v in tensors.items() if v.dtype != torch.int8 and not k.endswith(".weight_scale")}
    linear_weights = {k for k, v in tensors.items() if v.dtype == torch.int8}
    missing, unexpected = model.load_state_dict(floats, strict=False)
    missing = [k for k in missing if k not in linear_weights and not (k == "lm_head.weight" and config.tie_embeddings)]
    if missing or unexpected:
        raise ValueError(f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    qmodel = quantize_model(model, inplace=True)  # `model` was built here for this alone
    for name, layer in _quantized_linears(qmodel).items():
        if f"{name}.weight" not in tensors:
            raise ValueError(f"no {name}.weight")
        ints, scale = tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"].double()
        if ints.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"{name}.weight has shape {tuple(ints.shape)}, the model needs "
                             f"{(layer.out_features, layer.in_features)}")
        with _quiet():
            # re-quantizing the dequantized values gives back exactly the stored integers
            weight = torch.quantize_per_channel(
                ints.float() * scale.float()[:, None], scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
            )
            layer.set_weight_bias(weight, tensors.get(f"{name}.bias"))
    return qmodel.eval()
