"""The Q cache's benchmarks at tiny size: the coverage table (profiles through iNat 2018's four
facts, or a shard directory's own counts) and the loader bench's P alone vs P+Q from the cache."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ltpipe.bench import q_cache as bench
from ltpipe.bench.harness import validate_result
from ltpipe.train.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_profiles_hold_inat2018s_four_facts():
    for name, (counts, _) in bench.profiles(**bench.INAT2018).items():
        assert counts.size == 8142 and counts.sum() == 437_513, name
        assert counts.max() == 1000 and counts.min() == 2, name
        assert np.all(np.diff(counts) <= 0), name  # largest first


def test_coverage_grows_with_the_budget_and_serves_the_tail_first(tiny_shards, tmp_path):
    assert bench.main(["--shards", str(tiny_shards), "--gb", "0.000003,0.00001,1",
                       "--sides", "32", "--crops", "500", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "q_cache_coverage-cpu.json").read_text())
    validate_result(doc)
    rows = doc["results"][tiny_shards.name]
    for r in ("r0", "r1"):
        by_gb = rows[f"side32_{r}"]["by_gb"]
        cover = [by_gb[g]["coverage"] for g in ("3e-06", "1e-05", "1")]
        assert 0 < cover[0] < cover[1] < cover[2] == pytest.approx(1.0)
    # the same images hold more of Q's draws at r = 1 (q ∝ 1/n_k) than at r = 0
    assert rows["side32_r1"]["by_gb"]["3e-06"]["coverage"] > \
        rows["side32_r0"]["by_gb"]["3e-06"]["coverage"]
    assert bench.main(["--gb", "x"]) == 2


def test_loader_bench_times_p_alone_against_the_cache(tiny_shards, tmp_path):
    res = CliRunner().invoke(main, ["bench", "loader", str(tiny_shards), "--device", "cpu",
                                    "--out", str(tmp_path), "--batch-size", "8", "--steps", "2",
                                    "--warmup", "1", "--repeats", "2", "--workers", "1",
                                    "--prefetch", "1", "--cache-probs", "1", "--plan-only"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "loader-cpu.json").read_text())
    validate_result(doc)
    got = doc["results"]["cache_cmo_p1_w1"]
    assert got["q_cache"]["coverage_expected"] == pytest.approx(1.0)  # the tiny set fits whole
    assert got["q_cache"]["coverage_counted"] == 1.0
    assert got["q_over_p_pixels"]["cache"] < 0.05 < got["q_over_p_pixels"]["tiles"]
    assert len(got["cache_over_p_alone"]["runs"]) == 2
