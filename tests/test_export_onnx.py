"""ONNX export checked with onnxruntime: the same logits for any batch and sequence length."""

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from slmkit.runs import load_run  # noqa: E402
from slmkit.cli import main  # noqa: E402

from test_export import MODERN, make_run  # noqa: E402


@pytest.mark.parametrize("options", [{}, {**MODERN, "qk_norm": True, "bias": False}, {**MODERN, "mlp": "relu2"}],
                         ids=["gpt2", "qwen3", "relu2"])  # ONNX holds any of our architectures, even ReLU²
def test_onnx_logits_match_for_dynamic_batch_and_sequence(tmp_path, options, capsys):
    run_dir = make_run(tmp_path / "run", "char", **options)
    main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model = load_run(run_dir).model
    for batch, length in [(1, 1), (3, 17), (2, 32)]:
        ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(length))
        theirs = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
        with torch.no_grad():
            assert torch.allclose(theirs, model(ids)[0], atol=1e-4)


def ort_greedy(session, prompt: list[int], n: int, cfg) -> list[int]:
    """Greedy decoding through the KV-cache graph: the prompt, then one token at a time with the presents fed back."""
    import numpy as np

    past = np.zeros((cfg.n_layer, 1, cfg.kv_heads, 0, cfg.head_size), dtype=np.float32)
    keys, values, ids, out = past, past.copy(), prompt, []
    for _ in range(n):
        logits, keys, values = session.run(None, {"input_ids": np.array([ids]), "past_keys": keys, "past_values": values})
        out.append(int(logits[0, -1].argmax()))
        ids = out[-1:]
    return out


@pytest.mark.parametrize("options", [{}, {**MODERN, "qk_norm": True, "qk_norm_gain": True, "bias": False, "n_kv_head": 1,
                                          "head_dim": 8, "rope_theta": 1e6}], ids=["gpt2", "qwen3-gqa"])
def test_onnx_kv_cache_graph_decodes_as_slm_sample(tmp_path, options, capsys):
    from slmkit.generate import sample_ids

    run_dir = make_run(tmp_path / "run", "char", **options)
    main(["export", "--run", str(run_dir), "--format", "onnx", "--kv-cache", "--out", str(tmp_path / "m.onnx")])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model = load_run(run_dir).model
    cfg = model.config
    prompt = list(range(1, 6))
    assert ort_greedy(session, prompt, 20, cfg) == list(sample_ids(model, prompt, max_new_tokens=20, temperature=0))
    ids = torch.randint(0, cfg.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)[0]
    past = torch.zeros(cfg.n_layer, 3, cfg.kv_heads, 0, cfg.head_size).numpy()
    keys, values = past, past.copy()
    for lo, hi in [(0, 7), (7, 8), (8, 20)]:  # a prefill, one token, then a chunk past cached positions (masked)
        logits, keys, values = session.run(None, {"input_ids": ids[:, lo:hi].numpy(), "past_keys": keys, "past_values": values})
        assert keys.shape[3] == hi and torch.allclose(torch.from_numpy(logits[:, 0]), full[:, hi - 1], atol=1e-4)
