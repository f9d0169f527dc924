"""Export to and import from Hugging Face GPT-2 folders; skipped without `transformers`."""

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from slmkit.config import RunConfig, TokenizerConfig  # noqa: E402
from slmkit.errors import ExportError  # noqa: E402
from slmkit.export import export_hf, hf_architecture, import_hf  # noqa: E402
from slmkit.generate import sample_ids  # noqa: E402
from slmkit.model import GPT  # noqa: E402
from slmkit.runs import BEST, LAST, load_run, save_weights, write_run_files  # noqa: E402
from slmkit.tokenizer import fit_tokenizer  # noqa: E402
from slmkit.tokenizer.gpt2 import gpt2_data_dir  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402  (tests/ is on sys.path: rootdir conftest)


MODERN = {"pos_embedding": "rotary", "norm": "rmsnorm", "mlp": "swiglu"}


def make_run(path, kind: str, bias: bool = True, vocab_size: int = 0, **model_options):
    """A run folder holding a randomly initialized tiny GPT with a `kind` tokenizer."""
    cfg = RunConfig(tokenizer=TokenizerConfig(kind=kind, vocab_size=vocab_size, min_frequency=1))
    tokenizer = fit_tokenizer(cfg.tokenizer, TINY_TEXT.splitlines())
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size = 2, 2, 32, 32
    cfg.model.bias, cfg.model.vocab_size = bias, tokenizer.vocab_size
    for key, value in model_options.items():
        setattr(cfg.model, key, value)
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
    assert "newline" in result.note  # the char kind's end-of-text: generate stops at a line's end, and the user is told
    run = load_run(run_dir)
    assert_same_model(hf_load(tmp_path / "hf"), run.model, run.config.model.vocab_size)


def test_export_of_the_trained_tiny_run(tiny_run, tmp_path):
    export_hf(tiny_run, tmp_path / "hf")
    run = load_run(tiny_run)
    assert_same_model(hf_load(tmp_path / "hf"), run.model, run.config.model.vocab_size)


KINDS = {"char": 0, "word": 0, "bpe": 300, "wordpiece": 300, "gpt2": 0}  # kind -> tokenizer.vocab_size


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(kind): (run folder, HF folder) of a tiny random run with a `kind` tokenizer, made once per kind."""
    made = {}

    def get(kind: str):
        if kind not in made:
            root = tmp_path_factory.mktemp(kind)
            export_hf(make_run(root / "run", kind, vocab_size=KINDS[kind]), root / "hf")
            made[kind] = root / "run", root / "hf"
        return made[kind]

    return get


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_tokenizer_kind_loads_in_autotokenizer_with_our_ids(exported, kind):
    run_dir, hf_dir = exported(kind)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    run = load_run(run_dir)
    text = "And God said, Let there be light:\nand there was light.  In the beginning"
    if kind not in ("char", "word"):
        text += " Caf\u00e9 42 <|endoftext|>"  # a literal end-of-text marker is ordinary text, as in slmkit
    ids = run.tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids) == run.tokenizer.decode(ids)
    eot = run.tokenizer.eot_id
    assert hf_tok.eos_token_id == hf_tok.bos_token_id == eot
    for name in ("config.json", "generation_config.json"):
        config = json.loads((hf_dir / name).read_text())
        assert config["eos_token_id"] == config["bos_token_id"] == eot, name


@pytest.mark.parametrize("kind", list(KINDS))
def test_random_text_of_the_alphabet_gives_equal_ids_both_ways(exported, kind):
    run_dir, hf_dir = exported(kind)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_run(run_dir).tokenizer
    alphabet = sorted(set(TINY_TEXT)) if kind == "char" else sorted(set(TINY_TEXT) | set("\u00e9\u00fc\t!?42<|>"))

    @settings(max_examples=60, deadline=None, database=None)
    @given(st.text(alphabet=alphabet, max_size=60))
    def same_ids(text):
        ids = ours.encode(text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == ours.decode(ids)

    same_ids()


def test_a_char_export_runs_in_the_pipeline_up_to_its_end_of_text(tmp_path):
    run_dir = make_run(tmp_path / "run", "char", **MODERN, qk_norm=True, bias=False)
    export_hf(run_dir, tmp_path / "hf")
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    run = load_run(run_dir)
    ids = run.tokenizer.encode("And God")
    greedy = run.tokenizer.decode(list(sample_ids(run.model, ids, max_new_tokens=20, temperature=0)))
    text = pipe("And God", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert text == "And God" + greedy.split("\n")[0]  # generate stops at the newline, our end-of-text


EXPORTABLE = [  # (model options, the HF class that holds them)
    *[({"pos_embedding": pos, "bias": bias, "tie_embeddings": tie}, "GPT2LMHeadModel")
      for pos in ("learned", "sinusoidal") for bias in (True, False) for tie in (True, False)],
    *[({**MODERN, "bias": bias, "tie_embeddings": tie}, "LlamaForCausalLM") for bias in (True, False) for tie in (True, False)],
    *[({**MODERN, "qk_norm": True, "bias": False, "tie_embeddings": tie}, "Qwen3ForCausalLM") for tie in (True, False)],
]


@pytest.mark.parametrize("options,hf_class", EXPORTABLE, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items())
                         if isinstance(v, dict) else v)
def test_every_exportable_architecture_gives_same_logits_and_greedy_ids(tmp_path, options, hf_class):
    run_dir = make_run(tmp_path / "run", "char", d_ff=48, **options)
    export_hf(run_dir, tmp_path / "hf")
    hf_model = hf_load(tmp_path / "hf")
    assert type(hf_model).__name__ == hf_class
    assert (hf_model.lm_head.weight is hf_model.get_input_embeddings().weight) == options["tie_embeddings"]
    run = load_run(run_dir)
    assert_same_model(hf_model, run.model, run.config.model.vocab_size)


def test_our_rotary_pairs_dimensions_as_hf_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from slmkit.model import _rotate

    cfg = RunConfig().model
    cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.pos_embedding = 32, 2, 10, "rotary"
    model = GPT(cfg)
    q, k = torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    cos, sin = model.rope_cos[:7], model.rope_sin[:7]  # (T, hs/2)
    # HF repeats the angles over both halves: dimension i and i + hs/2 share angle i (rotate_half)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None])
    assert torch.allclose(_rotate(q, cos, sin), hf_q, atol=1e-6) and torch.allclose(_rotate(k, cos, sin), hf_k, atol=1e-6)


@pytest.mark.parametrize("options", [{}, MODERN, {**MODERN, "qk_norm": True, "bias": False}], ids=["gpt2", "llama", "qwen3"])
def test_pipeline_generates_from_the_export(tmp_path, options):
    run_dir = make_run(tmp_path / "run", "bpe", vocab_size=300, **options)
    export_hf(run_dir, tmp_path / "hf")
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    run = load_run(run_dir)
    prompt = "And God said"
    text = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    ids = run.tokenizer.encode(prompt)
    assert text == run.tokenizer.decode(ids + list(sample_ids(run.model, ids, max_new_tokens=8, temperature=0)))


@pytest.mark.parametrize("options,message", [
    ({**MODERN, "mlp": "relu2"}, "model.mlp='relu2' has no Hugging Face equivalent; the nearest exportable choice is model.mlp='swiglu'"),
    ({"norm": "rmsnorm"}, "model.pos_embedding='learned' has no Hugging Face equivalent; .* model.pos_embedding='rotary'"),
    ({"pos_embedding": "none"}, "model.pos_embedding='none' .* choice is model.pos_embedding='learned' \\(GPT-2\\)"),
    ({"mlp": "relu2"}, "model.mlp='relu2' .* choice is model.mlp='gelu' \\(GPT-2\\)"),
    ({**MODERN, "qk_norm": True, "bias": True}, "model.bias=true with model.qk_norm=true .* model.bias=false"),
    ({**MODERN, "logit_softcap": 30.0}, "model.logit_softcap=30.0 has no Hugging Face equivalent"),
])
def test_configurations_no_hf_class_holds_are_one_line_errors(tmp_path, options, message):
    cfg = RunConfig().model
    for key, value in options.items():
        setattr(cfg, key, value)
    with pytest.raises(ExportError, match=message) as e:
        hf_architecture(cfg)
    assert "\n" not in str(e.value)


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


@pytest.mark.parametrize("options", [{}, MODERN, {**MODERN, "qk_norm": True, "bias": False, "tie_embeddings": False}],
                         ids=["gpt2", "llama", "qwen3"])
def test_import_with_a_bpe_tokenizer_json_and_round_trip(tmp_path, options):
    run_dir = make_run(tmp_path / "run", "bpe", vocab_size=300, **options)
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


def llama_folder(path, hf_class: str, tie: bool, attention_bias: bool, mlp_bias: bool = False):
    """A randomly initialized transformers Llama/Qwen3 (grouped k/v heads) saved with one of our bpe tokenizers."""
    tokenizer = fit_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1), TINY_TEXT.splitlines())
    shape = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                 tie_word_embeddings=tie, attention_bias=attention_bias, eos_token_id=tokenizer.eot_id,
                 bos_token_id=tokenizer.eot_id)
    if hf_class == "LlamaForCausalLM":
        config = transformers.LlamaConfig(**shape, mlp_bias=mlp_bias)
    else:
        config = transformers.Qwen3Config(**shape)
    torch.manual_seed(0)
    model = getattr(transformers, hf_class)(config).eval()
    with torch.no_grad():  # random norms and biases, so a wrong mapping shows (QK-norm gains stay ones)
        for name, p in model.named_parameters():
            if p.dim() == 1 and "q_norm" not in name and "k_norm" not in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    model.save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")
    return model


@pytest.mark.parametrize("hf_class,tie,attention_bias,mlp_bias", [
    ("LlamaForCausalLM", True, False, False), ("LlamaForCausalLM", False, True, True),
    ("LlamaForCausalLM", False, True, False), ("Qwen3ForCausalLM", True, False, False),
    ("Qwen3ForCausalLM", False, True, False),
])
def test_import_random_transformers_llama_and_qwen3(tmp_path, hf_class, tie, attention_bias, mlp_bias):
    hf_model = llama_folder(tmp_path / "hf", hf_class, tie, attention_bias, mlp_bias)
    run = load_run(import_hf(tmp_path / "hf", tmp_path / "run"))
    cfg = run.config.model
    assert (cfg.pos_embedding, cfg.norm, cfg.mlp, cfg.qk_norm) == ("rotary", "rmsnorm", "swiglu", hf_class == "Qwen3ForCausalLM")
    assert cfg.tie_embeddings == tie and cfg.block_size == 64 and run.tokenizer.kind == "bpe"
    assert_same_model(hf_model, run.model, cfg.vocab_size)


def test_import_refuses_what_slmkit_cannot_compute(tmp_path):
    llama_folder(tmp_path / "hf", "Qwen3ForCausalLM", tie=True, attention_bias=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    for key, value, message in [
        ("hidden_act", "gelu", "hidden_act 'gelu'"), ("model_type", "mistral", "model_type 'mistral' does not import"),
        ("rope_parameters", {**config.get("rope_parameters", {}), **yarn}, "rope_parameters type 'yarn' .*not implemented"),
        ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "rope_scaling type 'llama3' .*not implemented"),
        ("use_sliding_window", True, "use_sliding_window true"), ("eos_token_id", 100000, "eos_token_id 100000 is not a token"),
    ]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ExportError, match=message) as e:
            import_hf(tmp_path / "hf", tmp_path / "run")
        assert "\n" not in str(e.value)


def test_an_imported_llama_samples_evaluates_and_finetunes_through_the_cli(tmp_path, tiny_corpus, capsys):
    from slmkit.cli import main

    hf_model = llama_folder(tmp_path / "hf", "LlamaForCausalLM", tie=False, attention_bias=False)
    main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    run = load_run(tmp_path / "run")
    prompt = "And God said"
    capsys.readouterr()
    main(["sample", "--run", str(tmp_path / "run"), "--prompt", prompt, "--max-new-tokens", "10", "--temperature", "0"])
    ids = run.tokenizer.encode(prompt)
    greedy = hf_model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0)[0].tolist()
    assert capsys.readouterr().out.strip() == run.tokenizer.decode(greedy).strip()
    main(["eval", "--run", str(tmp_path / "run"), "--data.source", str(tiny_corpus)])
    assert "bits" in capsys.readouterr().out
    main(["finetune", "--from", str(tmp_path / "run"), "--out", str(tmp_path / "ft"), "--no-progress",
          f"--data.source={tiny_corpus}", f"--data.shard_dir={tmp_path / 'shards'}", "--train.max_steps=3",
          "--train.batch_size=2", "--train.eval_interval=3", "--train.eval_batches=1"])
    assert load_run(tmp_path / "ft").config.model == run.config.model
