import pytest

from slmkit.errors import DataError
from slmkit.plot import plot_runs
from slmkit.runtable import read_metrics
from slmkit.runs import METRICS, SWEEP


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


def _sweep_folder(root):
    """A sweep folder by hand: lr 1e-3 / 3e-3, two seeds each, val losses known."""
    from slmkit.config import RunConfig, save_config
    from slmkit.runs import CONFIG

    for lr in (1e-3, 3e-3):
        for seed in (1, 2):
            run = root / f"lr={lr},seed={seed}"
            run.mkdir(parents=True)
            cfg = RunConfig()
            cfg.train.lr, cfg.train.seed = lr, seed
            save_config(cfg, run / CONFIG)
            val = 3.0 - 100 * lr - 0.1 * seed
            (run / METRICS).write_text(f"step,tokens,lr,train_loss,val_loss\n10,80,{lr},3.5,{val + 0.5}\n20,160,{lr},3.2,{val}\n")
    (root / SWEEP).write_text("recipe: null\n")  # what makes it a sweep folder, not a run folder missing its files
    return root


def test_a_sweep_folder_draws_a_band_per_point_and_the_loss_against_the_swept_key(tmp_path):
    from slmkit.plot import _band, _curves, _numeric_keys

    folder = _sweep_folder(tmp_path / "sweep")
    curves, points = _curves([folder])
    assert [(c.label, len(c.seeds)) for c in curves] == [("lr=0.001", 2), ("lr=0.003", 2)]
    xs, mean, low, high = _band(curves[0].seeds, "step", "val_loss")
    assert xs == [10, 20] and mean == pytest.approx([3.25, 2.75]) and low == pytest.approx([3.2, 2.7])
    assert high == pytest.approx([3.3, 2.8])
    assert _numeric_keys(points) == ["train.lr"]
    out = plot_runs([folder], tmp_path / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = plot_runs([folder / "lr=0.001,seed=1"], tmp_path / "one.png")  # a run folder alone: as before
    from PIL import Image

    assert Image.open(out).size[0] > Image.open(one).size[0]  # the sweep adds the panel of loss vs train.lr
    (folder / SWEEP).unlink()
    with pytest.raises(DataError, match="metrics.csv does not exist"):  # a folder of runs is not a run
        plot_runs([folder], tmp_path / "x.png")
