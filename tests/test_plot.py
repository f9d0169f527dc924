import pytest

from slmkit.errors import DataError
from slmkit.plot import plot_runs, read_metrics
from slmkit.runs import METRICS


def test_plot_writes_a_png(tiny_run, tmp_path):
    out = plot_runs([tiny_run, tiny_run], tmp_path / "sub" / "loss.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]  # no temp file left behind


def test_read_metrics_by_column_name(tmp_path):
    (tmp_path / METRICS).write_text("step,lr,train_loss,val_loss,epoch\n5,0.1,3.0,,0\n10,0.2,2.5,2.7,1\n")
    m = read_metrics(tmp_path)
    assert m["step"] == [5, 10] and m["train_loss"] == [3.0, 2.5] and m["val_loss"][1] == 2.7
    plot_runs([tmp_path], tmp_path / "x.png")  # no tokens column: that panel is empty, nothing fails


def test_folder_without_metrics_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="metrics.csv does not exist") as e:
        plot_runs([tmp_path], tmp_path / "loss.png")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "loss.png").exists()
