"""`slm import-hf` of pretrained-style Llama and Qwen3 folders, and back: SmolLM2's and Qwen3's
config.json in miniature (grouped k/v heads, rotary base, epsilon, learned q/k-norm gains, explicit
head_dim, padded vocabulary, tied and untied) with a byte-level BPE tokenizer.json whose end-of-text
is not `<|endoftext|>`. Random weights, no download; skipped without `transformers`."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer as HFBackend  # noqa: E402
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers  # noqa: E402

from slmkit.errors import ExportError  # noqa: E402
from slmkit.export import export_hf, import_hf  # noqa: E402
from slmkit.export_gguf import QWEN2_SPLIT  # noqa: E402
from slmkit.runs import BEST, SPECIAL_TOKENS, load_run  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402

CHAT = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# name -> (HF class, config options, special tokens before the vocabulary, after it, eos token, padded rows)
CASES = {
    # SmolLM2-135M-Instruct's shape in miniature: 9 heads / 3 k/v heads there, theta 1e5, eps 1e-5, tied
    "smollm2": ("LlamaForCausalLM", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, rope_theta=1e5,
                                         rms_norm_eps=1e-5, tie_word_embeddings=True), CHAT, [], "<|im_end|>", 0),
    # a Llama-2 style vocabulary (<unk> <s> </s> first), one k/v head, untied, attention biases
    "llama": ("LlamaForCausalLM", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, rope_theta=5e5,
                                       rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True),
              ["<unk>", "<s>", "</s>"], [], "</s>", 0),
    # Qwen3-0.6B's: head_dim * heads != hidden_size, theta 1e6, eps 1e-6, specials after the vocabulary, rows padded
    "qwen3": ("Qwen3ForCausalLM", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True), [], CHAT, "<|im_end|>", 13),
    "qwen3-untied": ("Qwen3ForCausalLM", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                              rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False), [], CHAT,
                     "<|im_end|>", 0),
}
PROMPT = "And God said"
# each case's split before byte-level BPE, as the released tokenizer.json's: GPT-2's, SmolLM2's (digits apart), Qwen3's
SPLITS = {
    "llama": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm2": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    "qwen3": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}


def byte_level_bpe(before: list[str], after: list[str], split: str) -> HFBackend:
    """A byte-level BPE of ~300 tokens fitted on TINY_TEXT after SPLITS[split], with special tokens before
    and/or after the vocabulary."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = SPLITS[split]()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, special_tokens=before,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TINY_TEXT.splitlines(), trainer)
    backend.add_special_tokens(after)
    return backend


def pretrained_folder(path, name: str):
    """A random transformers model of case `name`, saved with its tokenizer.json; returns (model, tokenizer)."""
    hf_class, options, before, after, eos, padded = CASES[name]
    backend = byte_level_bpe(before, after, name.split("-")[0])
    vocab = backend.get_vocab_size()
    config = getattr(transformers, hf_class.replace("ForCausalLM", "Config"))(
        vocab_size=vocab + padded, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=64,
        eos_token_id=backend.token_to_id(eos), bos_token_id=backend.token_to_id(before[1] if before else eos), **options)
    torch.manual_seed(0)
    model = getattr(transformers, hf_class)(config).eval()
    with torch.no_grad():  # every tensor random (q/k-norm gains too), and wide enough that greedy ids are not ties
        for n, p in model.named_parameters():
            p.normal_(1.0, 0.3) if "norm" in n else p.normal_(0.0, 0.1 if n.endswith("bias") else 0.2)
    model.save_pretrained(path)
    backend.save(str(path / "tokenizer.json"))
    return model, backend


def hf_greedy(model, ids: list[int], n: int, vocab: int) -> list[int]:
    """transformers' greedy continuation, not stopping at eos (as `slm sample`) and never a padded row."""
    model.generation_config.eos_token_id = None
    suppress = list(range(vocab, model.config.vocab_size)) or None
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long), suppress_tokens=suppress)
    return out[0, len(ids):].tolist()


def assert_same_logits(hf_model, ours, vocab: int):
    x = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = hf_model(x).logits[..., :vocab], ours(x)[0]
    assert mine.shape[-1] == vocab  # padded rows dropped
    assert torch.allclose(theirs, mine, atol=1e-4), (theirs - mine).abs().max()


@pytest.mark.parametrize("name", list(CASES))
def test_import_gives_identical_logits_and_the_configs_end_of_text(tmp_path, name):
    hf_model, backend = pretrained_folder(tmp_path / "hf", name)
    hf_cfg = hf_model.config
    run = load_run(import_hf(tmp_path / "hf", tmp_path / "run"))
    cfg = run.config.model
    assert (cfg.n_head, cfg.kv_heads, cfg.head_size) == (hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads,
                                                         hf_cfg.head_dim)
    assert (cfg.rope_theta, cfg.norm_eps, cfg.tie_embeddings) == (CASES[name][1]["rope_theta"],
                                                                 hf_cfg.rms_norm_eps, hf_cfg.tie_word_embeddings)
    assert cfg.qk_norm_gain == cfg.qk_norm == name.startswith("qwen3")
    assert cfg.vocab_size == backend.get_vocab_size()
    assert run.tokenizer.eot_id == hf_cfg.eos_token_id and run.tokenizer.decode([run.tokenizer.eot_id]) == CASES[name][4]
    assert json.loads((tmp_path / "run" / SPECIAL_TOKENS).read_text())["eos_token"] == CASES[name][4]
    text = "And God said, Let there be light 1234 times; it's\n"
    assert run.tokenizer.encode(text) == backend.encode(text, add_special_tokens=False).ids
    for special in CASES[name][2] + CASES[name][3]:  # the tokenizer's own special tokens stay, with their ids
        assert run.tokenizer.decode([backend.token_to_id(special)]) == special
    assert_same_logits(hf_model, run.model, cfg.vocab_size)


@pytest.mark.parametrize("name", list(CASES))
def test_export_of_the_import_gives_the_same_logits_and_config(tmp_path, name):
    hf_model, backend = pretrained_folder(tmp_path / "hf", name)
    export_hf(import_hf(tmp_path / "hf", tmp_path / "run"), tmp_path / "back")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == CASES[name][0]
    vocab = backend.get_vocab_size()
    for key in ("num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "eos_token_id"):
        assert getattr(back.config, key) == getattr(hf_model.config, key), key
    assert back.config.rope_parameters["rope_theta"] == hf_model.config.rope_parameters["rope_theta"]
    assert_same_logits(hf_model, lambda x: (back(x).logits,), vocab)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert tokenizer.eos_token == CASES[name][4] and tokenizer.eos_token_id == hf_model.config.eos_token_id
    assert tokenizer(PROMPT)["input_ids"] == backend.encode(PROMPT, add_special_tokens=False).ids


@pytest.mark.parametrize("name", ["smollm2", "qwen3"])
def test_slm_sample_greedy_equals_transformers_greedy_and_finetune_runs(tmp_path, tiny_corpus, capsys, name):
    from slmkit.cli import main

    hf_model, backend = pretrained_folder(tmp_path / "hf", name)
    main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    capsys.readouterr()
    main(["sample", "--run", str(tmp_path / "run"), "--prompt", PROMPT, "--max-new-tokens", "20", "--temperature", "0"])
    ids = backend.encode(PROMPT, add_special_tokens=False).ids
    greedy = hf_greedy(hf_model, ids, 20, backend.get_vocab_size())
    assert capsys.readouterr().out.strip() == backend.decode(ids + greedy, skip_special_tokens=False).strip()
    if name != "qwen3":
        return
    main(["finetune", "--from", str(tmp_path / "run"), "--out", str(tmp_path / "ft"), "--no-progress",
          f"--data.source={tiny_corpus}", f"--data.shard_dir={tmp_path / 'shards'}", "--train.max_steps=4",
          "--train.batch_size=2", "--train.eval_interval=2", "--train.eval_batches=1", "--train.lr=1e-3"])
    imported, tuned = load_run(tmp_path / "run"), load_run(tmp_path / "ft")
    assert tuned.config.model == imported.config.model and tuned.tokenizer.eot_id == imported.tokenizer.eot_id
    assert not torch.equal(tuned.model.transformer.h[0].attn.q_norm.weight, imported.model.transformer.h[0].attn.q_norm.weight)
    assert (tmp_path / "ft" / BEST).is_file()


# The released checkpoints' config.json (transformers 4 format), as published on the Hugging Face hub.
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0,
    "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536, "is_llama_config": True, "max_position_embeddings": 8192, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
    "vocab_size": 49152,
}
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}


@pytest.mark.parametrize("hf,params,cache_mb", [(SMOLLM2_135M, 134_515_008, 360), (QWEN3_06B, 596_049_920, 8960)],
                         ids=["SmolLM2-135M", "Qwen3-0.6B"])
def test_the_released_configs_map_to_their_published_parameter_counts(hf, params, cache_mb):
    from slmkit.export import model_config_from_llama
    from slmkit.model import GPT, KVCache

    cfg = model_config_from_llama(hf, "config.json", learned_qk_gains=hf["model_type"] == "qwen3")
    with torch.device("meta"):  # the shapes only, no memory
        model = GPT(cfg)
        cache = KVCache(cfg, device="meta")
    assert model.num_parameters() == params  # 134.5M and 0.6B as published (tied heads counted once)
    assert (cache.k.nbytes + cache.v.nbytes) // 2**20 == cache_mb  # one slot at the full context: hence --block-size
    assert cfg.rope_theta == hf["rope_theta"] and cfg.norm_eps == hf["rms_norm_eps"]


def test_block_size_shortens_the_context_and_keeps_the_logits(tmp_path):
    hf_model, backend = pretrained_folder(tmp_path / "hf", "qwen3")
    run = load_run(import_hf(tmp_path / "hf", tmp_path / "run", block_size=32))
    assert run.config.model.block_size == 32 and run.model.new_cache().k.shape[3] == 32
    assert_same_logits(hf_model, run.model, backend.get_vocab_size())
    with pytest.raises(ExportError, match="--block-size 65 must be between 1 and the checkpoint's 64"):
        import_hf(tmp_path / "hf", tmp_path / "other", block_size=65)


def test_a_sharded_checkpoint_imports(tmp_path):
    hf_model, backend = pretrained_folder(tmp_path / "hf", "smollm2")
    (tmp_path / "hf" / "model.safetensors").unlink()
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")  # model.safetensors.index.json + shards
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() and len(list((tmp_path / "hf").glob("*-of-*"))) > 1
    assert_same_logits(hf_model, load_run(import_hf(tmp_path / "hf", tmp_path / "run")).model, backend.get_vocab_size())
