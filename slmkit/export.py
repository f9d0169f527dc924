"""Hugging Face GPT-2 folders: export a run so `transformers` loads it, and import one as a run.

Our parameter names are GPT-2's, so the mapping is the identity except that HF's Conv1D
layers (c_attn, c_proj, c_fc) store their weights transposed, as (in, out). Writing the
folder needs only safetensors and JSON; `transformers` is needed to load it, not to write it.

A model without biases (`model.bias: false`) is exported with zero biases, which GPT-2
computes exactly as no bias. Positions other than learned, norms other than LayerNorm,
MLPs other than GELU and QK-norm have no GPT-2 equivalent and are a clear ExportError.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, atomic_write_text
from .config import ModelConfig, RunConfig, TokenizerConfig
from .errors import ExportError, SlmError
from .model import GPT
from .runs import BEST, LAST, load_run, save_weights, write_run_files
from .tokenizer import GPT2Tokenizer, HFTokenizer, Tokenizer, load_tokenizer
from .tokenizer.bpe import BPETokenizer
from .tokenizer.gpt2 import ENCODER_JSON, EOT, VOCAB_SIZE, check_files, gpt2_data_dir

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Model options GPT-2's architecture has one fixed value of, and that value.
GPT2_ONLY = {"pos_embedding": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's tanh GELU, the one our model uses
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by our model


def _d_ff(cfg: ModelConfig) -> int:
    return cfg.d_ff or 4 * cfg.n_embd


def check_gpt2_compatible(cfg: ModelConfig) -> None:
    """Raise ExportError naming the first model option GPT-2 cannot represent."""
    for key, value in GPT2_ONLY.items():
        actual = getattr(cfg, key)
        if actual != value:
            raise ExportError(
                f"model.{key}={actual!r} has no Hugging Face GPT-2 equivalent (GPT-2 needs {value!r}); "
                "export a model trained with the GPT-2 options or use the run's safetensors directly"
            )


def gpt2_config(cfg: ModelConfig, eot_id: int) -> dict:
    """config.json of a GPT2LMHeadModel with the shape of `cfg`."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": _d_ff(cfg),
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def to_gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2 tensors of `model`: Conv1D weights transposed, zero biases where the model has none."""
    cfg = model.config
    check_gpt2_compatible(cfg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied to transformer.wte.weight; transformers ties it again on load
        out[name] = (tensor.t() if name.endswith(CONV1D) else tensor).contiguous()
    # GPT-2 always has biases; a zero bias computes exactly what no bias does
    layer_biases = {"ln_1": cfg.n_embd, "ln_2": cfg.n_embd, "attn.c_attn": 3 * cfg.n_embd,
                    "attn.c_proj": cfg.n_embd, "mlp.c_fc": _d_ff(cfg), "mlp.c_proj": cfg.n_embd}
    for i in range(cfg.n_layer):
        for layer, size in layer_biases.items():
            out.setdefault(f"transformer.h.{i}.{layer}.bias", torch.zeros(size))
    out.setdefault("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    for i in range(cfg.n_layer):
        expected |= {f"transformer.h.{i}.{layer}.{p}" for layer in layer_biases for p in ("weight", "bias")}
    if not cfg.tie_embeddings:
        expected.add("lm_head.weight")
    unmapped = sorted(set(out) - expected)
    if unmapped or expected - set(out):
        raise ExportError(
            f"the model has parameters GPT-2 does not ({unmapped[:3]}) or lacks some it needs "
            f"({sorted(expected - set(out))[:3]}); this configuration cannot be exported as GPT-2"
        )
    return out


def _write_tokenizer(tokenizer: Tokenizer, out: Path, max_length: int) -> Optional[str]:
    """Tokenizer files AutoTokenizer loads; returns a note when the kind has none."""
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    if isinstance(tokenizer, GPT2Tokenizer):
        vocab_bpe, encoder_json = check_files(gpt2_data_dir())
        shutil.copyfile(encoder_json, out / "vocab.json")
        shutil.copyfile(vocab_bpe, out / "merges.txt")
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, **special}
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer.save(out / "tokenizer.json")  # a bpe tokenizer also writes vocab.json + merges.txt
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT}
        if tokenizer.unk_id is not None:
            config["unk_token"] = "<unk>"
    else:
        return f"no Hugging Face tokenizer is written for the {tokenizer.kind!r} kind; use slmkit's tokenizer.json"
    config.update(model_max_length=max_length, clean_up_tokenization_spaces=False)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
    return None


@dataclass
class ExportResult:
    """The written folder and anything the user should know about it."""

    out: Path
    note: Optional[str] = None


def export_hf(run_dir: Path | str, out: Path | str) -> ExportResult:
    """Write a folder `transformers.AutoModelForCausalLM.from_pretrained(out)` loads (GPT-2 architecture)."""
    run = load_run(run_dir)
    out = Path(out)
    state = to_gpt2_state(run.model)  # raises before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})  # transformers wants format=pt
    config = gpt2_config(run.config.model, run.tokenizer.eot_id)
    atomic_write_text(out / "generation_config.json", json.dumps(
        {"bos_token_id": run.tokenizer.eot_id, "eos_token_id": run.tokenizer.eot_id}, indent=2))
    note = _write_tokenizer(run.tokenizer, out, run.config.model.block_size)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))
    return ExportResult(out, note)


# ---------------------------------------------------------------- import


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} is missing; give a folder saved by transformers' save_pretrained") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not a JSON object")
    return data


def model_config_from_gpt2(hf: dict, origin: str) -> ModelConfig:
    """Our ModelConfig for a GPT-2 config.json, or an ExportError naming what cannot map."""
    if hf.get("model_type") != "gpt2":
        raise ExportError(f"{origin}: model_type {hf.get('model_type')!r} is not 'gpt2'; only GPT-2 folders import")
    n_embd = int(hf.get("n_embd", 768))
    checks = [
        (hf.get("activation_function", "gelu_new") in GPT2_ACTIVATIONS,
         f"activation_function {hf.get('activation_function')!r} (slmkit uses GPT-2's tanh GELU, 'gelu_new')"),
        (float(hf.get("layer_norm_epsilon", LAYER_NORM_EPS)) == LAYER_NORM_EPS,
         f"layer_norm_epsilon {hf.get('layer_norm_epsilon')} (slmkit uses {LAYER_NORM_EPS})"),
        (hf.get("scale_attn_weights", True), "scale_attn_weights false"),
        (not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx true"),
    ]
    for ok, what in checks:
        if not ok:
            raise ExportError(f"{origin}: {what} cannot be represented by an slmkit model")
    cfg = ModelConfig(
        n_layer=int(hf.get("n_layer", 12)),
        n_head=int(hf.get("n_head", 12)),
        n_embd=n_embd,
        block_size=int(hf.get("n_positions", 1024)),
        dropout=float(hf.get("resid_pdrop", 0.0)),
        bias=True,
        vocab_size=int(hf.get("vocab_size", VOCAB_SIZE)),
        d_ff=0 if hf.get("n_inner") in (None, 4 * n_embd) else int(hf["n_inner"]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
    cfg.validate()
    return cfg


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        try:
            return load_file(str(folder / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            raise ExportError(f"{folder}/model.safetensors is not readable ({e})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:  # weights_only: nothing but tensors is unpickled
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise ExportError(f"{folder}/pytorch_model.bin cannot be loaded as plain tensors ({type(e).__name__})") from None
    if (folder / "model.safetensors.index.json").is_file():
        raise ExportError(f"{folder} holds a sharded checkpoint; save it unsharded (max_shard_size='10GB') first")
    raise ExportError(f"{folder} has no model.safetensors or pytorch_model.bin")


def from_gpt2_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, origin: str) -> GPT:
    """A GPT filled from GPT-2 tensors (Conv1D weights transposed back)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old transformers versions
        if not name.startswith(("transformer.", "lm_head.")):
            name = f"transformer.{name}"  # saved from GPT2Model rather than GPT2LMHeadModel
        state[name] = tensor.t() if name.endswith(CONV1D) else tensor
    model = GPT(cfg)
    tied = cfg.tie_embeddings
    if tied:
        state.pop("lm_head.weight", None)  # the same tensor as transformer.wte.weight
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ExportError(f"{origin}: weights do not fit config.json ({str(e).strip().splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ExportError(f"{origin}: weights do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def _is_gpt2_vocab(vocab_json: Path, merges_txt: Path) -> bool:
    vocab_bpe, encoder_json = check_files(gpt2_data_dir())
    if json.loads(vocab_json.read_text(encoding="utf-8")) != json.loads(encoder_json.read_text(encoding="utf-8")):
        return False
    def merges(path: Path) -> list[str]:  # without the "#version" header; merges like "# #" stay
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#version")]

    return merges(vocab_bpe) == merges(merges_txt)


def _read_tokenizer(folder: Path) -> Tokenizer:
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file() and _is_gpt2_vocab(vocab, merges):
        return GPT2Tokenizer()
    if (folder / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(folder / "tokenizer.json")
        if tokenizer.vocab_size == VOCAB_SIZE and isinstance(tokenizer, BPETokenizer):
            try:
                if tokenizer.backend.get_vocab() == json.loads(
                    (gpt2_data_dir() / ENCODER_JSON).read_text(encoding="utf-8")
                ):
                    return GPT2Tokenizer()
            except SlmError:
                pass
        return tokenizer
    if vocab.is_file() and merges.is_file():
        from tokenizers import Tokenizer as HFBackend
        from tokenizers import decoders, models, pre_tokenizers

        backend = HFBackend(models.BPE.from_file(str(vocab), str(merges)))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        return BPETokenizer(backend, str(folder), "bpe")
    raise ExportError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); add one and retry")


def import_hf(folder: Path | str, out: Path | str) -> Path:
    """Turn a local GPT-2 folder (config.json + weights + tokenizer) into an slmkit run folder."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; give a local folder saved by save_pretrained")
    cfg_model = model_config_from_gpt2(_read_json(folder / "config.json"), str(folder / "config.json"))
    model = from_gpt2_state(_read_weights(folder), cfg_model, str(folder))
    tokenizer = _read_tokenizer(folder)
    if tokenizer.vocab_size != cfg_model.vocab_size:
        raise ExportError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's vocab_size is "
            f"{cfg_model.vocab_size}; slmkit needs them equal"
        )
    cfg = RunConfig(name=out.name, model=cfg_model, tokenizer=TokenizerConfig(kind=tokenizer.kind))
    cfg.sample.prompt = ""
    write_run_files(out, cfg.validate(), tokenizer)
    for name in (BEST, LAST):
        save_weights(model, out / name, metadata={"imported_from": str(folder.resolve())})
    return out
