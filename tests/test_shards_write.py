"""Shard writer round trips (real tars in tmp_path): webdataset, DALI CPU, index.npy, wds2idx."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from ltpipe.shards.encode import encode_image, fitted_size
from ltpipe.shards.format import INDEX_DTYPE, MEMBERS, decode_sample_id, key_of
from ltpipe.shards.longtail import longtail_counts
from ltpipe.shards.tario import read_dali_index
from ltpipe.shards.write import parse_size, write_shards

TINY = dict(classes=6, max_per_class=40, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "out"
    return write_shards("synthetic", out, samples_per_shard=50, **TINY)


def _tar_samples(path):
    """{key: {ext: bytes}} and member order, read with tarfile."""
    samples, order = {}, []
    with tarfile.open(path) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
            order.append((key, ext))
    return samples, order


def test_synthetic_counts_and_layout(tiny):
    counts = [max(1, n) for n in longtail_counts(40, 6, 100)]  # synthetic keeps >= 1 per class
    assert counts == [40, 15, 6, 2, 1, 1]
    assert tiny.split("train").class_counts == tuple(counts)
    assert tiny.split("val").class_counts == (10,) * 6
    assert [s.samples for s in tiny.split("train").shards] == [50] * (sum(counts) // 50) + (
        [sum(counts) % 50] if sum(counts) % 50 else [])
    for split in ("train", "val"):
        for tar in tiny.shard_paths(split):
            assert tar.is_file() and tar.with_suffix(".idx").is_file()
    assert not list(tiny.root.rglob("*.tmp")) and not (tiny.root / ".journal.jsonl").exists()
    raw = tiny.raw
    assert raw["totals"]["samples"] == sum(counts) + 60
    assert raw["splits"]["train"]["image_stats"]["width"] == {"min": 32, "mean": 32.0, "max": 32}
    assert raw["command"].startswith("ltpipe shard synthetic")


def test_members_ids_and_shuffle(tiny):
    """Members in MEMBERS order, .id = little-endian int64 id, ids 0..N-1, order mixes classes."""
    labels = []
    for split in ("train", "val"):
        next_id = 0
        for tar in tiny.shard_paths(split):
            samples, order = _tar_samples(tar)
            assert [e for _, e in order] == list(MEMBERS) * len(samples)
            for key, members in samples.items():
                assert key == key_of(next_id)
                assert struct.unpack("<q", members["id"])[0] == next_id
                meta = json.loads(members["json"])
                assert meta["class"] == tiny.classes[int(members["cls"])]
                if split == "train":
                    labels.append(int(members["cls"]))
                next_id += 1
        assert next_id == tiny.split(split).num_samples
    # shuffled across classes: the label sequence is far from sorted
    assert np.mean(np.diff(labels) != 0) > 0.5


def test_index_offsets_give_exact_jpeg_bytes(tiny):
    """Row i of index.npy slices exactly sample i's .jpg out of its shard, with its label."""
    for split in ("train", "val"):
        index = tiny.index(split)
        assert index.dtype == INDEX_DTYPE
        for number, path in enumerate(tiny.shard_paths(split)):
            blob = path.read_bytes()
            samples, _ = _tar_samples(path)
            for key, members in samples.items():
                row = index[int(key)]
                assert row["shard"] == number and row["label"] == int(members["cls"])
                assert blob[row["offset"]:row["offset"] + row["size"]] == members["jpg"]
        counts = np.bincount(index["label"], minlength=6).tolist()
        assert counts == list(tiny.split(split).class_counts)


def test_dali_index_equals_wds2idx(tiny, tmp_path):
    for tar in tiny.shard_paths("train")[:2]:
        ref = tmp_path / (tar.stem + ".ref.idx")
        # DALI's own indexer (the wds2idx module shipped with nvidia-dali), independent of PATH
        subprocess.run([sys.executable, "-m", "wds2idx", str(tar), str(ref)], check=True,
                       capture_output=True)
        assert tar.with_suffix(".idx").read_text() == ref.read_text()
        spans = read_dali_index(ref)
        assert len(spans) == len(_tar_samples(tar)[0])
        assert all([s.ext for s in sample] == list(MEMBERS) for sample in spans)


def test_webdataset_reads_every_sample_once(tiny):
    import webdataset as wds

    for split in ("train", "val"):
        urls = [str(p) for p in tiny.shard_paths(split)]
        ds = (wds.WebDataset(urls, shardshuffle=False)
              .decode(wds.handle_extension("id", decode_sample_id), "pil")
              .to_tuple("jpg", "cls", "id"))
        got = [(cls, sid, img.size) for img, cls, sid in ds]
        ids = sorted(i for _, i, _ in got)
        assert ids == list(range(tiny.split(split).num_samples))
        index = tiny.index(split)
        assert all(index["label"][i] == c for c, i, _ in got)
        assert {s for _, _, s in got} == {(32, 32)}


def test_dali_cpu_pipeline_reads_shards(tiny):
    from nvidia.dali import fn, pipeline_def, types

    split = "train"
    n = tiny.split(split).num_samples

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        jpg, sid, cls = fn.readers.webdataset(
            paths=[str(p) for p in tiny.shard_paths(split)],
            index_paths=[str(p) for p in tiny.dali_index_paths(split)],
            ext=["jpg", "id", "cls"], dtypes=[types.UINT8, types.INT64, types.UINT8])
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), sid, cls

    p = pipe()
    p.build()
    images, ids, cls = p.run()
    ids = np.array([int(np.asarray(ids[i])[0]) for i in range(n)])
    labels = np.array([int(bytes(np.asarray(cls[i]))) for i in range(n)])
    assert sorted(ids.tolist()) == list(range(n))
    assert (tiny.index(split)["label"][ids] == labels).all()
    assert np.asarray(images[0]).shape == (32, 32, 3)


def test_byte_identical_across_runs_and_workers(tmp_path):
    a = write_shards("synthetic", tmp_path / "a", samples_per_shard=64, **TINY)
    b = write_shards("synthetic", tmp_path / "b", samples_per_shard=64, workers=2, **TINY)
    for split in ("train", "val"):
        for pa, pb in zip(a.shard_paths(split), b.shard_paths(split)):
            assert pa.read_bytes() == pb.read_bytes()
        index_a, index_b = (m.root / split / "index.npy" for m in (a, b))
        assert index_a.read_bytes() == index_b.read_bytes()


def test_shard_size_limit_respected(tmp_path):
    m = write_shards("synthetic", tmp_path / "o", shard_size="100KB", **TINY)
    sizes = [s.bytes for s in m.split("train").shards]
    assert len(sizes) > 2 and max(sizes) <= 100_000
    assert sum(s.samples for s in m.split("train").shards) == m.split("train").num_samples


def test_parse_size():
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GiB") == 2**30 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="--shard-size"):
        parse_size("lots")


@pytest.mark.parametrize("max_size", [384, 150, 90])
def test_max_size_resize_matches_a_full_decode(max_size):
    """Large JPEGs are decoded at a reduced scale (libjpeg's scaled IDCT) before the resize: the
    result has the fitted size and the pixels of resizing the full decode, within JPEG loss."""
    # gradients under a 2-px checkerboard: a resize without a low-pass aliases it (nearest: 45)
    y, x = np.mgrid[0:600, 0:800]
    checker = 50 * (((x + y) % 2) * 2 - 1)
    image = np.stack([x * 255 // 800, y * 255 // 600, np.full_like(x, 128)], -1)
    image = (image + checker[..., None]).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95)
    enc = encode_image(buf.getvalue(), max_size=max_size, quality=95)
    assert (enc.width, enc.height) == fitted_size(800, 600, max_size) == \
        (max_size, round(600 * max_size / 800))
    full = Image.open(io.BytesIO(buf.getvalue()))
    ref = np.asarray(full.resize((enc.width, enc.height), Image.BICUBIC), dtype=np.float64)
    got = np.asarray(Image.open(io.BytesIO(enc.jpeg)), dtype=np.float64)
    assert np.abs(got - ref).mean() < 2.0


def _camera_jpeg(orientation: int, w: int = 40, h: int = 20) -> bytes:
    """A w x h JPEG, left half red and right half blue as stored, with an EXIF orientation."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2, 0] = 255
    image[:, w // 2:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("max_size", [None, 30])  # kept size, and the resize path
def test_camera_orientation_is_applied_once_at_shard_time(max_size):
    """EXIF orientation 6 (turn 90° clockwise to view): stored upright, with no tag left, so DALI
    (which applies the tag), PIL and the mix plans' header sizes all see the same picture."""
    enc = encode_image(_camera_jpeg(6), max_size=max_size, quality=95)
    img = Image.open(io.BytesIO(enc.jpeg))
    assert img.getexif().get(0x0112, 1) == 1
    assert img.size == (enc.width, enc.height) == ((20, 40) if max_size is None else (15, 30))
    px = np.asarray(img.convert("RGB"), dtype=int)
    top, bottom = px[: px.shape[0] // 2 - 2], px[px.shape[0] // 2 + 2:]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50  # the red half is now on top
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50


def test_an_upright_camera_jpeg_keeps_its_bytes():
    raw = _camera_jpeg(1)
    assert encode_image(raw, max_size=None, quality=95).jpeg == raw
