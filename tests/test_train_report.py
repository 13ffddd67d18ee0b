"""Run outputs: final.json without float noise, per_class.png with its groups, a visible mark
for a class at 0 %, and a title naming the run's method."""

import json

import numpy as np
from PIL import Image

from ltpipe.train import report
from ltpipe.train.report import ZERO_COLOR, RunReport, plot_per_class, rounded


def test_final_json_has_no_float_noise(tmp_path):
    result = {"top1": 32.800000000000004, "many": None, "per_class": [56.00000000000001, None],
              "class_counts": [120, 3], "epochs": 2}
    RunReport(tmp_path, enabled=True, tensorboard=False).final(result, [120, 3])
    saved = json.loads((tmp_path / "final.json").read_text())
    assert saved == {"top1": 32.8, "many": None, "per_class": [56.0, None],
                     "class_counts": [120, 3], "epochs": 2}
    assert rounded(1 / 3) == 0.333333 and rounded(True) is True and rounded(7) == 7
    with Image.open(tmp_path / "per_class.png") as png:
        assert png.size[0] >= 600 and png.size[1] >= 300


def _pixels_of(path, hex_color):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    want = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).sum(-1) <= 30).sum())


def test_a_class_at_zero_percent_is_visible(tmp_path):
    """A bar of height 0 draws nothing: the class at 0 % gets a stub of its own colour; a class
    absent from val (None) gets none."""
    counts = [100, 50, 20, 5]
    plot_per_class([60.0, 0.0, None, 30.0], counts, tmp_path / "zero.png")
    plot_per_class([60.0, 10.0, None, 30.0], counts, tmp_path / "none.png")
    assert _pixels_of(tmp_path / "zero.png", ZERO_COLOR) > 50
    assert _pixels_of(tmp_path / "none.png", ZERO_COLOR) == 0


def test_the_title_names_run_method_and_top1(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(report, "plot_per_class", lambda *a: titles.append(a[3]))
    result = {"top1": 32.8, "per_class": [56.0, 0.0]}
    (tmp_path / "run7").mkdir()
    RunReport(tmp_path / "run7", enabled=True, tensorboard=False).final(
        result, [120, 3], method="mixer cmo, loss bs")
    assert titles == ["run7: mixer cmo, loss bs, top-1 32.8 %"]
