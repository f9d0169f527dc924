"""lm-evaluation-harness on an export scores the same bits/byte as `slm eval`, for every tokenizer kind."""

import pytest

pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

from slmkit.evaluate import evaluate_run  # noqa: E402
from slmkit.export import export_hf  # noqa: E402

from conftest import TINY_TEXT  # noqa: E402
from test_export import KINDS, make_run  # noqa: E402

TASK = """task: slm_text
dataset_path: text
dataset_kwargs:
  data_files:
    test: {path}
  sample_by: document
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A local loglikelihood_rolling task over one text file (one document, several windows of block_size)."""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lm_eval")
    (root / "val.txt").write_text(TINY_TEXT[:1500], encoding="utf-8")
    (root / "tasks").mkdir()
    (root / "tasks" / "slm_text.yaml").write_text(TASK.format(path=root / "val.txt"), encoding="utf-8")
    return root / "val.txt", TaskManager(include_path=str(root / "tasks"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_lm_eval_loglikelihood_rolling_gives_slm_evals_bits_per_byte(tmp_path, task, kind):
    text, task_manager = task
    run_dir = make_run(tmp_path / "run", kind, vocab_size=KINDS[kind])
    export_hf(run_dir, tmp_path / "hf")
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32", tasks=["slm_text"],
        task_manager=task_manager, batch_size=1, device="cpu",
    )
    theirs = results["results"]["slm_text"]["bits_per_byte,none"]
    ours = evaluate_run(run_dir, source=str(text)).metrics["bits_per_byte"]
    assert theirs == pytest.approx(ours, rel=1e-4)  # seen: equal to 1e-6 (char, bpe), 2e-5 (word)
