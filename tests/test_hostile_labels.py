"""Labels that no longer match their images: index.npy edited, DALI index offsets edited, class
names moved in manifest.json. Opening a split refuses each (one line naming the file); --verify
finds the manifest's too. Training on them gave images the wrong labels, silently."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.shardset import open_split
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards.format import ShardFormatError
from ltpipe.shards.write import write_shards
from ltpipe.train.cli import main


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "s"
    write_shards("synthetic", out, classes=4, max_per_class=12, image_size=16,
                 samples_per_shard=10, progress=False)
    return out


@pytest.fixture
def copy(shards, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shards, out)
    return out


def refused(out, split, *needles):
    for build in (lambda: open_split(out, split),
                  lambda: make_loader(out, split=split, batch_size=4, streams=("uniform",)),
                  lambda: make_torch_loader(out, split=split, batch_size=4, streams=("uniform",),
                                            num_workers=0)):
        with pytest.raises(ShardFormatError) as err:
            build()
        assert "\n" not in str(err.value)
        for needle in needles:
            assert str(needle) in str(err.value), err.value


def test_index_labels_permuted_with_counts_kept_are_refused(copy):
    path = copy / "train" / "index.npy"
    rows = np.load(path)
    labels = rows["label"].copy()
    rows["label"] = np.roll(labels, 1)  # every class keeps its count
    assert (np.bincount(rows["label"]) == np.bincount(labels)).all()
    np.save(path, rows)
    refused(copy, "train", "index.npy says", ".cls member says", "the index is not this tar's")


def test_index_ids_swapped_are_refused(copy):
    """Two rows swapped (offsets and labels together): the index still names real samples,
    but sample ids no longer match their .id members."""
    path = copy / "val" / "index.npy"
    rows = np.load(path)
    rows[[0, 1]] = rows[[1, 0]]
    np.save(path, rows)
    refused(copy, "val", "val/shard-000000.idx")


@pytest.mark.parametrize("edit", ["swap-id-offsets", "id-offset-garbage", "swap-lines",
                                  "json-offset"])
def test_edited_dali_index_offsets_are_refused(copy, edit):
    """The .jpg offsets were checked before; the .id offsets, which give DALI's P stream its
    labels, were not: two swapped gave two images each other's labels, a garbage one an
    IndexError mid-run."""
    idx = copy / "train" / "shard-000000.idx"
    head, *lines = idx.read_text().splitlines()
    a, b = lines[0].split(), lines[1].split()
    if edit == "swap-id-offsets":
        a[5], b[5] = b[5], a[5]
    elif edit == "id-offset-garbage":
        a[5] = str(int(a[5]) + 512)
    elif edit == "swap-lines":
        a, b = b, a
    else:
        a[13] = str(int(a[13]) - 512)
    idx.write_text("\n".join([head, " ".join(a), " ".join(b), *lines[2:]]) + "\n")
    refused(copy, "train", idx, "(re-run `ltpipe shard`")


@pytest.mark.parametrize("field, value", [("shard", 99), ("shard", -1), ("label", -1),
                                          ("label", 4)])
def test_index_rows_naming_no_shard_or_class_are_refused(copy, field, value):
    """The message names the offending value (a -1 was reported as the largest one, in range)."""
    path = copy / "train" / "index.npy"
    rows = np.load(path)
    rows[field][3] = value
    np.save(path, rows)
    what = "shard number" if field == "shard" else "label"
    refused(copy, "train", f"index.npy: {what} {value} outside the manifest's")


def test_more_ranks_than_samples_is_one_line(shards):
    """Ranks without a sample: a multi-line C++ assert from DALI's reader."""
    import torch

    from ltpipe.pipeline.loader_args import check_arguments

    n = open_split(shards, "val").num_samples
    for build in (make_loader, make_torch_loader):
        with pytest.raises(ValueError) as err:
            build(shards, split="val", batch_size=1, rank=n, world=n + 1)
        assert str(err.value) == (f"world: {n + 1} ranks exceed the {n} samples of "
                                  f"{shards / 'val'} (every rank needs at least one)")
    check_arguments(open_split(shards, "val"), "val", 1, ("uniform",), "cpu", "cifar",
                    torch.float32, 1.0, rank=n - 1, world=n)  # one sample a rank: accepted


def test_class_names_swapped_in_the_manifest_are_refused_and_verify_finds_them(copy):
    path = copy / "manifest.json"
    doc = json.loads(path.read_text())
    names = doc["classes"]
    names[0], names[1] = names[1], names[0]
    path.write_text(json.dumps(doc))
    refused(copy, "train", "manifest.json: class 0 is named 'class1'",
            "say 'class0'")
    r = CliRunner().invoke(main, ["inspect", str(copy), "--verify"])
    assert r.exit_code == 1 and "verify: OK" not in r.stdout
    assert "class 0 is named 'class1', sample" in r.stderr


def test_labels_are_checked_on_resume_too(copy, tmp_path):
    """`ltpipe train --resume` opens the splits again: a permuted index.npy is refused there."""
    from ltpipe.train.train_cli import train

    fast = ["--model", "resnet8", "--batch-size", "8", "--no-channels-last", "--no-progress",
            "--preset", "cifar", "--image-size", "16", "--warmup", "0", "--epochs", "1"]
    run = tmp_path / "run"
    r = CliRunner().invoke(train, [str(copy), "--out", str(run), *fast])
    assert r.exit_code == 0, r.output
    (run / "final.json").unlink()  # as if stopped after its last checkpoint
    path = copy / "train" / "index.npy"
    rows = np.load(path)
    rows["label"] = np.roll(rows["label"], 1)
    np.save(path, rows)
    r = CliRunner().invoke(train, ["--resume", str(run)])
    assert r.exit_code == 2 and "the index is not this tar's" in r.stderr, r.output
    assert r.stderr.count("\n") == 1
