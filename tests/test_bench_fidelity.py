"""bench/fidelity.py's config names: loss params, flat run folders, the baseline of each config."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("ltpipe_bench_fidelity", BENCH / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
