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
