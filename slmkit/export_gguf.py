"""GGUF files for llama.cpp (and ollama, LM Studio, ...), written with gguf-py, the writer llama.cpp uses.

GPT-2 shapes become llama.cpp's `gpt2` architecture (it needs every bias: zeros where the model
has none); rotary + RMSNorm + SwiGLU become `qwen3` with QK-norm (its gains, or ones) and `llama`
without, with their key/value heads, rotary base and epsilon. llama.cpp's `llama` rotary pairs
x[2i] with x[2i+1] while ours pairs x[i] with x[i + hs/2] (as Qwen3's does), so q and k rows (and
biases) are reordered within each head (k's n_kv_head heads) for it; llama.cpp applies `llama`'s
optional q/k/v/output and feed-forward biases.

Tokenizers: gpt2 and bpe are byte-level BPE with merges (`gpt2` model; pre-tokenizer `gpt-2`, or
`smollm` / `qwen2` for those checkpoints' splits, anything else refused; special tokens as control);
char is a SentencePiece-style vocabulary of single characters (no merges exist between them,
so llama.cpp splits text into characters, as we do); word and wordpiece have no llama.cpp
equivalent and are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .runs import load_run
from .errors import ExportError
from .export import _d_ff, gpt2_tensors, hf_architecture, to_llama_state
from .model import GPT
from .progress import Bar
from .tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer
from .tokenizer.bpe import BPETokenizer
from .tokenizer.gpt2 import check_files, gpt2_data_dir

DTYPES = ("f32", "f16", "q8_0")
SPACE = "\u2581"  # SentencePiece's visible space: llama.cpp writes " " as it before looking tokens up
# Qwen2/Qwen3's split before byte-level BPE (its tokenizer.json's Split regex): llama.cpp's `qwen2` pre-tokenizer
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ExportError("--format gguf needs the gguf package: pip install 'slmkit[export]' (or pip install gguf)") from None
    return gguf


GPT2_NAMES = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
              "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
LLAMA_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
               "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


GPT2_TOP = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
            "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
            "lm_head.weight": "output.weight"}
LLAMA_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def _gguf_names(state: dict[str, torch.Tensor], top: dict[str, str], layers: dict[str, str]) -> dict[str, torch.Tensor]:
    """`state` under llama.cpp's names: `top` for whole-model tensors, blk.<i>.<layers[module]> for the rest."""
    out = {}
    for name, tensor in state.items():
        if name in top:
            out[top[name]] = tensor
            continue
        _, _, i, rest = name.split(".", 3)  # transformer.h.<i>.<module>.<param> or model.layers.<i>.<module>.<param>
        module, param = rest.rsplit(".", 1)
        out[f"blk.{i}.{layers[module]}.{param}"] = tensor
    return out


def interleave_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from pairs (i, i + hs/2) to pairs (2i, 2i + 1), llama.cpp's `llama` rotary."""
    hs = w.shape[0] // n_head
    return w.reshape(n_head, 2, hs // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _llama_gguf_tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    state = to_llama_state(model)
    if arch == "llama":
        for name in [n for n in state if ".self_attn.q_proj." in n or ".self_attn.k_proj." in n]:
            heads = model.config.n_head if ".q_proj." in name else model.config.kv_heads
            state[name] = interleave_rotary_rows(state[name], heads)
    return _gguf_names(state, LLAMA_TOP, LLAMA_NAMES)


def _add_hyperparameters(writer, cfg, arch: str) -> None:
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(_d_ff(cfg))
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.eps("layernorm"))
        return
    writer.add_layer_norm_rms_eps(cfg.eps("rmsnorm"))
    writer.add_rope_dimension_count(cfg.head_size)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_key_length(cfg.head_size)
    writer.add_value_length(cfg.head_size)


def _add_tokenizer(writer, tokenizer: Tokenizer, gguf) -> None:
    """The tokenizer.ggml.* keys: byte-level BPE for gpt2/bpe, single characters for char."""
    T = gguf.TokenType
    if isinstance(tokenizer, CharTokenizer):
        if SPACE in tokenizer.chars:
            raise ExportError(f"the char vocabulary holds {SPACE!r}, which llama.cpp reads as a space; "
                              "refit the tokenizer without it or export --format hf")
        writer.add_tokenizer_model("llama")  # SentencePiece-style: text split into characters, then looked up
        writer.add_tokenizer_pre("default")
        writer.add_token_list([SPACE if c == " " else c for c in tokenizer.chars])
        writer.add_token_scores([0.0] * tokenizer.vocab_size)
        writer.add_token_types([T.NORMAL] * tokenizer.vocab_size)  # "\n" is end-of-text and ordinary text
        writer.add_add_space_prefix(False)
    elif isinstance(tokenizer, (GPT2Tokenizer, BPETokenizer)):
        vocab, merges = _bpe_vocab_and_merges(tokenizer)
        tokens = sorted(vocab, key=vocab.get)
        if [vocab[t] for t in tokens] != list(range(tokenizer.vocab_size)):
            raise ExportError("the BPE vocabulary's ids are not 0..vocab_size-1; it cannot be written to GGUF")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
        writer.add_token_list(tokens)
        control = {tokenizer.eot_id} | _special_ids(tokenizer)
        writer.add_token_types([T.CONTROL if i in control else T.NORMAL for i in range(len(tokens))])
        writer.add_token_merges(merges)  # never empty: GGUFWriter silently drops empty arrays
    else:
        raise ExportError(f"tokenizer.kind={tokenizer.kind!r} has no llama.cpp equivalent; "
                          "the nearest exportable choice is tokenizer.kind=bpe (or char), or export --format hf")
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)  # we never prepend one
    writer.add_add_eos_token(False)


def _pre_tokenizer(tokenizer: Tokenizer) -> str:
    """llama.cpp's name for the byte-level BPE's split: GPT-2's (ours), SmolLM's (digits apart) or Qwen2/3's."""
    if isinstance(tokenizer, GPT2Tokenizer):
        return "gpt-2"
    pre = json.loads(tokenizer.backend.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    # (type, use_regex of ByteLevel or individual_digits of Digits, regex of Split); a prefix space is never known
    shape = tuple((s.get("type"), s.get("use_regex", s.get("individual_digits")), (s.get("pattern") or {}).get("Regex"))
                  for s in steps if not s.get("add_prefix_space"))
    known = {(("ByteLevel", True, None),): "gpt-2", (("Digits", True, None), ("ByteLevel", True, None)): "smollm",
             (("Split", None, QWEN2_SPLIT), ("ByteLevel", False, None)): "qwen2"}
    if len(shape) == len(steps) and shape in known:
        return known[shape]
    raise ExportError(f"the bpe tokenizer's pre-tokenizer {[s.get('type') for s in steps]} has no llama.cpp "
                      "equivalent slmkit knows (GPT-2's, SmolLM's, Qwen2/3's); export --format hf")


def _special_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the tokenizer's special added tokens (a pretrained tokenizer's <|im_start|>, ...)."""
    if isinstance(tokenizer, GPT2Tokenizer):
        return set()
    added = json.loads(tokenizer.backend.to_str()).get("added_tokens") or []
    return {t["id"] for t in added if t.get("special")}


def _bpe_vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[str]]:
    if isinstance(tokenizer, GPT2Tokenizer):
        vocab_bpe, encoder_json = check_files(gpt2_data_dir())
        merges = [line for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line]  # after "#version"
        return json.loads(encoder_json.read_text(encoding="utf-8")), merges
    model = json.loads(tokenizer.backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if not merges:
        raise ExportError("the bpe tokenizer has no merges (a vocabulary of bytes only); fit it on more text")
    return tokenizer.backend.get_vocab(), merges


def _add_tensors(writer, tensors: dict[str, torch.Tensor], dtype: str, gguf, bar: Bar) -> None:
    Q = gguf.GGMLQuantizationType
    for name, tensor in tensors.items():
        data = tensor.detach().float().cpu().numpy()
        # Matrices take the dtype; norms and biases stay f32 (as llama.cpp's converter does), and
        # q8_0 needs rows in whole blocks of 32, else the matrix stays f32.
        if data.ndim < 2 or dtype == "f32" or (dtype == "q8_0" and data.shape[-1] % 32):
            writer.add_tensor(name, data.astype(np.float32))
        elif dtype == "f16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
        bar.update(text=name)


def export_gguf(run_dir: Path | str, out: Path | str, dtype: str = "f32") -> Path:
    """Write the run's best model and tokenizer as one GGUF file llama.cpp loads (written atomically)."""
    gguf = _gguf()
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not known; valid: {', '.join(DTYPES)}")
    run = load_run(run_dir)
    cfg, out = run.config.model, Path(out)
    arch = hf_architecture(cfg)  # the same families as --format hf; raises for the others
    if arch == "gpt2":
        tensors = _gguf_names(gpt2_tensors(run.model), GPT2_TOP, GPT2_NAMES)
    else:
        tensors = _llama_gguf_tensors(run.model, arch)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(run.config.name or out.stem)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, cfg, arch)
        _add_tokenizer(writer, run.tokenizer, gguf)
        with Bar(len(tensors) + 1, f"export gguf {dtype}", unit="step") as bar:  # each tensor, then the file
            _add_tensors(writer, tensors, dtype, gguf, bar)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            bar.update(text=out.name)
        writer.close()
    return out
