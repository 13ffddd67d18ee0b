"""`ltpipe bench loader|e2e|kernels` on the CPU at tiny size: the scripts run through the CLI,
their JSON validates against the schema, the numbers are consistent, a chart is written, and bad
input is a one-line error with exit status 2."""

import gzip
import json
import math

import pytest
from click.testing import CliRunner
from PIL import Image

from ltpipe.bench import cli as bench_cli
from ltpipe.bench.harness import validate_result
from ltpipe.train.cli import main

TINY_E2E = ["--tiny", "--steps", "2", "--repeats", "2", "--warmup", "1", "--ref-steps", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


def invoke(args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def load(path):
    doc = json.loads(path.read_text())
    validate_result(doc)
    return doc


def assert_chart(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width == 800 and im.height > 200


def test_e2e_three_ways_in_one_run(shards, tmp_path):
    res = invoke(["e2e", shards, "--device", "cpu", "--out", tmp_path, *TINY_E2E,
                  "--mixers", "cmo,otmix", "--profile-steps", "1",
                  "--variants",
                  f"threads=1,workers=1,qcache=0;threads=2,prefetch=2,shards={shards},"
                  "cpudec=minority,u8=1"])
    assert res.exit_code == 0, res.output
    doc = load(tmp_path / "e2e-cpu.json")
    # the first mixer sweeps the loader variants; the fastest feeds "ltpipe" and the next mixers
    sweep = doc["results"]["cmo"]["variants"]
    no_cache = "hw=0.65,threads=1,workers=1,prefetch=3,prio=high,qcache=0"
    cached = f"hw=0.65,threads=2,workers=1,prefetch=2,prio=high,shards={shards}," \
        "cpudec=minority,u8=1"  # uint8 out of DALI, normalised before the step
    assert sorted(sweep) == sorted([no_cache, cached])
    # what Q's cache held in each variant ("auto" holds this small set whole)
    assert "q_cache" not in sweep[no_cache]
    held = sweep[cached]["q_cache"]
    assert held["complete"] and held["expected_coverage"] == pytest.approx(1.0)
    assert held["images"] > 0 and held["gb"] > 0 and held["place"] == "cpu"
    chosen = max(sweep, key=lambda k: sweep[k]["images_per_s"]["mean"])
    assert doc["results"]["cmo"]["ltpipe"] == sweep[chosen]
    assert doc["params"]["chosen_variant"] == chosen
    assert doc["results"]["otmix"]["ltpipe_variant"] == chosen
    assert "variants" not in doc["results"]["otmix"]
    assert doc["device"] == "cpu" and doc["params"]["model"] == "resnet8"
    assert doc["params"]["batch_size"] == 8 and doc["params"]["compile"] is False
    for name in ("cmo", "otmix"):
        r, ref = doc["results"][name], doc["baselines"][name]["torchvision_w2"]
        rates = [r["ceiling"]["images_per_s"], r["ltpipe"]["images_per_s"], ref["images_per_s"]]
        assert all(x["mean"] > 0 and len(x["runs"]) == 2 for x in rates)
        # the ratios are the quotients of the measured means
        assert math.isclose(r["ltpipe_vs_ceiling"], rates[1]["mean"] / rates[0]["mean"])
        assert math.isclose(r["ltpipe_vs_torchvision"], rates[1]["mean"] / rates[2]["mean"])
        # resident batches never wait; the loaders do (2 timed steps x 2 repeats each)
        assert r["ceiling"]["device_idle_ms_per_step"]["mean"] < 1.0
        assert len(r["ltpipe"]["device_idle_ms_per_step"]["runs"]) == 4
        assert ref["device_idle_ms_per_step"]["mean"] > 0
    assert doc["results"]["cmo"]["target_vs_torchvision"] == 6.0
    assert doc["results"]["otmix"]["target_vs_ceiling"] == 0.95
    assert "cmo/ltpipe" in res.output and "ltpipe_vs_ceiling" in res.output  # the table
    assert_chart(tmp_path / "e2e-cpu.png")
    with gzip.open(tmp_path / "e2e-cmo-cpu-trace.json.gz", "rt") as f:  # the profiled steps
        assert "traceEvents" in json.load(f)


def test_a_failing_variant_keeps_the_sweep(shards, tmp_path, monkeypatch):
    import ltpipe.pipeline.loader as loader_mod

    real = loader_mod.make_loader

    def breaks_on_two_threads(*args, **kwargs):  # stands in for a setting the device rejects
        if kwargs.get("num_threads") == 2:
            raise RuntimeError("no such setting here")
        return real(*args, **kwargs)

    monkeypatch.setattr(loader_mod, "make_loader", breaks_on_two_threads)
    res = invoke(["e2e", shards, "--device", "cpu", "--out", tmp_path, *TINY_E2E,
                  "--skip-reference", "--mixers", "cmo", "--threads", "1",
                  "--variants", "prefetch=2;threads=2;prefetch=3"])
    assert res.exit_code == 0, res.output
    cmo = load(tmp_path / "e2e-cpu.json")["results"]["cmo"]
    assert sorted(cmo["variants"]) == ["hw=0.65,threads=1,workers=1,prefetch=2,prio=high",
                                       "hw=0.65,threads=1,workers=1,prefetch=3,prio=high"]
    assert cmo["failed_variants"] == {
        "hw=0.65,threads=2,workers=1,prefetch=3,prio=high": "RuntimeError: no such setting here"}
    assert cmo["ltpipe_variant"] in cmo["variants"]


@pytest.mark.parametrize("spec, message", [
    ("hw=2", "hw in [0, 1]"), ("speed=3", "expected key=value"), ("prio=max", "prio must be"),
    ("threads", "expected key=value"), ("shards=/nonexistent", "not a shard directory")])
def test_bad_variants_are_one_line(shards, tmp_path, spec, message):
    res = invoke(["e2e", shards, "--device", "cpu", "--out", tmp_path, "--variants", spec])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_a_variant_must_read_a_copy_of_the_data(shards, tmp_path, capsys):
    from ltpipe.shards.write import write_shards

    other = tmp_path / "other"  # another dataset, not a copy of SHARDS
    write_shards("synthetic", other, classes=3, max_per_class=10, image_size=32, progress=False)
    res = invoke(["e2e", shards, "--device", "cpu", "--out", tmp_path, *TINY_E2E,
                  "--variants", f"prefetch=2;shards={other}"])
    assert res.exit_code == 2
    assert f"shards={other}: not a copy of" in res.output + capsys.readouterr().err
    assert not list(tmp_path.glob("e2e-*.json"))


def test_loader_bench_through_the_cli(shards, tmp_path):
    res = invoke(["loader", shards, "--device", "cpu", "--out", tmp_path, "--batch-size", "8",
                  "--image-size", "32", "--steps", "2", "--ref-steps", "2", "--warmup", "1",
                  "--repeats", "1", "--workers", "1", "--prefetch", "1"])
    assert res.exit_code == 0, res.output
    doc = load(tmp_path / "loader-cpu.json")
    assert doc["results"]["dali_pairs_w1"]["pairs_per_s"]["mean"] > 0
    assert doc["baselines"]["torch_single_w1"]["images_per_s"]["mean"] > 0
    assert_chart(tmp_path / "loader-cpu.png")


def test_loader_bench_measures_each_stored_size(tmp_path):
    from ltpipe.shards.write import write_shards

    data = tmp_path / "data"
    for px in (None, 16):  # the same images, then stored at long side <= 16 px
        write_shards("synthetic", data.with_name(f"data-{px}") if px else data, classes=3,
                     max_per_class=12, image_size=32, max_size=px, progress=False)
    res = invoke(["loader", data, "--device", "cpu", "--out", tmp_path, "--batch-size", "4",
                  "--image-size", "32", "--steps", "1", "--warmup", "1", "--repeats", "1",
                  "--workers", "1", "--prefetch", "1", "--streams", "single", "--max-sizes", "16",
                  "--cpu-decode", "--skip-reference"])
    assert res.exit_code == 0, res.output
    doc = load(tmp_path / "loader-cpu.json")
    assert sorted(doc["results"]) == ["dali_single_w1", "dali_single_w1_px16"]
    stored = doc["params"]["stored"]
    assert stored["as_given"]["width"] == 32 and stored["px16"]["width"] == 16
    assert stored["px16"]["jpeg_kb"] < stored["as_given"]["jpeg_kb"]


def test_kernels_bench_takes_no_shards_and_writes_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no --out: ./ltpipe-bench, never the committed bench/results
    res = invoke(["kernels", "--device", "cpu", "--batch", "4", "--size", "32",
                  "--runs", "3", "--warmup", "1"])
    assert res.exit_code == 0, res.output
    doc = load(tmp_path / "ltpipe-bench" / "kernels-cpu.json")
    rows = bench_cli.result_rows(doc)
    assert rows and all(r["metric"] == "median_ms" and r["value"] > 0 for r in rows)
    assert_chart(tmp_path / "ltpipe-bench" / "kernels-cpu.png")
    # one table (the script's own print is not echoed), every row with its p10-p90 spread
    assert res.output.count("paste_nchw_torch_where") == 1
    table = [ln for ln in res.output.splitlines() if "median_ms" in ln]
    assert len(table) == len(rows) and all("p10–p90" in ln for ln in table)
    # each kernel sits beside its baselines
    labels = [r["label"] for r in rows]
    first = labels.index("paste_nchw")
    assert labels[first + 1].startswith("paste_nchw_") and labels[-1].startswith("sinkhorn")


@pytest.mark.parametrize("values, scale", [
    ([0.02, 0.3, 110.0], "log"),  # paste kernels beside Sinkhorn: linear bars would vanish
    ([4555.0, 5588.0, 1561.0], "linear"),
    ([0.0, 5.0], "linear"),  # a zero has no place on a log axis
    ([], "linear")])
def test_chart_axis_goes_log_when_values_span_decades(values, scale):
    assert bench_cli.axis_scale(values) == scale


def test_result_rows_flatten_measurements_only():
    rate = {"mean": 10.0, "std": 1.0, "runs": [9, 11]}
    doc = {"results": {"cmo": {"ceiling": {"images_per_s": rate},
                               "ltpipe_vs_ceiling": 0.5, "target_vs_ceiling": 0.97,
                               "meets_targets": False}},
           "baselines": {"k": {"median_ms": 2.0, "p10_ms": 1.0, "runs": 50, "flag": True,
                               "bad": float("nan")}}}
    rows = bench_cli.result_rows(doc)
    assert [(r["source"], r["label"], r["metric"], r["value"], r["std"]) for r in rows] == [
        ("result", "cmo/ceiling", "images_per_s", 10.0, 1.0),
        ("result", "cmo", "ltpipe_vs_ceiling", 0.5, None),
        ("baseline", "k", "median_ms", 2.0, None)]


@pytest.mark.parametrize("args, message", [
    (["e2e", "--device", "cpu"], "SHARDS: give a shard directory"),
    (["e2e", "{tmp}", "--device", "cpu"], "not a shard directory (no manifest.json)"),
    (["loader", "{shards}", "--generate", "{tmp}/x", "--device", "cpu"], "not both"),
    (["e2e", "{shards}", "--device", "cpu", "--reference-mixers", "smc"], "not among --mixers"),
    (["loader", "{shards}", "--device", "cpu", "--max-sizes", "16"], "shards-16 does not exist"),
    (["loader", "{shards}", "--device", "cpu", "--streams", "triples"], "--streams: expected"),
    (["loader", "{shards}", "--device", "cpu", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer, got '0'"),
    (["loader", "{shards}", "--device", "cpu", "--max-sizes", "abc"],
     "argument --max-sizes: must be a positive integer, got 'abc'"),
    (["loader", "{shards}", "--device", "cpu", "--batch-size", "100000", "--skip-reference"],
     "ltpipe bench loader: error: batch_size: 100000 exceeds the"),
    (["kernels", "--device", "cpu", "--runs", "1"], "--runs must be >= 2"),
])
def test_bad_input_is_one_line_exit_2(shards, tmp_path, args, message, capsys):
    res = invoke([a.format(tmp=tmp_path, shards=shards) for a in args])
    assert res.exit_code == 2
    said = res.output + capsys.readouterr().err  # the CLI's own errors, then the scripts'
    assert message in said and "Traceback" not in said
    assert "usage:" not in said  # one line, not argparse's usage block


def test_script_errors_keep_exit_2(shards, tmp_path, capsys):
    res = invoke(["e2e", shards, "--device", "cpu", "--out", tmp_path, "--mixers", "nosuch"])
    assert res.exit_code == 2
    assert "--mixers: unknown" in capsys.readouterr().err + res.output
    assert not list(tmp_path.glob("*.json"))


def test_a_failing_mixer_keeps_the_others(shards, tmp_path):
    res = invoke(["e2e", shards, "--device", "cpu", "--out", tmp_path, *TINY_E2E,
                  "--mixers", "m2m,none",  # m2m: no classifier given
                  "--reference-mixers", "m2m"])  # so "none" gets no torchvision run
    assert res.exit_code == 1
    doc = load(tmp_path / "e2e-cpu.json")
    assert "needs a frozen classifier" in doc["results"]["m2m"]["error"]
    assert doc["results"]["none"]["ltpipe"]["images_per_s"]["mean"] > 0
    assert "ltpipe_vs_torchvision" not in doc["results"]["none"]
    assert (tmp_path / "e2e-cpu.png").is_file()  # the table and chart of what was measured
