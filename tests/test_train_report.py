"""Run outputs: final.json without float noise, per_class.png with its groups."""

import json

from PIL import Image

from ltpipe.train.report import RunReport, rounded


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
