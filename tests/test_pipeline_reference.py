"""The torch reference loader against the DALI CPU pipeline, and bad input for both."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards.write import write_shards

N_TRAIN, N_VAL = 100, 60


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "s"
    write_shards("synthetic", out, classes=6, max_per_class=40, imbalance=10, image_size=32,
                 samples_per_shard=25, seed=0, progress=False)
    return out


def by_index(loader):
    """{sample id: (label, image float32 [3,H,W])} over one epoch."""
    out = {}
    for step in loader:
        b = step["uniform"]
        for i, y, x in zip(b.index.tolist(), b.labels.tolist(), b.images.float()):
            assert i not in out
            out[i] = (y, x)
    return out


@pytest.mark.parametrize("preset,size,tol_max,tol_mean", [
    ("cifar", 32, 1.0, 0.05),  # identity: libjpeg-turbo in both (measured max 3e-5)
    ("imagenet", 24, 3.0, 0.5),  # resize 27, crop 24: both antialiased (measured 1.0, 0.19)
])
def test_dali_cpu_matches_reference_on_eval(shards, preset, size, tol_max, tol_mean):
    kw = dict(split="val", batch_size=7, streams=("uniform",), preset=preset, image_size=size)
    dali = by_index(make_loader(shards, **kw))
    ref = by_index(make_torch_loader(shards, num_workers=0, **kw))
    assert sorted(dali) == sorted(ref) == list(range(N_VAL))
    std255 = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    diffs = []
    for i in dali:
        assert dali[i][0] == ref[i][0]
        diffs.append(((dali[i][1] - ref[i][1]) * std255).abs())  # in 0..255 pixel units
    d = torch.stack(diffs)
    assert d.max() <= tol_max and d.mean() <= tol_mean, (d.max(), d.mean())


def test_images_smaller_than_the_crop_are_padded_by_both(tmp_path):
    small = tmp_path / "small"  # 16 px images under the 32 px cifar crop (padding 4)
    write_shards("synthetic", small, classes=3, max_per_class=10, image_size=16, progress=False)
    kw = dict(batch_size=8, streams=("uniform",), preset="cifar", image_size=32, seed=1)
    zero = (-torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225]))
    for loader in (make_loader(small, **kw), make_torch_loader(small, num_workers=0, **kw)):
        images = next(iter(loader))["uniform"].images.float()
        assert images.shape == (8, 3, 32, 32)
        # at most the image's own 16 x 16 pixels differ from the zero padding
        content = ((images - zero.view(1, 3, 1, 1)).abs() > 1e-3).sum(dim=(2, 3))
        assert (content <= 16 * 16).all() and (content > 0).any()


def test_reference_loader_epochs_q_and_resume(shards):
    labels = np.load(shards / "train" / "index.npy")["label"]
    kw = dict(batch_size=16, streams=("uniform", "minority"), seed=2, num_workers=0)
    loader = make_torch_loader(shards, **kw)
    steps = list(loader)
    assert len(steps) == len(loader) == 7
    ids = np.concatenate([s["uniform"].index.numpy() for s in steps])
    assert np.array_equal(np.sort(ids), np.arange(N_TRAIN))
    for s in steps:
        assert len(s["minority"]) == len(s["uniform"])  # Q cut to the P batch
        assert np.array_equal(s["minority"].labels.numpy(), labels[s["minority"].index.numpy()])
    full = [s["minority"].index for s in list(make_torch_loader(shards, **kw))]
    part = make_torch_loader(shards, **kw)
    it = iter(part)
    head = [next(it)["minority"].index for _ in range(3)]
    state = part.state_dict()
    again = make_torch_loader(shards, **kw)
    again.load_state_dict(state)
    tail = [s["minority"].index for s in again]
    assert all(torch.equal(a, b) for a, b in zip(full, head + tail)) and len(full) == 7
    shapes = next(iter(make_torch_loader(shards, channels_last=True, dtype=torch.float16, **kw)))
    assert shapes["uniform"].images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("factory", [make_loader, make_torch_loader])
def test_bad_input_is_a_one_line_value_error(shards, tmp_path, factory):
    cases = [
        (dict(shards=tmp_path / "nope"), "nope: no such shard directory"),
        (dict(split="test"), "no split 'test'"),
        (dict(batch_size=N_TRAIN + 1), f"batch_size: {N_TRAIN + 1} exceeds the {N_TRAIN} samples"),
        (dict(r=-0.5), "r: must be"),
        (dict(streams=("uniform", "extra")), "streams: unknown"),
        (dict(split="val", streams=("uniform", "minority")), "streams: split 'val'"),
        (dict(rank=2, world=2), "rank/world"),
    ]
    for extra, message in cases:
        kw = {"shards": shards, "batch_size": 8, **extra}
        with pytest.raises(ValueError, match=message) as info:
            factory(**kw)
        assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="manifest.json: missing"):
        factory(empty, batch_size=8)


def test_empty_class_needs_allow_empty_classes(shards, tmp_path):
    out = tmp_path / "e"  # a 7th class with no training (or val) samples
    shutil.copytree(shards, out)
    doc = json.loads((out / "manifest.json").read_text())
    doc["classes"].append("never-seen")
    for split in doc["splits"].values():
        split["class_counts"].append(0)
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="class 6 has no training samples"):
        make_loader(out, batch_size=8)
    loader = make_loader(out, batch_size=50, streams=("minority",), allow_empty_classes=True)
    assert loader.num_classes == 7 and loader.class_counts[6] == 0
    assert (next(iter(loader))["minority"].labels < 6).all()
    assert make_loader(out, batch_size=8, streams=("uniform",)).num_classes == 7  # P needs no q


def test_corrupt_sample_is_logged_skipped_and_counted_when_opted_in(shards, tmp_path, caplog):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    row = np.load(bad / "train" / "index.npy")[5]
    tar = bad / "train" / f"shard-{int(row['shard']):06d}.tar"
    with open(tar, "r+b") as f:  # overwrite the JPEG SOI marker of sample 5
        f.seek(int(row["offset"]))
        f.write(b"\x00\x00")
    with caplog.at_level(logging.WARNING):
        loader = make_loader(bad, batch_size=16, streams=("uniform", "minority"), r=0.0,
                             skip_corrupt=True)
    assert loader.skipped == 1 and "000000005" in caplog.text
    steps = list(loader)
    ids = np.concatenate([s["uniform"].index.numpy() for s in steps])
    assert np.array_equal(np.sort(ids), np.delete(np.arange(N_TRAIN), 5))
    q = np.concatenate([s["minority"].index.numpy() for s in steps])
    assert 5 not in q
    ref = make_torch_loader(bad, batch_size=16, streams=("uniform",), num_workers=0,
                            skip_corrupt=True)
    assert ref.skipped == 1
    ref_ids = np.concatenate([s["uniform"].index.numpy() for s in ref])
    assert np.array_equal(np.sort(ref_ids), np.delete(np.arange(N_TRAIN), 5))


def test_without_dali_make_loader_falls_back_to_the_reference(shards, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali -> ImportError
    loader = make_loader(shards, split="val", batch_size=16, streams=("uniform",), num_threads=0)
    assert type(loader).__name__ == "TorchLoader"
    ids = np.concatenate([s["uniform"].index.numpy() for s in loader])
    assert np.array_equal(ids, np.arange(N_VAL))
