import pytest
import torch
from safetensors import safe_open

from slmkit.errors import CheckpointError
from slmkit.evaluate import evaluate_run
from slmkit.generate import sample_ids
from slmkit.quantize import SCHEME, quantize_model
from slmkit.runs import INT8, load_int8, load_run, quantize_run


@pytest.fixture(scope="module")
def quantized_run(tiny_run, tmp_path_factory):
    import shutil

    run_dir = tmp_path_factory.mktemp("q") / "run"
    shutil.copytree(tiny_run, run_dir)
    quantize_run(run_dir)
    return run_dir


def test_int8_file_is_plain_int8_tensors(quantized_run):
    with safe_open(str(quantized_run / INT8), framework="pt") as f:
        assert f.metadata()["quantization"] == SCHEME
        keys = set(f.keys())
        assert f.get_tensor("transformer.h.0.attn.c_attn.weight").dtype == torch.int8
        assert f.get_tensor("transformer.wte.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys  # tied: stored once, as transformer.wte.weight


def test_lm_head_stays_fp32_and_tied(quantized_run):
    model = load_run(quantized_run, int8=True).model
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    assert type(model.transformer.h[0].mlp.c_fc).__module__.startswith("torch.ao.nn.quantized.dynamic")


def test_loaded_int8_model_equals_the_freshly_quantized_one(quantized_run):
    fp = load_run(quantized_run)
    fresh = quantize_model(load_run(quantized_run).model)
    loaded = load_run(quantized_run, int8=True).model
    x = torch.randint(0, fp.config.model.vocab_size, (2, 16))
    with torch.no_grad():
        a, b, ref = fresh(x)[0], loaded(x)[0], fp.model(x)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, ref) and torch.allclose(a, ref, atol=0.1)  # int8 is close, not equal


def test_int8_eval_logits_and_greedy_ids_follow_fp32(quantized_run):
    fp, q = evaluate_run(quantized_run), evaluate_run(quantized_run, int8=True)
    assert q.metrics["loss"] == pytest.approx(fp.metrics["loss"], rel=0.02)
    fp_run, q_run = load_run(quantized_run), load_run(quantized_run, int8=True)
    prompt = fp_run.tokenizer.encode("And God said")
    with torch.no_grad():
        ref, got = fp_run.model(torch.tensor([prompt]))[0], q_run.model(torch.tensor([prompt]))[0]
    assert (got - ref).abs().max() < 0.02 * (ref.max() - ref.min())  # 0.3% of the logits' spread here
    # along this greedy path the top two fp32 logits are >= 0.02 apart, over 3x the int8 error: the same ids
    greedy = lambda model: list(sample_ids(model, prompt, max_new_tokens=12, temperature=0))
    assert greedy(q_run.model) == greedy(fp_run.model)


def test_missing_or_foreign_int8_file(quantized_run, tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="slm quantize"):
        load_run(tiny_run, int8=True)
    cfg = load_run(quantized_run).config.model
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / INT8))
    with pytest.raises(CheckpointError, match="not an int8 model"):
        load_int8(cfg, tmp_path / INT8)
