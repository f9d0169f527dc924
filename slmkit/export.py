"""Hugging Face folders: export a run so `transformers` loads it, and import one as a run.

GPT-2 shapes (learned or sinusoidal positions, LayerNorm, GELU) export as GPT2LMHeadModel:
our parameter names are GPT-2's, so the mapping is the identity except that HF's Conv1D
layers (c_attn, c_proj, c_fc) store their weights transposed, as (in, out); a model without
biases gets zero biases, which GPT-2 computes exactly as none. Rotary + RMSNorm + SwiGLU
export as LlamaForCausalLM, or Qwen3ForCausalLM with QK-norm (our weightless per-head RMSNorm
is Qwen3's q_norm/k_norm with a gain of ones; model.qk_norm_gain holds learned ones), with their
grouped k/v heads (n_kv_head), head_dim, rotary base and norm epsilon. Our rotary pairs x[i] with x[i + hs/2], as
HF's rotate_half does, so q and k need no permutation. Anything else is an ExportError
naming the option and the nearest exportable value. Writing a folder needs only safetensors
and JSON; `transformers` is needed to load it, not to write it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, atomic_write_text, staged_folder
from .config import ModelConfig, RunConfig, TokenizerConfig
from .errors import ExportError, SlmError
from .model import GPT
from .progress import Bar
from .runs import BEST, LAST, load_run, save_weights, write_run_files
from .tokenizer import CharTokenizer, ChatTokenizer, GPT2Tokenizer, Tokenizer, load_tokenizer
from .tokenizer.bpe import BPETokenizer
from .tokenizer.gpt2 import ENCODER_JSON, VOCAB_SIZE, check_files, gpt2_data_dir

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's tanh GELU, the one our model uses
# The options each Hugging Face family fixes; any other value has no equivalent there.
GPT2_OPTIONS = {"pos_embedding": ("learned", "sinusoidal"), "norm": ("layernorm",), "mlp": ("gelu",), "qk_norm": (False,),
                "logit_softcap": (0.0,)}  # fmt: skip
LLAMA_OPTIONS = {"pos_embedding": ("rotary",), "norm": ("rmsnorm",), "mlp": ("swiglu",), "logit_softcap": (0.0,)}


def _d_ff(cfg: ModelConfig) -> int:
    return cfg.d_ff or 4 * cfg.n_embd


def hf_architecture(cfg: ModelConfig) -> str:
    """'gpt2', 'llama' or 'qwen3': the HF class that computes exactly what `cfg` does, else ExportError.

    GPT-2 holds learned or sinusoidal positions, LayerNorm and GELU; Llama holds rotary + RMSNorm +
    SwiGLU; Qwen3 adds per-head RMSNorms on q and k (QK-norm) but has no MLP biases.
    """
    modern = cfg.pos_embedding == "rotary" or cfg.norm == "rmsnorm" or cfg.mlp == "swiglu"
    family, options = ("Llama/Qwen3", LLAMA_OPTIONS) if modern else ("GPT-2", GPT2_OPTIONS)
    for key, values in options.items():
        if getattr(cfg, key) not in values:
            raise ExportError(
                f"model.{key}={getattr(cfg, key)!r} has no Hugging Face equivalent; the nearest exportable "
                f"choice is model.{key}={values[0]!r} ({family}), or use the run's safetensors directly"
            )
    if not modern:
        if cfg.kv_heads != cfg.n_head or cfg.head_size * cfg.n_head != cfg.n_embd:
            raise ExportError("model.n_kv_head / model.head_dim have no GPT-2 equivalent; the nearest exportable "
                              "choice is model.n_kv_head=0 and model.head_dim=0 (GPT-2), or rotary+rmsnorm+swiglu (Llama)")
        return "gpt2"
    if cfg.qk_norm and cfg.bias:
        raise ExportError(
            "model.bias=true with model.qk_norm=true has no Hugging Face equivalent (Qwen3 has no MLP biases); "
            "the nearest exportable choice is model.bias=false (Qwen3) or model.qk_norm=false (Llama)"
        )
    return "qwen3" if cfg.qk_norm else "llama"


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
        "layer_norm_epsilon": cfg.eps("layernorm"),
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


def llama_config(cfg: ModelConfig, eot_id: int, arch: str) -> dict:
    """config.json of a LlamaForCausalLM (arch 'llama') or Qwen3ForCausalLM ('qwen3') shaped as `cfg`."""
    config = {
        "architectures": ["Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": _d_ff(cfg),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,  # explicit: Qwen3's default is 128, not hidden_size / heads
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.eps("rmsnorm"),
        "rope_theta": cfg.rope_theta,  # transformers < 5 reads this key, 5 reads rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }
    if arch == "llama":
        config.update(mlp_bias=cfg.bias, pretraining_tp=1)
    else:
        config.update(use_sliding_window=False, max_window_layers=cfg.n_layer)
    return config


def _our_state(model: GPT) -> dict[str, torch.Tensor]:
    """The model's tensors on the CPU, with a sinusoidal table as `transformer.wpe.weight` (GPT-2's slot)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.pos_embedding == "sinusoidal":
        state["transformer.wpe.weight"] = model.pos_table.detach().cpu().clone()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # tied to the token embedding; transformers ties it again on load
    return state


def gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Our tensors of a model hf_architecture calls 'gpt2', with zero biases where it has none (GPT-2 needs all)."""
    cfg = model.config
    out = _our_state(model)
    layer_biases = {"ln_1": cfg.n_embd, "ln_2": cfg.n_embd, "attn.c_attn": 3 * cfg.n_embd,
                    "attn.c_proj": cfg.n_embd, "mlp.c_fc": _d_ff(cfg), "mlp.c_proj": cfg.n_embd}
    for i in range(cfg.n_layer):
        for layer, size in layer_biases.items():
            out.setdefault(f"transformer.h.{i}.{layer}.bias", torch.zeros(size))  # zero bias = no bias
    out.setdefault("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
    return out


def to_gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2 tensors of a model hf_architecture calls 'gpt2': Conv1D weights transposed, all biases."""
    return {name: (t.t() if name.endswith(CONV1D) else t).contiguous() for name, t in gpt2_tensors(model).items()}


def llama_names(i: int) -> dict[str, str]:
    """Our tensor name -> Llama/Qwen3's, for layer `i` (c_attn is split into q, k, v separately)."""
    ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
    names = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
             "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
    for p in ("weight", "bias"):
        names.update({f"attn.c_proj.{p}": f"self_attn.o_proj.{p}", f"mlp.c_gate.{p}": f"mlp.gate_proj.{p}",
                      f"mlp.c_fc.{p}": f"mlp.up_proj.{p}", f"mlp.c_proj.{p}": f"mlp.down_proj.{p}"})
    return {ours + k: theirs + v for k, v in names.items()}


LLAMA_TOP = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}


def to_llama_state(model: GPT) -> dict[str, torch.Tensor]:
    """Llama/Qwen3 tensors of `model`: c_attn split into q/k/v, a weightless QK-norm as gains of ones."""
    cfg = model.config
    arch = hf_architecture(cfg)
    state = _our_state(model)
    names = dict(LLAMA_TOP)
    for i in range(cfg.n_layer):
        names.update(llama_names(i))
    out = {names[k]: v for k, v in state.items() if k in names}
    unmapped = sorted(k for k in state if k not in names and ".attn.c_attn." not in k)
    if unmapped:
        raise ExportError(f"the model has tensors Llama/Qwen3 does not ({unmapped[:3]}); it cannot be exported")
    for i in range(cfg.n_layer):
        attn = f"model.layers.{i}.self_attn."
        for p in ("weight", "bias") if cfg.bias else ("weight",):
            sizes = (cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.kv_heads * cfg.head_size)
            q, k, v = state[f"transformer.h.{i}.attn.c_attn.{p}"].split(sizes, dim=0)  # rows: q, then k, then v
            out.update({f"{attn}q_proj.{p}": q.clone(), f"{attn}k_proj.{p}": k.clone(), f"{attn}v_proj.{p}": v.clone()})
        if arch == "qwen3":  # a weightless QK-norm is Qwen3's per-head RMSNorm with a gain of ones
            out.setdefault(f"{attn}q_norm.weight", torch.ones(cfg.head_size))
            out.setdefault(f"{attn}k_norm.weight", torch.ones(cfg.head_size))
    return out


def hf_state_and_config(model: GPT, eot_id: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and config.json of the HF class that holds `model` exactly (ExportError if none does)."""
    arch = hf_architecture(model.config)
    if arch == "gpt2":
        return to_gpt2_state(model), gpt2_config(model.config, eot_id)
    return to_llama_state(model), llama_config(model.config, eot_id, arch)


CHAR_SPLIT = r"[\s\S]"  # the char kind's HF pre-tokenizer: one piece per character, newlines included


def char_backend(tokenizer: CharTokenizer):
    """Our char tokenizer as a Hugging Face one: a WordLevel token per character with our ids.

    A character outside the vocabulary is an error there too (WordLevel finds no `<unk>`).
    """
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFBackend

    backend = HFBackend(models.WordLevel(vocab=dict(tokenizer.stoi), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate: WordLevel's default decoder joins with spaces
    return backend


def _write_tokenizer(tokenizer: Tokenizer, out: Path, max_length: int) -> Optional[str]:
    """Tokenizer files AutoTokenizer loads with our ids; returns a note the user should read, if any."""
    chat = tokenizer if isinstance(tokenizer, ChatTokenizer) else None
    tokenizer = chat.base if chat is not None else tokenizer
    eot = tokenizer.decode([tokenizer.eot_id])  # "<|endoftext|>"; a newline for the char kind
    config = {"bos_token": eot, "eos_token": eot}
    note = None
    if isinstance(tokenizer, GPT2Tokenizer):
        vocab_bpe, encoder_json = check_files(gpt2_data_dir())
        shutil.copyfile(encoder_json, out / "vocab.json")
        shutil.copyfile(vocab_bpe, out / "merges.txt")
        config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False, unk_token=eot)
    else:
        if isinstance(tokenizer, CharTokenizer):
            with atomic_path(out / "tokenizer.json") as tmp:
                char_backend(tokenizer).save(str(tmp))
            note = ("the char kind's end-of-text is the newline, so transformers' generate stops at the end of "
                    "a line, and decode(skip_special_tokens=True) drops newlines")
        else:
            tokenizer.save(out / "tokenizer.json")  # a bpe tokenizer also writes vocab.json + merges.txt
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if tokenizer.unk_id is not None:
            config["unk_token"] = tokenizer.decode([tokenizer.unk_id])
    # split_special_tokens: a literal "<|endoftext|>" in text is ordinary text, as in slmkit
    config.update(model_max_length=max_length, clean_up_tokenization_spaces=False, split_special_tokens=True)
    if chat is not None:
        _add_chat_template(chat, out, config)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
    return note


def _add_chat_template(chat: ChatTokenizer, out: Path, config: dict) -> None:
    """A chat run's markers as special tokens with its ids, and its Jinja chat_template, so
    `apply_chat_template` renders and tokenizes what slmkit trained on."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFBackend

    if (out / "tokenizer.json").is_file():
        backend = HFBackend.from_file(str(out / "tokenizer.json"))
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in chat.specials])
        if any(backend.token_to_id(t) != i for t, i in chat.special_ids.items()):
            raise ExportError("the chat markers do not get the run's ids in the exported tokenizer; report this as a bug")
        with atomic_path(out / "tokenizer.json") as tmp:
            backend.save(str(tmp))
    config["additional_special_tokens"] = list(chat.specials)  # the gpt2 kind: added after its vocabulary, in order
    # the markers must be tokens when apply_chat_template's text is tokenized (a literal "<|endoftext|>" then is too)
    config.update(chat_template=chat.template, split_special_tokens=False)


@dataclass
class ExportResult:
    """The written folder and anything the user should know about it."""

    out: Path
    note: Optional[str] = None


def export_hf(run_dir: Path | str, out: Path | str) -> ExportResult:
    """Write a folder `transformers.AutoModelForCausalLM.from_pretrained(out)` loads (GPT-2, Llama or Qwen3)."""
    run = load_run(run_dir)
    out = Path(out)
    state, config = hf_state_and_config(run.model, run.tokenizer.eot_id)  # raises before anything is written
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; --format hf writes a folder: give a folder path")
    # a failed export (disk full) leaves `out` as it was; a bar over the 4 parts written, on a terminal
    with staged_folder(out, last="config.json") as stage, Bar(4, "export hf", unit="file") as bar:
        with atomic_path(stage / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})  # transformers wants format=pt
        bar.update(text="model.safetensors")
        atomic_write_text(stage / "generation_config.json", json.dumps(
            {"bos_token_id": run.tokenizer.eot_id, "eos_token_id": run.tokenizer.eot_id}, indent=2))
        bar.update(text="generation_config.json")
        note = _write_tokenizer(run.tokenizer, stage, run.config.model.block_size)
        bar.update(text="tokenizer")
        atomic_write_text(stage / "config.json", json.dumps(config, indent=2))
        bar.update(text="config.json")
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
    n_embd = int(hf.get("n_embd", 768))
    checks = [
        (hf.get("activation_function", "gelu_new") in GPT2_ACTIVATIONS,
         f"activation_function {hf.get('activation_function')!r} (slmkit uses GPT-2's tanh GELU, 'gelu_new')"),
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
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
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
    if (folder / "model.safetensors.index.json").is_file():  # sharded (Qwen3-1.7B and larger): every shard's tensors
        files = sorted(set(_read_json(folder / "model.safetensors.index.json").get("weight_map", {}).values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            try:
                state.update(load_file(str(folder / name)))
            except (SafetensorError, OSError) as e:
                raise ExportError(f"{folder / name} is not readable ({e})") from None
        return state
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
    return _load_into(GPT(cfg), state, origin)


def _load_into(model: GPT, state: dict[str, torch.Tensor], origin: str) -> GPT:
    """`model` with `state` loaded (a tied lm_head may be absent), or an ExportError naming the misfit."""
    tied = model.config.tie_embeddings
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


def _rope_theta(hf: dict, origin: str) -> float:
    """The rotary base of a Llama/Qwen3 config.json; ExportError for position scaling slmkit does not implement."""
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5 writes rope_parameters, 4 rope_scaling
        rope = hf.get(key) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ExportError(f"{origin}: {key} type {kind!r} (position scaling) is not implemented in slmkit; "
                              "only default RoPE imports")
        if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
            raise ExportError(f"{origin}: partial_rotary_factor is not implemented in slmkit (it rotates every dimension)")
    return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_llama(hf: dict, origin: str, learned_qk_gains: bool = False) -> ModelConfig:
    """Our ModelConfig for a Llama or Qwen3 config.json, or an ExportError naming what cannot map."""
    n_embd, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    n_kv = int(hf.get("num_key_value_heads") or n_head)
    checks = [
        (hf.get("hidden_act", "silu") == "silu", f"hidden_act {hf.get('hidden_act')!r} (slmkit's SwiGLU uses 'silu')"),
        (n_head % n_kv == 0, f"{n_kv} key/value heads for {n_head} heads"),
        (not hf.get("use_sliding_window", False), "use_sliding_window true"),
        (all(t == "full_attention" for t in hf.get("layer_types") or []), "layer_types other than full_attention"),
        (not hf.get("rope_interleaved", False), "rope_interleaved true (slmkit rotates x[i] with x[i + hs/2])"),
    ]
    for ok, what in checks:
        if not ok:
            raise ExportError(f"{origin}: {what} cannot be represented by an slmkit model")
    qwen3 = hf.get("model_type") == "qwen3"
    cfg = ModelConfig(
        n_layer=int(hf["num_hidden_layers"]), n_head=n_head, n_embd=n_embd,
        block_size=int(hf.get("max_position_embeddings", 2048)), dropout=float(hf.get("attention_dropout", 0.0)),
        bias=bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False)), vocab_size=int(hf["vocab_size"]),
        pos_embedding="rotary", norm="rmsnorm", mlp="swiglu", d_ff=int(hf["intermediate_size"]),
        qk_norm=qwen3, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        n_kv_head=n_kv, head_dim=int(hf.get("head_dim") or n_embd // n_head), rope_theta=_rope_theta(hf, origin),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qk_norm_gain=qwen3 and learned_qk_gains,
    )
    cfg.validate()
    return cfg


def _learned_qk_gains(hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether any q_norm / k_norm gain of a Qwen3 state is not 1 (all ones: our weightless QK-norm)."""
    return any(not torch.all(t == 1) for k, t in hf_state.items() if k.endswith(("q_norm.weight", "k_norm.weight")))


def from_llama_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, origin: str) -> GPT:
    """A GPT filled from Llama/Qwen3 tensors: q/k/v joined into c_attn (k, v keep their n_kv_head heads)."""
    names = {v: k for k, v in LLAMA_TOP.items()}
    for i in range(cfg.n_layer):
        names.update({v: k for k, v in llama_names(i).items()})
    if not cfg.qk_norm_gain:  # gains of ones: the weightless QK-norm computes the same
        hf_state = {k: t for k, t in hf_state.items() if not k.endswith(("q_norm.weight", "k_norm.weight"))}
    state = {names[k]: v for k, v in hf_state.items() if k in names}
    for i in range(cfg.n_layer):
        attn = f"model.layers.{i}.self_attn."
        for p in ("weight", "bias"):
            if f"{attn}q_proj.{p}" in hf_state:
                state[f"transformer.h.{i}.attn.c_attn.{p}"] = torch.cat([hf_state[f"{attn}{x}_proj.{p}"] for x in "qkv"], 0)
    joined = re.compile(r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj\.(weight|bias)$|.*rotary_emb\.inv_freq$")
    unread = sorted(k for k in hf_state if k not in names and not joined.match(k))
    if unread:
        raise ExportError(f"{origin}: weights do not fit config.json (unexpected {unread[:3]})")
    model = GPT(cfg)
    if cfg.bias:  # a zero bias where the folder has none (e.g. attention biases but no MLP ones)
        for name, p in model.state_dict().items():
            if name.endswith(".bias"):
                state.setdefault(name, torch.zeros_like(p))
    return _load_into(model, state, origin)


def _drop_padded_rows(hf_state: dict[str, torch.Tensor], hf: dict, vocab_size: int) -> None:
    """Keep the first `vocab_size` rows of the embedding and head: the rest are padding no text maps to
    (Qwen3's config.json has 151,936 rows for a 151,669-token tokenizer)."""
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in hf_state:
            hf_state[name] = hf_state[name][:vocab_size]
    hf["vocab_size"] = vocab_size


def hf_model(hf: dict, state: dict[str, torch.Tensor], folder: Path, tokenizer_vocab: Optional[int] = None) -> GPT:
    """The GPT a GPT-2, Llama or Qwen3 folder's config.json `hf` and weights `state` describe (Llama/Qwen3
    rows past `tokenizer_vocab` dropped)."""
    origin = str(folder / "config.json")
    if check_hf_config(hf, origin).pos_embedding != "rotary":
        return from_gpt2_state(state, model_config_from_gpt2(hf, origin), str(folder))
    if tokenizer_vocab is not None and tokenizer_vocab < int(hf["vocab_size"]):
        _drop_padded_rows(state, hf, tokenizer_vocab)
    cfg = model_config_from_llama(hf, origin, _learned_qk_gains(state))
    return from_llama_state(state, cfg, str(folder))


def check_hf_config(hf: dict, origin: str) -> ModelConfig:
    """The ModelConfig of a GPT-2, Llama or Qwen3 config.json (before its weights are read), else ExportError."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        return model_config_from_gpt2(hf, origin)
    if kind in ("llama", "qwen3"):
        return model_config_from_llama(hf, origin)
    raise ExportError(f"{origin}: model_type {kind!r} does not import; slmkit reads 'gpt2', 'llama' and 'qwen3' folders")


def _is_gpt2_vocab(vocab_json: Path, merges_txt: Path) -> bool:
    vocab_bpe, encoder_json = check_files(gpt2_data_dir())
    if json.loads(vocab_json.read_text(encoding="utf-8")) != json.loads(encoder_json.read_text(encoding="utf-8")):
        return False
    def merges(path: Path) -> list[str]:  # without the "#version" header; merges like "# #" stay
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#version")]

    return merges(vocab_bpe) == merges(merges_txt)


def _exported_chars(path: Path) -> Optional[list[str]]:
    """The characters (by id) of a tokenizer.json written by char_backend, else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        split = data["pre_tokenizer"]
        vocab = data["model"]["vocab"]
        if data["model"]["type"] != "WordLevel" or split["type"] != "Split" or split["pattern"] != {"Regex": CHAR_SPLIT}:
            return None
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not ours: load_tokenizer says what is wrong with it
    chars = sorted(vocab, key=vocab.get)
    if [vocab[c] for c in chars] != list(range(len(chars))) or not all(len(c) == 1 for c in chars) or "\n" not in vocab:
        return None
    return chars


def _eos_token(folder: Path, path: Path) -> Optional[str]:
    """The text of the end-of-text token config.json (else generation_config.json) names by `eos_token_id`
    (the first of a list), looked up in tokenizer.json `path`; None when neither names one."""
    for name in ("config.json", "generation_config.json"):
        eos = _read_json(folder / name).get("eos_token_id") if (folder / name).is_file() else None
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if isinstance(eos, int):
            break
    else:
        return None
    data = _read_json(path)
    tokens = {t.get("id"): t.get("content") for t in data.get("added_tokens") or []}
    vocab = (data.get("model") or {}).get("vocab")
    if eos not in tokens and isinstance(vocab, dict):
        tokens.update({i: t for t, i in vocab.items() if i == eos})
    if eos not in tokens:
        raise ExportError(f"{folder / name}: eos_token_id {eos} is not a token of {path}; fix eos_token_id")
    return tokens[eos]


def _read_tokenizer(folder: Path) -> Tokenizer:
    """The folder's tokenizer; a tokenizer.json's end-of-text is the token config.json's eos_token_id names."""
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file() and _is_gpt2_vocab(vocab, merges):
        return GPT2Tokenizer()
    if (folder / "tokenizer.json").is_file():
        chars = _exported_chars(folder / "tokenizer.json")
        if chars is not None:
            return CharTokenizer(chars)
        tokenizer = load_tokenizer(folder / "tokenizer.json", eot_token=_eos_token(folder, folder / "tokenizer.json"))
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


def _shorter_context(model: GPT, block_size: int) -> GPT:
    """The same rotary model with a `block_size` context (its weights do not depend on the context)."""
    cfg = dataclasses.replace(model.config, block_size=block_size)
    short = GPT(cfg)
    short.load_state_dict(model.state_dict())
    return short.eval()


def import_hf(folder: Path | str, out: Path | str, block_size: int = 0) -> Path:
    """Turn a local GPT-2, Llama or Qwen3 folder (config.json + weights + tokenizer) into an slmkit run folder.

    `block_size` > 0: the run's context, at most the checkpoint's (Qwen3's 40,960 positions would make
    every KV cache 9 GB and every fine-tuning window 40,960 tokens); 0 = the checkpoint's.
    """
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; give a local folder saved by save_pretrained")
    hf = _read_json(folder / "config.json")
    check_hf_config(hf, str(folder / "config.json"))  # config.json's errors first, then the weights', then the tokenizer's
    state = _read_weights(folder)
    tokenizer = _read_tokenizer(folder)
    model = hf_model(hf, state, folder, tokenizer.vocab_size)
    cfg_model = model.config
    if tokenizer.vocab_size != cfg_model.vocab_size:
        raise ExportError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's vocab_size is "
            f"{cfg_model.vocab_size}; slmkit needs them equal"
        )
    if block_size < 0 or block_size > cfg_model.block_size:
        raise ExportError(f"--block-size {block_size} must be between 1 and the checkpoint's {cfg_model.block_size}")
    if block_size and cfg_model.pos_embedding == "learned":
        raise ExportError("--block-size needs rotary positions; a GPT-2 checkpoint keeps its learned position table")
    if block_size:
        model = _shorter_context(model, block_size)
        cfg_model = model.config
    cfg = RunConfig(name=out.name, model=cfg_model, tokenizer=TokenizerConfig(kind=tokenizer.kind))
    cfg.sample.prompt = ""
    write_run_files(out, cfg.validate(), tokenizer)
    for name in (BEST, LAST):
        save_weights(model, out / name, metadata={"imported_from": str(folder.resolve())})
    return out
