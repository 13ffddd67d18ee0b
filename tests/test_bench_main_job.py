"""bench/main_job.py: the main job's epoch time and data wait, written in the bench JSON schema,
with baselines run in alternation."""

import json
import sys

import pytest

from ltpipe.bench import main_job as main_job_module
from ltpipe.bench.harness import validate_result


@pytest.fixture(scope="module")
def main_job():
    return main_job_module


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """8 synthetic classes (64 down to 1 train images, 32 px): the recipe's batch of 64 fits the
    val split, 3 steps an epoch."""
    from ltpipe.shards.write import write_shards

    out = tmp_path_factory.mktemp("main-job") / "shards"
    write_shards("synthetic", out, classes=8, max_per_class=64, image_size=32, progress=False)
    return out


def test_one_epoch_writes_the_schema_with_sane_figures(main_job, small_shards, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # shared CI cores
    code = main_job.main(["--shards", str(small_shards), "--epochs", "1", "--reps", "1",
                          "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "main-job-cpu.json").read_text())
    validate_result(doc)
    assert doc["device"] == "cpu" and doc["params"]["epochs"] == 1 and doc["baselines"] == {}
    figures = doc["results"]
    (run,) = figures["runs"]
    assert len(run["epoch_s"]) == len(run["data_wait_ms"]) == 1  # one line per epoch
    assert 0 < figures["epoch_s_median"] == run["epoch_s"][0] < run["wall_s"]
    assert 0 <= figures["data_wait_ms_median"] < 1e3 * figures["epoch_s_median"]


def test_baselines_run_in_alternation_and_land_beside_the_results(main_job, small_shards,
                                                                  tmp_path, monkeypatch):
    """Each round swaps which tree runs first; every tree's figures are summarized alike."""
    order = []

    def run_once(python, shards, work, epochs):
        order.append(python)
        slow = 2.0 if python == "base-python" else 1.0
        return {"epoch_s": [5.0] + [slow * (1 + i / 10) for i in range(epochs - 1)],
                "data_wait_ms": [9.0] * epochs, "wall_s": 60.0, "load_before": 1.0,
                "load_after": 1.0}

    monkeypatch.setattr(main_job, "baseline_python", lambda ref, work: ("abc1234", "base-python"))
    monkeypatch.setattr(main_job, "run_once", run_once)
    assert main_job.main(["--shards", str(small_shards), "--epochs", "3", "--reps", "3",
                          "--baseline", "HEAD", "--out", str(tmp_path)]) == 0
    assert order == [sys.executable, "base-python", "base-python", sys.executable,
                     sys.executable, "base-python"]
    doc = json.loads((tmp_path / "main-job-cpu.json").read_text())
    current, base = doc["results"], doc["baselines"]["abc1234"]
    assert current["epoch_s_median"] == pytest.approx(1.05)  # epochs 1.. of the median run
    assert base["epoch_s_median"] == pytest.approx(2.1)
    assert current["first_epoch_s_median"] == 5.0 and len(base["runs"]) == 3
    versus = current["vs_baseline"]["abc1234"]
    assert versus["epoch_s_ratio"] == pytest.approx(0.5)
    assert versus["epoch_s_paired_ratio_min"] == pytest.approx(0.5)  # every round alike
    assert versus["epoch_s_paired_ratio_max"] == pytest.approx(0.5)
    assert versus["data_wait_ms_paired_ratio_median"] == pytest.approx(1.0)
    assert "vs_baseline" not in base


def test_a_bad_baseline_ref_is_one_line(main_job, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main_job.baseline_python("no-such-ref-xyz", tmp_path)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "ltpipe.bench.main_job: error: --baseline no-such-ref-xyz: not a commit of a git "
        f"repository at {main_job.ROOT}")
