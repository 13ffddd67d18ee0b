"""Every SOURCE form round-trips through webdataset and DALI (CPU) with exact samples and labels;
corrupt/truncated/missing/unknown inputs land in rejected.tsv; CIFAR-LT counts follow the
long-tail profile (METHODS.md, Class groups)."""

from __future__ import annotations

import io
import json
import pickle
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ltpipe.shards import readback
from ltpipe.shards.errors import ShardInputError
from ltpipe.shards.longtail import longtail_counts, longtail_subset
from ltpipe.shards.tario import read_dali_index
from ltpipe.shards.write import write_shards

QUIET = dict(progress=False)


def _jpeg(colour, size=(20, 16), mode="RGB", fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _json_paths(m, split):
    """{sample id: (path, label)} from the shards' .json/.cls, read with webdataset."""
    import webdataset as wds

    from ltpipe.shards.format import decode_sample_id
    ds = (wds.WebDataset([str(p) for p in m.shard_paths(split)], shardshuffle=False)
          .decode(wds.handle_extension("id", decode_sample_id)).to_tuple("id", "cls", "json"))
    return {sid: (meta["path"], cls) for sid, cls, meta in ds}


def assert_round_trip(m, split, expected: dict[str, int]):
    """Both readers see exactly the manifest's samples: ids 0..N-1 once each, labels equal to
    index.npy, bytes equal to the index offsets, and (path -> label) equal to ``expected``."""
    index = m.index(split)
    blobs = [p.read_bytes() for p in m.shard_paths(split)]
    for reader in (readback.with_webdataset, readback.with_dali):
        got = reader(m, split)
        assert sorted(sid for sid, _, _ in got) == list(range(len(index))), reader.__name__
        for sid, label, jpg in got:
            row = index[sid]
            assert label == row["label"]
            assert jpg == blobs[row["shard"]][row["offset"]:row["offset"] + row["size"]]
    paths = _json_paths(m, split)
    assert dict(paths.values()) == expected and len(paths) == len(expected)


@pytest.fixture
def folder(tmp_path):
    """PATH/train/{cat,dog}/..., PATH/val/{cat,dog,fox}: jpg, png, grey, large and broken files."""
    root = tmp_path / "imgs"
    files = {
        "train/cat/a.jpg": _jpeg((200, 10, 10)),
        "train/cat/b.png": _jpeg((10, 200, 10, 128), mode="RGBA", fmt="PNG"),
        "train/cat/big.jpg": _jpeg((1, 2, 250), size=(300, 120)),
        "train/dog/c.jpg": _jpeg(90, mode="L"),
        "train/dog/d.JPEG": _jpeg((50, 60, 70)),
        "train/dog/corrupt.jpg": b"not an image at all",
        "train/dog/truncated.jpg": _jpeg((5, 5, 5), size=(64, 64))[:300],
        "train/dog/notes.txt": b"not read (not an image extension), recorded",
        "val/cat/e.jpg": _jpeg((220, 30, 30)),
        "val/dog/f.png": _jpeg((30, 30, 220), fmt="PNG"),
        "val/fox/g.jpg": _jpeg((0, 0, 0)),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_imagefolder_round_trip_and_rejections(folder, tmp_path):
    m = write_shards(f"imagefolder:{folder}", tmp_path / "out", max_size=100, **QUIET)
    assert m.classes == ("cat", "dog")
    t = lambda rel: str(folder / rel)  # noqa: E731
    assert_round_trip(m, "train", {t("train/cat/a.jpg"): 0, t("train/cat/b.png"): 0,
                                   t("train/cat/big.jpg"): 0, t("train/dog/c.jpg"): 1,
                                   t("train/dog/d.JPEG"): 1})
    assert_round_trip(m, "val", {t("val/cat/e.jpg"): 0, t("val/dog/f.png"): 1})
    rejected = dict(line.split("\t") for line in (m.root / "rejected.tsv").read_text().splitlines())
    assert set(rejected) == {t("train/dog/corrupt.jpg"), t("train/dog/truncated.jpg"),
                             t("val/fox/g.jpg"), t("train/dog/notes.txt")}
    assert "corrupt or truncated" in rejected[t("train/dog/truncated.jpg")]
    assert rejected[t("val/fox/g.jpg")] == "unknown label 'fox'"
    assert rejected[t("train/dog/notes.txt")] == "not read: not an image extension (.txt)"
    assert m.raw["totals"]["rejected"] == 4
    # small JPEGs are kept byte for byte; PNG re-encoded; the large one resized to long side 100
    by_path = {p: sid for sid, (p, _) in _json_paths(m, "train").items()}
    jpegs = {sid: jpg for sid, _, jpg in readback.with_webdataset(m, "train")}
    assert jpegs[by_path[t("train/cat/a.jpg")]] == (folder / "train/cat/a.jpg").read_bytes()
    assert jpegs[by_path[t("train/cat/b.png")]][:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(jpegs[by_path[t("train/cat/big.jpg")]])).size == (100, 40)
    assert m.raw["splits"]["train"]["image_stats"]["width"]["max"] == 100


def test_shards_source_rewrites_a_shard_directory(folder, tmp_path):
    first = write_shards(f"imagefolder:{folder}", tmp_path / "first", max_size=100, **QUIET)
    samples = {split: {sid: (p, label) for sid, (p, label) in _json_paths(first, split).items()}
               for split in first.splits}
    jpegs = {split: {samples[split][sid][0]: jpg for sid, _, jpg in
                     readback.with_webdataset(first, split)} for split in first.splits}
    # as it is: the same classes, source paths, labels and JPEG bytes (in a new shuffled order)
    copy = write_shards(f"shards:{first.root}", tmp_path / "copy", seed=1, **QUIET)
    assert copy.classes == first.classes and set(copy.splits) == {"train", "val"}
    for split in first.splits:
        assert_round_trip(copy, split, dict(samples[split].values()))
        by_path = {p: sid for sid, (p, _) in _json_paths(copy, split).items()}
        got = {sid: jpg for sid, _, jpg in readback.with_webdataset(copy, split)}
        assert {p: got[by_path[p]] for p in by_path} == jpegs[split]
    # smaller: every image resized to long side <= 24, same samples
    small = write_shards(f"shards:{first.root}", tmp_path / "small", max_size=24, **QUIET)
    assert_round_trip(small, "train", dict(samples["train"].values()))
    assert small.raw["splits"]["train"]["image_stats"]["width"]["max"] == 24
    assert small.raw["totals"]["rejected"] == 0


def test_shards_source_bad_directory_is_one_line(folder, tmp_path):
    with pytest.raises(ShardInputError, match="no such shard directory"):
        write_shards(f"shards:{tmp_path}/missing", tmp_path / "out", **QUIET)
    first = write_shards(f"imagefolder:{folder}", tmp_path / "first", **QUIET)
    tar = first.shard_paths("train")[-1]
    whole = tar.read_bytes()
    last_json = read_dali_index(tar.with_suffix(".idx"))[-1][-1]
    assert last_json.ext == "json"
    tar.write_bytes(whole[:last_json.offset + 2])  # a cut-off shard
    with pytest.raises(ShardInputError, match=f"{tar}: [0-9]+ bytes, its manifest says"):
        write_shards(f"shards:{first.root}", tmp_path / "out", **QUIET)
    damaged = bytearray(whole)
    damaged[last_json.offset] = ord("#")  # same size, the .json member no longer parses
    tar.write_bytes(bytes(damaged))
    with pytest.raises(ShardInputError, match=f"{tar}: unreadable .json member"):
        write_shards(f"shards:{first.root}", tmp_path / "out", **QUIET)


def test_list_source_with_val_list(tmp_path):
    root = tmp_path / "root"
    (root / "x").mkdir(parents=True)
    for i in range(6):
        (root / "x" / f"{i}.jpg").write_bytes(_jpeg((i * 40, 0, 0)))
    train = tmp_path / "train.txt"
    train.write_text("x/0.jpg 0\nx/1.jpg 1\nx/2.jpg 2\nx/3.jpg 0\nx/missing.jpg 1\nx/4.jpg cat\n")
    val = tmp_path / "val.txt"
    val.write_text("x/5.jpg 2\nx/4.jpg 7\n")
    m = write_shards(f"list:{train}:{root}", tmp_path / "out", val_list=str(val), **QUIET)
    assert m.classes == ("0", "1", "2")
    x = lambda i: str(root / "x" / f"{i}.jpg")  # noqa: E731
    assert_round_trip(m, "train", {x(0): 0, x(1): 1, x(2): 2, x(3): 0})
    assert_round_trip(m, "val", {x(5): 2})
    lines = (m.root / "rejected.tsv").read_text().splitlines()
    assert sorted(tuple(line.split("\t")) for line in lines) == sorted([
        (x("missing"), "missing file"), (x(4), "unknown label 'cat'"), (x(4), "unknown label 7")])


def test_inat_json_source(tmp_path):
    root = tmp_path / "inat"
    (root / "train_val_images").mkdir(parents=True)
    for i in range(5):
        (root / "train_val_images" / f"{i}.jpg").write_bytes(_jpeg((0, i * 50, 0)))
    cats = [{"id": 10, "name": "Aves"}, {"id": 3, "name": "Fungi"}]  # ids need not be 0..C-1
    doc = lambda ids, labels: {  # noqa: E731
        "images": [{"id": i, "file_name": f"train_val_images/{i}.jpg"} for i in ids],
        "annotations": [{"id": i, "image_id": i, "category_id": c} for i, c in zip(ids, labels)],
        "categories": cats}
    (root / "train.json").write_text(json.dumps(doc([0, 1, 2, 3], [3, 10, 10, 99])))
    (root / "val.json").write_text(json.dumps(doc([4], [10])))
    m = write_shards(f"inat:{root / 'train.json'}", tmp_path / "out",
                     val_json=str(root / "val.json"), **QUIET)
    assert m.classes == ("Fungi", "Aves")  # sorted by category id
    p = lambda i: str(root / "train_val_images" / f"{i}.jpg")  # noqa: E731
    assert_round_trip(m, "train", {p(0): 0, p(1): 1, p(2): 1})
    assert_round_trip(m, "val", {p(4): 1})
    assert (m.root / "rejected.tsv").read_text() == f"{p(3)}\tunknown label 99\n"


def _write_cifar(root, scheme, per_class_train, per_class_test, classes):
    """Tiny batches in CIFAR's exact pickle format (bytes keys, [N,3072] uint8 rows)."""
    rng = np.random.default_rng(0)
    label_key = b"labels" if scheme == "cifar10" else b"fine_labels"

    def batch(labels):
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return {b"data": data, label_key: list(labels),
                b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}

    train_labels = [k for _ in range(per_class_train) for k in range(classes)]  # interleaved
    test_labels = [k for _ in range(per_class_test) for k in range(classes)]
    root.mkdir(parents=True)
    if scheme == "cifar10":
        chunks = np.array_split(np.array(train_labels), 5)
        files = {f"data_batch_{i + 1}": batch(c.tolist()) for i, c in enumerate(chunks)}
        files |= {"test_batch": batch(test_labels),
                  "batches.meta": {b"label_names": [f"c{k}".encode() for k in range(classes)]}}
    else:
        files = {"train": batch(train_labels), "test": batch(test_labels),
                 "meta": {b"fine_label_names": [f"f{k}".encode() for k in range(classes)]}}
    for name, obj in files.items():
        with open(root / name, "wb") as f:
            pickle.dump(obj, f)
    return train_labels


@pytest.mark.parametrize("scheme,folder_name", [("cifar10", "cifar-10-batches-py"),
                                                ("cifar100", "cifar-100-python")])
def test_cifar_lt_counts_and_round_trip(tmp_path, scheme, folder_name):
    classes, n_max = 10, 30
    labels = _write_cifar(tmp_path / "data" / folder_name, scheme, n_max, 3, classes)
    m = write_shards(f"{scheme}:{tmp_path / 'data'}", tmp_path / "out", imbalance=10,
                     samples_per_shard=40, **QUIET)
    want = longtail_counts(n_max, classes, 10)
    assert m.split("train").class_counts == tuple(want)
    assert m.split("val").class_counts == (3,) * classes  # the balanced test split
    # first n_k of each class in file order (M2m/issue: "first-k per class")
    keep = longtail_subset(labels, classes, 10)
    batches = sorted(p for p in (tmp_path / "data" / folder_name).iterdir()
                     if p.name.startswith(("data_batch", "train")))
    offsets = np.cumsum([0] + [len(pickle.load(open(b, "rb"), encoding="bytes")[
        b"labels" if scheme == "cifar10" else b"fine_labels"]) for b in batches])
    expected = {}
    for pos in keep:
        b = int(np.searchsorted(offsets, pos, side="right") - 1)
        expected[f"{scheme}:{batches[b].name}/{pos - offsets[b]}"] = labels[pos]
    assert_round_trip(m, "train", expected)
    assert len(m.shard_paths("train")) == -(-sum(want) // 40)


def test_cifar_lt_totals_formula():
    """Long-tail totals (METHODS.md, Class groups), from the count function alone."""
    assert [sum(longtail_counts(500, 100, r)) for r in (100, 50, 10)] == [10847, 12608, 19573]
    assert [sum(longtail_counts(5000, 10, r)) for r in (100, 50, 10)] == [12406, 13996, 20431]


def test_whole_class_rejected_is_an_error(tmp_path):
    root = tmp_path / "imgs"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "good" / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    (root / "bad" / "b.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ShardInputError, match="class 'bad' .*all 1 images rejected"):
        write_shards(f"imagefolder:{root}", tmp_path / "out", **QUIET)
    assert "b.jpg\tcorrupt" in (tmp_path / "out" / "rejected.tsv").read_text()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_imbalance_subsamples_imagefolder_first_k(tmp_path):
    root = tmp_path / "imgs"
    for k, n in enumerate([8, 8, 8]):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n):
            (root / f"c{k}" / f"{i:02d}.jpg").write_bytes(_jpeg((k * 80, i, 0)))
    m = write_shards(f"imagefolder:{root}", tmp_path / "out", imbalance=4, **QUIET)
    assert m.split("train").class_counts == (8, 4, 2)
    kept = Counter(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]
                   for p, _ in _json_paths(m, "train").values())
    assert {"c1/00.jpg", "c1/03.jpg", "c2/00.jpg", "c2/01.jpg"} <= set(kept)
    assert "c2/02.jpg" not in kept
