"""bench/loader.py --plan-probs: full-decode vs plan-aware Q in one run, pairs/s and the decoded
pixels of P and Q summed by the pipeline, Q/P keyed by configuration (CPU, tiny)."""

import json

import pytest
from click.testing import CliRunner

from ltpipe.bench.harness import validate_result
from ltpipe.train.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_plan_bench_records_pairs_and_q_over_p_pixels(tmp_path):
    from ltpipe.shards.write import write_shards

    data = tmp_path / "data"
    write_shards("synthetic", data, classes=3, max_per_class=12, image_size=64, progress=False)
    res = CliRunner().invoke(main, [
        "bench", "loader", str(data), "--device", "cpu", "--out", str(tmp_path),
        "--batch-size", "4", "--image-size", "32", "--steps", "3", "--warmup", "1",
        "--repeats", "2", "--workers", "1", "--prefetch", "1", "--plan-probs", "0.5,1",
        "--plan-only"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "loader-cpu.json").read_text())
    validate_result(doc)
    ratios = doc["results"]["q_over_p_pixels"]
    assert sorted(ratios) == sorted(f"plan_cmo_p{p}_{m}_w1" for p in ("0.5", "1")
                                    for m in ("full", "tiles"))
    for p in ("0.5", "1"):
        full, tiles = (doc["results"][f"plan_cmo_p{p}_{m}_w1"] for m in ("full", "tiles"))
        assert ratios[f"plan_cmo_p{p}_tiles_w1"] < ratios[f"plan_cmo_p{p}_full_w1"]
        assert tiles["decoded_pixels_per_step"]["minority"] < \
            full["decoded_pixels_per_step"]["minority"]
        assert full["pairs_per_s"]["mean"] > 0 and len(tiles["pairs_per_s"]["runs"]) == 2
        assert doc["results"][f"plan_cmo_p{p}_speedup_w1"]["mean"] > 0


def test_plan_bench_rejects_a_bad_prob(tiny_shards, tmp_path, capsys):
    res = CliRunner().invoke(main, ["bench", "loader", str(tiny_shards), "--device", "cpu",
                                    "--out", str(tmp_path), "--plan-probs", "0.5,2"])
    assert res.exit_code == 2
    assert "--plan-probs" in res.output + capsys.readouterr().err
    assert not list(tmp_path.glob("loader-*.json"))
