"""bench/fidelity.py's config names: loss params, flat run folders, the baseline of each config;
and the real-image set of bench/digits_lt.py."""

import pytest

from ltpipe.bench import fidelity as fidelity_module


@pytest.fixture(scope="module")
def fidelity():
    return fidelity_module


def test_loss_params_in_parentheses(fidelity):
    assert fidelity.parse_config('la(prior="mixed";tau=0.5):smc@fg_r=0;view_aug="crop"') == \
        ("la", "none", "smc", ["fg_r=0", 'view_aug="crop"'], ['prior="mixed"', "tau=0.5"])
    assert fidelity.parse_config("ldam-drw:cmo") == ("ldam", "drw", "cmo", [], [])
    with pytest.raises(SystemExit, match="expected LOSS"):
        fidelity.parse_config("la(tau=0.5:smc")


def test_run_folder_is_flat_and_the_baseline_drops_loss_params(fidelity):
    spec = 'la(prior="mixed"):smc@fg_r=0'
    assert fidelity.run_tag(spec) == "la_priormixed_smc_fg_r0"
    assert fidelity.baseline_of(spec, ["ce:none", "la:none", spec]) == "la:none"
    assert fidelity.baseline_of(spec, ["ce:none", spec]) == "ce:none"
    assert fidelity.baseline_of("la:none", ["la:none"]) is None


def test_digits_set_has_the_documented_long_tail(tmp_path):
    """bench/digits_lt.py + ltpipe shard give the counts its docstring states (scikit-learn is a
    bench-only tool: skipped where it is not installed)."""
    pytest.importorskip("sklearn")
    from click.testing import CliRunner
    from PIL import Image

    from ltpipe.bench import digits_lt as digits
    from ltpipe.shards.format import load_manifest
    from ltpipe.train.cli import main

    counts = digits.write_digits(tmp_path / "img")
    assert sum(counts) == 1797 and min(counts) >= 174
    with Image.open(next((tmp_path / "img" / "digit3").glob("*.png"))) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    res = CliRunner().invoke(main, ["shard", f"imagefolder:{tmp_path / 'img'}", str(tmp_path / "s"),
                                    "--val-per-class", "50", "--imbalance", "64"])
    assert res.exit_code == 0, res.output
    manifest = load_manifest(tmp_path / "s")
    assert list(manifest.split("train").class_counts) == [128, 83, 52, 33, 20, 13, 8, 5, 3, 2]
    assert list(manifest.split("val").class_counts) == [50] * 10


def test_paired_differences_and_their_standard_error(fidelity):
    base = {m: {"values": [80.0, 70.0, 90.0]} for m in fidelity.METRICS}
    method = {m: {"values": [81.0, 72.0, 93.0]} for m in fidelity.METRICS}  # +1, +2, +3
    got = fidelity.paired(base, method)
    assert got["few"]["mean"] == pytest.approx(2.0)
    assert got["few"]["se"] == pytest.approx(1.0 / 3 ** 0.5)  # std 1 over 3 seeds
    method["few"]["values"] = [81.0, 72.0]  # a group missing in a seed: not paired
    assert "few" not in fidelity.paired(base, method)
