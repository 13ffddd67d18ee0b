"""``ltpipe shard`` / ``ltpipe inspect``: bad input is one stderr line and exit 2; dry run, verify
(which catches damage) and plot work; synthetic data is learnable on every class group."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ltpipe.shards import synthetic
from ltpipe.shards.longtail import group_of
from ltpipe.train.cli import main

TINY = ["--classes", "6", "--max-per-class", "40", "--samples-per-shard", "30"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    r = run("shard", "synthetic", out, *TINY)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("wrote 65 train / 60 val images in 5 shards")
    again = run("shard", "synthetic", out, *TINY)  # nothing to do, and it says so
    assert again.exit_code == 0 and again.stdout.startswith("already complete: 65 train / 60 val")
    return out


@pytest.mark.parametrize("args,message", [
    (["shard", "nope:x", "{out}"], "unknown scheme 'nope'"),
    (["shard", "imagefolder:{tmp}/missing", "{out}"], "no such file or directory"),
    (["shard", "list:{tmp}/missing.txt", "{out}"], "no such file or directory"),
    (["shard", "cifar10:{tmp}/missing", "{out}"], "no such directory"),
    (["shard", "shards:{tmp}/missing", "{out}"], "missing: no such shard directory"),
    (["shard", "synthetic", "{foreign}/x.txt/sub"], "x.txt"),  # OUT under a file
    (["shard", "shards:{foreign}", "{out}"], "manifest.json: missing"),
    (["shard", "synthetic", "{out}", "--quality", "0"], "Invalid value for '--quality'"),
    (["shard", "synthetic", "{out}", "--workers", "zero"], "Invalid value for '--workers'"),
    (["shard", "synthetic", "{out}", "--shard-size", "big"], "--shard-size: cannot parse"),
    (["shard", "synthetic", "{out}", "--imbalance", "0.5"], "finite number >= 1"),
    (["shard", "imagefolder:{tmp}", "{out}", "--imbalance", "nan"], "--imbalance must be a finite"),
    (["shard", "synthetic", "{out}", "--imbalance", "inf"], "--imbalance must be a finite"),
    (["shard", "synthetic", "{out}", "--size", "huge"], "Invalid value for '--size'"),
    (["shard", "synthetic", "{out}", "--max-size", "-3"], "must be > 0"),
    (["shard", "imagefolder:{tmp}", "{out}", "--classes", "3"], "only apply to synthetic"),
    (["shard", "synthetic", "{out}", "--val-list", "{tmp}/missing.txt"], "'--val-list'"),
    (["shard", "synthetic"], "Missing argument 'OUT'"),
    (["shard"], "Missing argument 'SOURCE'"),
    (["shard", "synthetic", "{foreign}"], "not empty and not written by `ltpipe shard`"),
    (["inspect", "{tmp}/missing"], "no such shard directory"),
    (["inspect", "{foreign}"], "manifest.json: missing"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("not shards")
    fill = dict(tmp=tmp_path, out=tmp_path / "out", foreign=foreign)
    r = run(*[a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "Traceback" not in r.output


def test_real_console_script_one_line(tmp_path):
    """The installed ``ltpipe`` entry point, not just click's runner."""
    entry = "from ltpipe.train.cli import main; main()"  # what the `ltpipe` script runs
    proc = subprocess.run([sys.executable, "-c", entry, "shard", "bogus:1", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "unknown scheme 'bogus'" in proc.stderr


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    r = run("shard", "synthetic", tmp_path / "out", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "train: 2295 images, per class 500..5, many/medium/few classes 7/7/6" in r.stdout
    assert "val: 1000 images" in r.stdout and "classes: 20" in r.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_estimates_the_shard_bytes(tmp_path):
    """Small images: the tar headers and padding of the four members outweigh the JPEG (the
    estimate once ignored them: 2.7 MB for 11.8)."""
    import re

    from ltpipe.shards.format import load_manifest

    r = run("shard", "synthetic", "--dry-run")
    estimate = float(re.search(r"^train: .* ~([\d.]+) MB", r.stdout, re.M).group(1)) * 1e6
    assert run("shard", "synthetic", tmp_path / "out").exit_code == 0
    actual = sum(sh.bytes for sh in load_manifest(tmp_path / "out").split("train").shards)
    assert abs(estimate - actual) <= 0.05 * actual, (estimate, actual)


def test_inspect_summary_verify_plot(shards, tmp_path):
    r = run("inspect", shards, "--verify", "--plot", tmp_path / "counts.png")
    assert r.exit_code == 0, r.output
    assert "train: 65 images in 3 shard(s)" in r.stdout
    assert "many/medium/few classes 0/1/5" in r.stdout  # counts 40,15,6,2,1,1
    # val's 10 images per class are grouped by the classes' TRAIN counts, not by val's own 10s
    assert "images of many/medium/few (train) classes 0/10/50" in r.stdout
    assert "verify: OK (125 samples" in r.stdout
    assert (tmp_path / "counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_catches_a_flipped_byte(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    tar = copy / "val" / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[2560 + 300] ^= 0x55  # inside the first sample's .jpg payload (cls, id, jpg members)
    tar.write_bytes(bytes(data))
    r = run("inspect", copy, "--verify")
    assert r.exit_code == 1
    assert f"{tar}: sha256 differs from the manifest" in r.stderr
    assert "Error: verify: " in r.stderr and "verify: OK" not in r.stdout


def test_synthetic_is_learnable_on_every_group():
    """Nearest class centroid on raw pixels (the cheapest learner) beats chance (1/20) by 3x on
    many, medium and few classes of the default profile, on the context-uniform val split."""
    spec = synthetic.make_spec("default")
    items = synthetic.synthetic_items(spec)
    data = {s: (np.stack([synthetic.render(a) for _, _, a in rows]).reshape(len(rows), -1) / 255.0,
                np.array([k for _, k, _ in rows])) for s, rows in items.items()}
    (xtr, ytr), (xva, yva) = data["train"], data["val"]
    centroids = np.stack([xtr[ytr == k].mean(0) for k in range(spec.num_classes)])
    dist = (xva ** 2).sum(1)[:, None] - 2 * xva @ centroids.T + (centroids ** 2).sum(1)[None]
    pred = dist.argmin(1)
    counts = spec.class_counts()
    for group in ("many", "medium", "few"):
        ks = [k for k in range(spec.num_classes) if group_of(counts[k]) == group]
        acc = np.mean([np.mean(pred[yva == k] == k) for k in ks])
        assert acc > 3 / spec.num_classes, (group, acc)


def test_tail_classes_see_few_contexts():
    spec = synthetic.make_spec("default")
    n_ctx = [len(c) for c in synthetic.class_contexts(spec)]
    assert n_ctx[0] == spec.num_contexts and n_ctx[-1] <= 2
    assert all(a >= b for a, b in zip(n_ctx, n_ctx[1:]))


def test_verify_reports_a_cut_off_tar(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    tar = copy / "train" / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[:3000])  # cut inside the first sample's .jpg
    r = run("inspect", copy, "--verify")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{tar}: unreadable tar" in r.stderr and "Error: verify: " in r.stderr


def test_count_plot_has_whole_class_ticks(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ltpipe.shards.format import load_manifest
    from ltpipe.shards.inspect import plot_counts
    from ltpipe.shards.write import write_shards

    two = tmp_path / "two"  # two classes: matplotlib's default ticks would be -0.5, 0, 0.5, ...
    write_shards("synthetic", two, classes=2, max_per_class=6, image_size=16, progress=False)
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig: seen.append(fig))  # keep the figure to read
    plot_counts(load_manifest(two), tmp_path / "c.png")
    ticks = seen[0].axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)
    plt.close("all")
