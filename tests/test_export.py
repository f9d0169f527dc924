"""Export to and import from Hugging Face GPT-2 folders; skipped without `transformers`."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from slmkit.config import RunConfig, TokenizerConfig  # noqa: E402
from slmkit.errors import ExportError  # noqa: E402
from slmkit.export import check_gpt2_compatible, export_hf, import_hf  # noqa: E402
from slmkit.generate import sample_ids  # noqa: E402
from slmkit.model import GPT  # noqa: E402
from slmkit.runs import BEST, LAST, load_run, save_weights, write_run_files  # noqa: E402
from slmkit.tokenizer import fit_tokenizer  # noqa: E402
from slmkit.tokenizer.gpt2 import gpt2_data_dir  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402  (tests/ is on sys.path: rootdir conftest)


def make_run(path, kind: str, bias: bool = True, vocab_size: int = 0):
    """A run folder holding a randomly initialized tiny GPT with a `kind` tokenizer."""
    cfg = RunConfig(tokenizer=TokenizerConfig(kind=kind, vocab_size=vocab_size, min_frequency=1))
    tokenizer = fit_tokenizer(cfg.tokenizer, TINY_TEXT.splitlines())
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size = 2, 2, 32, 32
    cfg.model.bias, cfg.model.vocab_size = bias, tokenizer.vocab_size
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():  # random biases and norms, so a wrong mapping shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    write_run_files(path, cfg, tokenizer)
    save_weights(model, path / BEST)
    return path


def hf_load(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def assert_same_model(hf_model, ours: GPT, vocab_size: int):
    x = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = hf_model(x).logits, ours(x)[0]
    assert torch.allclose(theirs, mine, atol=1e-4), (theirs - mine).abs().max()
    prompt = x[0, :5]
    greedy_hf = hf_model.generate(
        prompt[None], max_new_tokens=12, do_sample=False, pad_token_id=0, attention_mask=torch.ones(1, 5, dtype=torch.long)
    )[0, 5:].tolist()
    greedy_ours = list(sample_ids(ours, prompt.tolist(), max_new_tokens=12, temperature=0))
    assert greedy_hf == greedy_ours


@pytest.mark.parametrize("bias", [True, False])
def test_export_char_run_gives_same_logits_and_greedy_ids(tmp_path, bias):
    run_dir = make_run(tmp_path / "run", "char", bias=bias)
    result = export_hf(run_dir, tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    assert "char" in result.note  # no AutoTokenizer for characters, and the user is told
    run = load_run(run_dir)
    assert_same_model(hf_load(tmp_path / "hf"), run.model, run.config.model.vocab_size)


def test_export_of_the_trained_tiny_run(tiny_run, tmp_path):
    export_hf(tiny_run, tmp_path / "hf")
    run = load_run(tiny_run)
    assert_same_model(hf_load(tmp_path / "hf"), run.model, run.config.model.vocab_size)


@pytest.mark.parametrize("kind,vocab_size", [("gpt2", 0), ("bpe", 300)])
def test_exported_tokenizer_loads_in_autotokenizer(tmp_path, kind, vocab_size):
    run_dir = make_run(tmp_path / "run", kind, vocab_size=vocab_size)
    result = export_hf(run_dir, tmp_path / "hf")
    assert result.note is None
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    run = load_run(run_dir)
    text = "And God said, Let there be light: and there was light.  Caf\u00e9 42"
    assert hf_tok(text)["input_ids"] == run.tokenizer.encode(text)
    assert hf_tok.decode(run.tokenizer.encode(text)) == text
    assert hf_tok.eos_token_id == run.tokenizer.eot_id
    assert_same_model(hf_load(tmp_path / "hf"), run.model, run.config.model.vocab_size)


def test_configurations_gpt2_cannot_represent_are_clear_errors(tmp_path):
    cfg = RunConfig().model
    cfg.pos_embedding = "rotary"  # an option of later model versions
    with pytest.raises(ExportError, match="model.pos_embedding='rotary' has no Hugging Face GPT-2 equivalent"):
        check_gpt2_compatible(cfg)


def gpt2_folder(path, vocab_size=50257):
    """A randomly initialized transformers GPT-2, saved locally with GPT-2's tokenizer files."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=vocab_size)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    shutil.copyfile(gpt2_data_dir() / "encoder.json", path / "vocab.json")
    shutil.copyfile(gpt2_data_dir() / "vocab.bpe", path / "merges.txt")
    return model


def test_import_random_transformers_gpt2(tmp_path):
    hf_model = gpt2_folder(tmp_path / "hf")
    run_dir = import_hf(tmp_path / "hf", tmp_path / "run")
    run = load_run(run_dir)
    assert run.tokenizer.kind == "gpt2" and run.config.model.block_size == 64
    assert (run_dir / LAST).is_file()
    assert_same_model(hf_model, run.model, 50257)


def test_import_with_a_bpe_tokenizer_json_and_round_trip(tmp_path):
    run_dir = make_run(tmp_path / "run", "bpe", vocab_size=300)
    export_hf(run_dir, tmp_path / "hf")
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_run(run_dir), load_run(back)
    assert b.tokenizer.kind == "bpe" and b.tokenizer.encode("And God") == a.tokenizer.encode("And God")
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name


def test_import_errors(tmp_path):
    with pytest.raises(ExportError, match="config.json is missing"):
        (tmp_path / "empty").mkdir()
        import_hf(tmp_path / "empty", tmp_path / "run")
    gpt2_folder(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ExportError, match="activation_function 'relu'"):
        import_hf(tmp_path / "hf", tmp_path / "run")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    (tmp_path / "hf" / "vocab.json").unlink()
    with pytest.raises(ExportError, match="no tokenizer"):
        import_hf(tmp_path / "hf", tmp_path / "run")
