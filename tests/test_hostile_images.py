"""Images that shard-time and train-time checks once judged differently: each is stored right, or
is one row of rejected.tsv with the reason; what `ltpipe shard` stores, `--verify` and the
loaders accept (one rule for a stored JPEG, shards/jpegscan.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ltpipe.pipeline.shardset import open_split
from ltpipe.shards.format import ShardFormatError, load_manifest
from ltpipe.train.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def jpeg(size=(40, 30), colour=(200, 10, 10), quality=90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def folder(tmp_path, extra: dict[str, bytes] | None = None, per_class: int = 2):
    """imagefolder ROOT/{a,b}/*: two plain JPEGs per class, plus ``extra`` (path -> bytes)."""
    root = tmp_path / "imgs"
    for c in "ab":
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i}.jpg").write_bytes(jpeg(colour=(100 * (c == "a"), 50, 20 * i)))
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def rejected(out) -> dict[str, str]:
    path = out / "rejected.tsv"
    return dict(ln.split("\t") for ln in path.read_text().splitlines()) if path.exists() else {}


def stored(out, split="train") -> dict[str, bytes]:
    """Source path -> the stored JPEG bytes."""
    import tarfile

    found = {}
    for tar in load_manifest(out).shard_paths(split):
        with tarfile.open(tar) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf}
        for name, data in members.items():
            if name.endswith(".json"):
                found[json.loads(data)["path"]] = members[name[:-5] + ".jpg"]
    return found


def png(array: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()


# --- 16-bit and float pixels ---------------------------------------------------------------------

def test_16_bit_greyscale_is_scaled_and_float_pixels_are_rejected(tmp_path):
    """A 16-bit PNG was stored almost white (values clipped at 255), a float TIFF black."""
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    floats = Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), "F")
    wide = Image.fromarray(np.full((48, 64), 70000, np.int32), "I")
    root = folder(tmp_path, {"a/ramp16.png": png(ramp), "a/ramp16.tif": tiff(Image.fromarray(ramp)),
                             "b/float.tif": tiff(floats), "b/int32.tif": tiff(wide)})
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0, r.output
    assert rejected(out) == {
        f"{root}/b/float.tif": "floating-point pixels (mode F): no defined 8-bit range (convert "
                               "the image to 8 or 16 bits)",
        f"{root}/b/int32.tif": "32-bit integer pixels (mode I): no defined 8-bit range (convert "
                               "the image to 8 or 16 bits)"}
    images = stored(out)
    for name in ("ramp16.png", "ramp16.tif"):
        grey = np.asarray(Image.open(io.BytesIO(images[f"{root}/a/{name}"])).convert("L"), float)
        want = ramp / 257.0  # the same ramp in 8 bits
        assert abs(grey.mean() - want.mean()) < 2 and abs(grey - want).max() < 12, name
    assert run("inspect", out, "--verify").exit_code == 0


# --- data after the end of a JPEG ---------------------------------------------------------------

def test_trailing_data_after_eoi_is_cut_off_at_shard_time(tmp_path):
    """A phone's "motion photo" (a video after the JPEG's EOI): shard and --verify said OK, then
    the loaders refused the split as corrupt. Now it is stored without the trailing data."""
    plain = jpeg(colour=(1, 2, 3))
    root = folder(tmp_path, {"a/motion.jpg": plain + b"\x00\x00\x00\x18ftypmp42" + b"v" * 5000})
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out, "--val-per-class", "1")
    assert r.exit_code == 0 and "0 rejected" in r.stdout, r.output
    both = {**stored(out), **stored(out, "val")}
    assert both[f"{root}/a/motion.jpg"] == plain  # the image's own bytes, kept exactly
    assert run("inspect", out, "--verify").exit_code == 0
    for split in ("train", "val"):
        assert open_split(out, split).skipped == 0


def _with_trailing_data(jpg: bytes) -> bytes:
    """A valid, smaller JPEG followed by trailing data up to the same length."""
    small = io.BytesIO()
    Image.new("L", (8, 8), 90).save(small, format="JPEG", quality=30)  # one table set
    assert len(small.getvalue()) <= len(jpg) - 64
    return small.getvalue() + b"x" * (len(jpg) - len(small.getvalue()))


def test_a_stored_jpeg_with_trailing_data_is_one_case_for_verify_and_the_loaders(tmp_path):
    """Shards written before (or by hand) may hold such payloads: --verify now says what the
    loaders say, and `shards:` re-stores them without the trailing data."""
    root = folder(tmp_path, per_class=3)
    out = tmp_path / "out"
    assert run("shard", f"imagefolder:{root}", out, "--val-per-class", "1").exit_code == 0
    rows = np.load(out / "train" / "index.npy")
    tar = out / "train" / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    off, size = int(rows["offset"][1]), int(rows["size"][1])
    data[off:off + size] = _with_trailing_data(bytes(data[off:off + size]))
    tar.write_bytes(bytes(data))
    doc = json.loads((out / "manifest.json").read_text())
    import hashlib

    doc["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc))
    r = run("inspect", out, "--verify")
    assert r.exit_code == 1 and "data after the end of the image" in r.stderr, r.output
    with pytest.raises(ShardFormatError, match="1 corrupt sample"):
        open_split(out, "train")
    again = tmp_path / "again"
    r = run("shard", f"shards:{out}", again)
    assert r.exit_code == 0 and "0 rejected" in r.stdout, r.output
    assert run("inspect", again, "--verify").exit_code == 0


# --- --max-pixels is the manifest's, for every reader ---------------------------------------------

def test_readers_obey_the_manifests_max_pixels_not_pils(tmp_path, monkeypatch):
    """--max-pixels above PIL's own limit (here PIL's limit is lowered instead of making a
    90-megapixel image): --verify and the loaders called such an image corrupt."""
    big = jpeg(size=(60, 50))  # 3,000 pixels
    root = folder(tmp_path, {"a/big.jpg": big, "b/big.jpg": big})
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out, "--max-pixels", "4000", "--val-per-class", "1")
    assert r.exit_code == 0 and "0 rejected" in r.stdout, r.output
    assert load_manifest(out).max_pixels == 4000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # a library default below the manifest's
    assert run("inspect", out, "--verify").exit_code == 0
    from ltpipe.pipeline.torch_loader import make_torch_loader

    for split in ("train", "val"):
        assert open_split(out, split).skipped == 0
    loader = make_torch_loader(out, batch_size=2, streams=("uniform",), num_workers=0)
    assert sum(len(s["uniform"].index) for s in loader) == load_manifest(out).split(
        "train").num_samples


def test_an_image_above_the_manifests_max_pixels_is_refused_by_the_readers(tmp_path):
    root = folder(tmp_path, {"a/big.jpg": jpeg(size=(60, 50))})
    out = tmp_path / "out"
    assert run("shard", f"imagefolder:{root}", out, "--max-pixels", "4000").exit_code == 0
    doc = json.loads((out / "manifest.json").read_text())
    doc["options"]["max_pixels"] = 2000  # a manifest that claims less than its images hold
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ShardFormatError, match=r"image too large: 60x50 pixels \(max_pixels 2000"):
        open_split(out, "train")
    r = run("inspect", out, "--verify")
    assert r.exit_code == 1 and "max_pixels 2000" in r.stderr


def test_max_pixels_above_what_dali_decodes_is_one_line(tmp_path):
    r = run("shard", "synthetic", tmp_path / "o", "--max-pixels", "200000000")
    assert r.exit_code == 2 and "--max-pixels must be in 1..178956970" in r.stderr


# --- extreme sides and aspect ratios -----------------------------------------------------------

def test_extreme_sides_and_aspect_ratios_are_rejected_with_the_reason(tmp_path):
    """120 x 42,000 passed shard and --verify, then DALI's random-crop decoder failed mid-run
    (a crop window overflowed); one 100,000 x 1 PNG aborted the whole job naming OUT."""
    root = folder(tmp_path, {"a/tall.jpg": jpeg(size=(120, 42000)),
                             "a/line.png": png(np.zeros((1, 100_000), np.uint8)),
                             "b/strip.png": png(np.zeros((3, 400), np.uint8))})
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0 and "3 rejected" in r.stdout, r.output
    assert rejected(out) == {
        f"{root}/a/tall.jpg": "image side too long: 120x42000 (sides up to 16384 px are stored; "
                              "--max-size resizes)",
        f"{root}/a/line.png": "image side too long: 100000x1 (sides up to 16384 px are stored; "
                              "--max-size resizes)",
        f"{root}/b/strip.png": "aspect ratio too extreme: 400x3 (up to 64:1 is stored)"}
    out2 = tmp_path / "out2"  # --max-size resizes the tall one; the line stays too thin
    r = run("shard", f"imagefolder:{root}", out2, "--max-size", "4000")
    assert r.exit_code == 0, r.output
    assert sorted(rejected(out2)) == [f"{root}/a/line.png", f"{root}/a/tall.jpg",
                                      f"{root}/b/strip.png"]
    assert all(v.startswith("aspect ratio too extreme") for v in rejected(out2).values())


def test_one_image_that_fails_to_encode_is_one_row_not_the_job(tmp_path, monkeypatch):
    from ltpipe.shards import encode

    real = encode._to_jpeg

    def failing(img, size, quality):
        if img.size == (33, 33):
            raise OSError("encoder error -2 when writing image file")
        return real(img, size, quality)

    monkeypatch.setattr(encode, "_to_jpeg", failing)
    root = folder(tmp_path, {"a/odd.png": png(np.zeros((33, 33), np.uint8))})
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0 and "1 rejected" in r.stdout, r.output
    assert rejected(out) == {
        f"{root}/a/odd.png": "cannot re-encode (encoder error -2 when writing image file)"}


# --- files too large to read -------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_huge_sparse_file_is_rejected_unread(tmp_path):
    """A 3 GB sparse .jpg was read whole (MemoryError): its size alone rejects it now."""
    root = folder(tmp_path)
    with open(root / "a" / "sparse.jpg", "wb") as f:
        f.truncate(3 << 30)  # no disk blocks
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0, r.output
    assert rejected(out) == {f"{root}/a/sparse.jpg": "file of 3,221,225,472 bytes, more than an "
                             "image of --max-pixels can need (732,605,096 bytes)"}


def test_a_shards_source_payload_larger_than_any_image_is_rejected_unread(tmp_path):
    from ltpipe.shards.sources import read_span
    from ltpipe.shards.encode import Rejected

    with pytest.raises(Rejected, match="more than an image of --max-pixels can need"):
        read_span(("/nonexistent.tar", 0, 3 << 30), max_bytes=1 << 20)


def test_only_huffman_coded_frames_are_kept_byte_for_byte(tmp_path, monkeypatch):
    """nvJPEG decodes no arithmetic-coded, lossless or hierarchical frame that libjpeg-turbo may
    accept: only baseline/extended/progressive Huffman frames are stored as they came. (No
    encoder here writes arithmetic coding: baseline frames stand in for it.)"""
    from ltpipe.shards import jpegscan

    progressive = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 90, 9)).save(progressive, format="JPEG", progressive=True)
    base = jpeg(colour=(90, 9, 9), quality=70)  # re-encoded at --quality 90: other bytes
    root = folder(tmp_path, {"a/base.jpg": base, "b/prog.jpg": progressive.getvalue()})
    monkeypatch.setattr(jpegscan, "HUFFMAN_FRAMES", frozenset({0xC2}))  # baseline "unsupported"
    out = tmp_path / "out"
    assert run("shard", f"imagefolder:{root}", out).exit_code == 0
    images = stored(out)
    assert images[f"{root}/b/prog.jpg"] == progressive.getvalue()
    assert images[f"{root}/a/base.jpg"] != base  # re-encoded
    assert jpegscan.frame_marker(images[f"{root}/a/base.jpg"]) == 0xC0
