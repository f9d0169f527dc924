"""GGUF export: the file's metadata, tensors and tokenizer; with llama-cpp-python, llama.cpp itself runs it."""

from unittest import mock

import pytest
import torch

gguf = pytest.importorskip("gguf")

from slmkit.runs import load_run  # noqa: E402
from slmkit.config import load_recipe  # noqa: E402
from slmkit.errors import ExportError  # noqa: E402
from slmkit.export_gguf import SPACE, export_gguf, interleave_rotary_rows  # noqa: E402
from slmkit.generate import sample_ids  # noqa: E402
from slmkit.train import train  # noqa: E402

from conftest import TINY_TEXT, tiny_settings  # noqa: E402
from test_export import MODERN, make_run  # noqa: E402

ARCHS = {  # GGUF architecture -> our model options
    "gpt2": {},
    "gpt2-sinusoidal": {"pos_embedding": "sinusoidal", "bias": False},
    "llama": {**MODERN, "bias": False, "tie_embeddings": False},
    "llama-bias": {**MODERN, "bias": True},
    "qwen3": {**MODERN, "qk_norm": True, "bias": False},
}


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def dequantized(t) -> torch.Tensor:
    shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dimensions innermost first
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(shape)


@pytest.mark.parametrize("name", list(ARCHS))
def test_gguf_metadata_and_tensors_hold_the_model(tmp_path, name):
    run_dir = make_run(tmp_path / "run", "char", d_ff=64, **ARCHS[name])
    out = export_gguf(run_dir, tmp_path / "m.gguf")
    fields, tensors = read(out)
    arch = name.split("-")[0]
    cfg = load_run(run_dir).config.model
    assert fields["general.architecture"] == arch
    for key, value in [("context_length", 32), ("embedding_length", 32), ("block_count", 2),
                       ("feed_forward_length", 64), ("attention.head_count", 2)]:
        assert fields[f"{arch}.{key}"] == value, key
    if arch == "gpt2":
        assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
        assert all(f"blk.{i}.{t}.bias" in tensors for i in range(2) for t in ("attn_qkv", "attn_output", "ffn_up"))
    else:
        assert fields[f"{arch}.rope.dimension_count"] == 16 and fields[f"{arch}.rope.freq_base"] == 10000.0
        assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert ("output.weight" in tensors) == (not cfg.tie_embeddings)  # tied: llama.cpp reuses token_embd
    model = load_run(run_dir).model
    assert torch.equal(dequantized(tensors["token_embd.weight"]), model.transformer.wte.weight.detach())
    if name == "gpt2-sinusoidal":
        assert torch.equal(dequantized(tensors["position_embd.weight"]), model.pos_table)
        assert not dequantized(tensors["blk.0.attn_qkv.bias"]).any()  # zeros for the biases the model lacks
    if arch in ("llama", "qwen3"):
        q = model.transformer.h[1].attn.c_attn.weight.detach()[:32]
        expected = interleave_rotary_rows(q, 2) if arch == "llama" else q
        assert torch.equal(dequantized(tensors["blk.1.attn_q.weight"]), expected)
    if arch == "qwen3":
        assert torch.equal(dequantized(tensors["blk.0.attn_k_norm.weight"]), torch.ones(16))


def test_interleaving_turns_half_split_rotary_into_adjacent_pairs():
    hs, rows = 8, torch.arange(16.0)[:, None]  # two heads of 8 rows
    out = interleave_rotary_rows(rows, n_head=2)[:, 0].tolist()
    assert out[:hs] == [0, 4, 1, 5, 2, 6, 3, 7] and out[hs:] == [8, 12, 9, 13, 10, 14, 11, 15]


@pytest.mark.parametrize("dtype,expected", [("f16", "F16"), ("q8_0", "Q8_0")])
def test_gguf_dtypes_quantize_matrices_and_keep_norms_f32(tmp_path, dtype, expected):
    run_dir = make_run(tmp_path / "run", "char", d_ff=64, **ARCHS["qwen3"])
    _, tensors = read(export_gguf(run_dir, tmp_path / "m.gguf", dtype))
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == expected
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    model = load_run(run_dir).model
    w = model.transformer.h[0].mlp.c_fc.weight.detach()
    assert torch.allclose(dequantized(tensors["blk.0.ffn_up.weight"]), w, atol=w.abs().max().item() / 100)


def test_gguf_tokenizers(tmp_path):
    fields, _ = read(export_gguf(make_run(tmp_path / "char", "char"), tmp_path / "char.gguf"))
    run = load_run(tmp_path / "char")
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is False
    assert fields["tokenizer.ggml.tokens"] == [SPACE if c == " " else c for c in run.tokenizer.chars]
    assert fields["tokenizer.ggml.eos_token_id"] == run.tokenizer.eot_id == fields["tokenizer.ggml.bos_token_id"]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    fields, _ = read(export_gguf(make_run(tmp_path / "bpe", "bpe", vocab_size=300), tmp_path / "bpe.gguf"))
    run = load_run(tmp_path / "bpe")
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"][run.tokenizer.eot_id] == "<|endoftext|>"
    assert fields["tokenizer.ggml.token_type"][run.tokenizer.eot_id] == gguf.TokenType.CONTROL
    assert len(fields["tokenizer.ggml.merges"]) == 300 - 257  # 256 bytes + <|endoftext|>, then one token per merge


@pytest.mark.parametrize("kind,options,message", [
    ("word", {}, "tokenizer.kind='word' has no llama.cpp equivalent"),
    ("char", {**MODERN, "mlp": "relu2"}, "model.mlp='relu2' has no Hugging Face equivalent"),
    ("char", {**MODERN, "qk_norm": True, "bias": True}, "model.bias=true .* nearest exportable choice is model.bias=false"),
])
def test_gguf_refusals_are_one_line_and_write_nothing(tmp_path, kind, options, message):
    run_dir = make_run(tmp_path / "run", kind, **options)
    with pytest.raises(ExportError, match=message) as e:
        export_gguf(run_dir, tmp_path / "m.gguf")
    assert "\n" not in str(e.value)
    assert list(tmp_path.glob("*gguf*")) == []


# ---------------------------------------------------------------- llama.cpp itself

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None, reason="llama-cpp-python is not installed (pip install 'slmkit[llama]'; .ci/run builds it)"
)
RUNTIME = [("gpt2", "char"), ("gpt2-sinusoidal", "bpe"), ("llama", "char"), ("llama-bias", "bpe"), ("qwen3", "char"),
           ("qwen3", "bpe")]  # the gpt2 kind (50,257 tokens, slow to train): test_llama_cpp_reads_the_gpt2_kind
PROMPT = "And God said"
BLOCK = 64  # the prompt and 50 new tokens fit, so neither side slides its window


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(arch, kind): a tiny run of that architecture and tokenizer, trained briefly (so greedy ids are not ties)."""
    runs = {}

    def get(arch: str, kind: str):
        if (arch, kind) not in runs:
            root = tmp_path_factory.mktemp(f"{arch}-{kind}")
            (root / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
            settings = {**tiny_settings(root / "corpus.txt", root / "shards"), "model.block_size": BLOCK,
                        "train.max_steps": 60, "tokenizer.kind": kind, "tokenizer.min_frequency": 1,
                        **{f"model.{k}": v for k, v in ARCHS[arch].items()}}
            if kind == "bpe":
                settings["tokenizer.vocab_size"] = 300
            train(load_recipe("kjv-char-gpt2", settings), out=root / "run", progress_bar=False)
            runs[arch, kind] = root / "run"
        return runs[arch, kind]

    return get


def llama(path):
    """llama.cpp on an exported file, without its extra (repacked-weight) buffer types: on CPUs with AMX
    (seen on a Xeon with amx_int8, llama-cpp-python 0.3.36 built with GGML_NATIVE) evaluating a q8_0 file of
    these 32-wide models segfaults inside llama.cpp through them; the f32 files, and q8_0 without them, run."""
    module = llama_cpp.llama_cpp  # what Llama() reads its default model params from (it has no keyword for this)
    params = module.llama_model_default_params()
    params.use_extra_bufts = False
    with mock.patch.object(module, "llama_model_default_params", lambda: params):
        return llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_batch=BLOCK, n_threads=1, logits_all=True,
                               verbose=False)


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(llm.scores[llm.n_tokens - 1].argmax()))
        llm.eval(out[-1:])
    return out


def llama_nll(llm, ids: list[int]) -> float:
    """Mean negative log-likelihood of ids[1:] given the ones before, from llama.cpp's logits."""
    llm.reset()
    llm.eval(ids)
    logits = torch.from_numpy(llm.scores[: len(ids)].copy())
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()


def assert_same_tokens(llm, tokenizer, text: str) -> list[int]:
    """llama.cpp tokenizes `text` to our ids and decodes them back to `text`; returns the ids."""
    ids = tokenizer.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == text
    return ids


@needs_llama_cpp
@pytest.mark.parametrize("arch,kind", RUNTIME, ids=[f"{a}-{k}" for a, k in RUNTIME])
def test_llama_cpp_tokenizes_and_continues_as_slm_sample(tmp_path, trained, arch, kind):
    run_dir = trained(arch, kind)
    run = load_run(run_dir)
    llm = llama(export_gguf(run_dir, tmp_path / "m.gguf"))
    assert_same_tokens(llm, run.tokenizer, "And the earth was without form, and void;\nLet there be light.")
    prompt = run.tokenizer.encode(PROMPT)
    ours = list(sample_ids(run.model, prompt, max_new_tokens=50, temperature=0))  # what `slm sample --temperature 0` emits
    assert llama_greedy(llm, prompt, 50) == ours


@needs_llama_cpp
def test_llama_cpp_reads_the_gpt2_kind(tmp_path):
    run_dir = make_run(tmp_path / "run", "gpt2", block_size=BLOCK, **ARCHS["llama"])  # random weights
    run = load_run(run_dir)
    llm = llama(export_gguf(run_dir, tmp_path / "m.gguf"))
    ids = assert_same_tokens(llm, run.tokenizer, "And the earth was without form, and void; Caf\u00e9 42 <|endoftext|>\n")
    with torch.no_grad():
        x = torch.tensor([ids])
        ours = torch.nn.functional.cross_entropy(run.model(x)[0][0, :-1], x[0, 1:]).item()
    assert llama_nll(llm, ids) == pytest.approx(ours, rel=1e-4)


@needs_llama_cpp
@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_q8_0_perplexity_within_2_percent_of_f32(tmp_path, trained, arch):
    run_dir = trained(arch, "char")
    run = load_run(run_dir)
    ids = run.tokenizer.encode(TINY_TEXT[-BLOCK * 2:])[:BLOCK]
    f32 = llama_nll(llama(export_gguf(run_dir, tmp_path / "f32.gguf")), ids)
    q8 = llama_nll(llama(export_gguf(run_dir, tmp_path / "q8.gguf", "q8_0")), ids)
    with torch.no_grad():
        x = torch.tensor([ids])
        ours = torch.nn.functional.cross_entropy(run.model(x)[0][0, :-1], x[0, 1:]).item()
    assert f32 == pytest.approx(ours, rel=1e-4)  # f32 in llama.cpp is our model
    assert abs(torch.tensor(q8 - f32).exp().item() - 1) < 0.02  # perplexity ratio


@needs_llama_cpp
@pytest.mark.parametrize("name", ["smollm2", "qwen3"])
def test_llama_cpp_runs_an_imported_grouped_query_checkpoint_as_slm_sample(tmp_path, name):
    from slmkit.export import import_hf
    from test_export_pretrained import pretrained_folder

    pretrained_folder(tmp_path / "hf", name)  # GQA, rope_theta, eps; qwen3: learned q/k-norm gains, head_dim 16
    run = load_run(import_hf(tmp_path / "hf", tmp_path / "run"))
    out = export_gguf(tmp_path / "run", tmp_path / "m.gguf")
    fields, _ = read(out)
    assert fields["tokenizer.ggml.pre"] == {"smollm2": "smollm", "qwen3": "qwen2"}[name]  # the checkpoints' own splits
    assert fields[f"{fields['general.architecture']}.attention.head_count_kv"] == 2
    llm = llama(out)
    assert_same_tokens(llm, run.tokenizer, "And the earth was without form, 1234 times; it's void.\nLet there be light.")
    prompt = run.tokenizer.encode(PROMPT)
    ours = list(sample_ids(run.model, prompt, max_new_tokens=50, temperature=0))
    assert llama_greedy(llm, prompt, 50) == ours
