"""The shard writer against hostile and careless input: each case is refused with one line
(exit 2), or recorded in rejected.tsv, never a traceback, a hang or a silent change of the data."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ltpipe.train.cli import main

TINY = ["--classes", "4", "--max-per-class", "12", "--samples-per-shard", "10"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, message: str) -> str:
    """Assert exit 2 with a single ``Error:`` line containing ``message``; return the line."""
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    return lines[0]


def jpeg(colour=(200, 10, 10), size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


# --- two writers into one OUT ------------------------------------------------------------------

def paused_writer(out, seconds, **options):
    """A real `write_shards` into ``out`` in another process, paused for ``seconds`` after its
    first shard; returned once that shard is written (its stdout said so)."""
    code = ("import sys, time; from ltpipe.shards.write import write_shards\n"
            "def pause(record):\n"
            f"    print('shard', flush=True); time.sleep({seconds})\n"
            "write_shards('synthetic', sys.argv[1], progress=False, on_shard=pause,\n"
            f"             **{options!r})\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              text=True)
    if writer.stdout.readline().strip() != "shard":
        writer.kill()
        writer.wait()
        pytest.fail("the paused writer never wrote its first shard")
    return writer


def test_second_writer_of_one_out_exits_2(tmp_path):
    """A real writer, paused after its first shard, makes a second `ltpipe shard` into the same
    OUT refuse (it once resumed from the first one's journal and both wrote, exit 0)."""
    out = tmp_path / "out"
    first = paused_writer(out, 30, classes=4, max_per_class=12, samples_per_shard=10)
    try:
        line = one_line_error(run("shard", "synthetic", out, *TINY), f"pid {first.pid}")
        assert "delete" in line and not (out / "manifest.json").exists()
    finally:
        first.kill()
        first.wait()
    r = run("shard", "synthetic", out, *TINY)  # the first is gone: its lock is stale, resume
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train", "val"]
    assert run("inspect", out, "--verify").exit_code == 0


# --- pickles that name code --------------------------------------------------------------------

class _RunsCode:
    """Unpickling this calls os.system (what a crafted CIFAR batch can do with pickle.load)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _cifar100(root, meta, protocol):
    """A tiny cifar-100-python folder: 2 classes, 4 train and 2 test images."""
    import numpy as np

    def batch(labels):
        return {b"data": np.full((len(labels), 3072), 7, np.uint8), b"fine_labels": labels,
                b"filenames": [b"x.png"] * len(labels), b"batch_label": "training batch"}

    root.mkdir(parents=True)
    for name, obj in (("train", batch([0, 1, 0, 1])), ("test", batch([0, 1])), ("meta", meta)):
        (root / name).write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.mark.parametrize("where", ["meta", "nested"])
def test_cifar_pickle_that_runs_code_is_refused(tmp_path, where):
    marker = tmp_path / "ran"
    names = [b"a", b"b"]
    meta = ({b"fine_label_names": _RunsCode(marker)} if where == "meta" else
            {b"fine_label_names": names, b"extra": [{"deep": _RunsCode(marker)}]})
    _cifar100(tmp_path / "cifar-100-python", meta, protocol=2)
    line = one_line_error(run("shard", f"cifar100:{tmp_path}", tmp_path / "out"),
                          "cifar-100-python/meta: not a CIFAR pickle batch")
    assert "refused to load posix.system" in line
    assert not marker.exists()  # nothing ran


@pytest.mark.parametrize("protocol", [2, 5])  # 2: what CIFAR's own files use; 5: Python 3's
def test_cifar_batches_still_load(tmp_path, protocol):
    _cifar100(tmp_path / "cifar-100-python", {b"fine_label_names": [b"a", b"b"]}, protocol)
    r = run("shard", f"cifar100:{tmp_path}", tmp_path / "out")
    assert r.exit_code == 0 and r.stdout.startswith("wrote 4 train / 2 val images"), r.output


@pytest.mark.parametrize("meta, train_labels, needle", [
    ({b"other_key": [b"a", b"b"]}, [0, 1, 0, 1], "meta: not a cifar100 meta file"),
    ({b"fine_label_names": [7, 8]}, [0, 1, 0, 1], "meta: not a cifar100 meta file"),
    ({b"fine_label_names": [b"\xff", b"b"]}, [0, 1, 0, 1], "meta: not a cifar100 meta file"),
    ({b"fine_label_names": [b"a", b"b"]}, [0, None, 0, 1], "train: not a cifar100 batch"),
], ids=["no-names", "names-not-bytes", "names-not-utf8", "label-none"])
def test_foreign_cifar_meta_or_batch_is_one_line(tmp_path, meta, train_labels, needle):
    root = tmp_path / "cifar-100-python"
    _cifar100(root, meta, protocol=2)
    if train_labels is not None:
        batch = {b"data": np.full((4, 3072), 7, np.uint8), b"fine_labels": train_labels}
        (root / "train").write_bytes(pickle.dumps(batch, protocol=2))
    one_line_error(run("shard", f"cifar100:{tmp_path}", tmp_path / "out"), needle)


# --- verification recounts what it is told -----------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "out"
    assert run("shard", "synthetic", out, *TINY).exit_code == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_verify_recounts_class_counts(synthetic_out, tmp_path):
    """class_counts edited with the total kept: --verify names the field (it once said OK)."""
    import json

    out = _copy(synthetic_out, tmp_path / "edited")
    doc = json.loads((out / "manifest.json").read_text())
    counts = doc["splits"]["train"]["class_counts"]
    counts[0], counts[-1] = counts[0] - 1, counts[-1] + 1
    (out / "manifest.json").write_text(json.dumps(doc))
    r = run("inspect", out, "--verify")
    assert r.exit_code == 1 and "verify: OK" not in r.stdout
    assert f"{out / 'manifest.json'}: splits.train.class_counts[0] is {counts[0]}, the train .cls " \
           f"members count {counts[0] + 1}" in r.stderr
    assert "train/index.npy labels count" in r.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled", "scalar", "labels"])
def test_verify_on_a_bad_index_is_one_line(synthetic_out, tmp_path, damage):
    import numpy as np

    out = _copy(synthetic_out, tmp_path / "bad")
    path = out / "train" / "index.npy"
    rows = np.load(path)
    if damage == "garbage":
        path.write_bytes(b"\x00" * 40)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:150])
    elif damage == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "scalar":
        np.save(path, rows[0])  # 0-d: len() fails
    else:
        rows["label"][3] = 2**31 - 1  # a label no class has
        np.save(path, rows)
    r = run("inspect", out, "--verify")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{path}" in r.stderr and "Error: verify: " in r.stderr
    assert all(len(line) < 400 for line in r.stderr.splitlines())


# --- labels and sizes that would exhaust memory -------------------------------------------------

def _list_source(tmp_path, lines: list[str], images: dict[str, bytes] | None = None):
    """ROOT with the given images (default: a.jpg, b.jpg, c.jpg) and a list file of ``lines``."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    for name, data in (images or {n: jpeg((i * 80, 0, 0)) for i, n in
                                  enumerate(["a.jpg", "b.jpg", "c.jpg"])}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    listing = root / "train.txt"
    listing.write_text("".join(line + "\n" for line in lines))
    return listing


def test_sparse_labels_map_to_dense_classes(tmp_path):
    from ltpipe.shards.format import load_manifest

    listing = _list_source(tmp_path, ["a.jpg 5000", "b.jpg 7", "c.jpg 5000"])
    r = run("shard", f"list:{listing}", tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = load_manifest(tmp_path / "out")
    assert m.classes == ("0007", "5000") and m.raw["class_ids"] == [7, 5000]
    assert m.split("train").class_counts == (1, 2)
    assert sorted(m.index("train")["label"].tolist()) == [0, 1, 1]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("label", ["100000000", "9" * 4000, "9" * 200_000])
def test_huge_label_is_one_line(tmp_path, label):
    """10^8 once allocated 5.9 GB of class names; 4,000 digits hung (Python parses up to 4,300)."""
    listing = _list_source(tmp_path, ["a.jpg 1", f"b.jpg {label}"])
    line = one_line_error(run("shard", f"list:{listing}", tmp_path / "out"),
                          f"{listing}:2: label ")
    assert "above 10,000,000" in line and len(line) < 300


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width x height pixels."""
    data = bytearray(jpeg(size=(16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_images_above_max_pixels_are_rejected_from_the_header(tmp_path):
    images = {"a.jpg": jpeg(), "bomb.jpg": _jpeg_claiming(30000, 30000),
              "big.jpg": _jpeg_claiming(10000, 9000), "wide.jpg": jpeg(size=(300, 200))}
    listing = _list_source(tmp_path, [f"{n} 0" for n in images], images)
    r = run("shard", f"list:{listing}", tmp_path / "out", "--max-pixels", "50000")
    assert r.exit_code == 0, r.output
    rows = dict(line.split("\t") for line in
                (tmp_path / "out" / "rejected.tsv").read_text().splitlines())
    root = listing.parent
    assert rows == {
        f"{root}/bomb.jpg": "image too large: 30000x30000 = 900000000 pixels (--max-pixels 50000)",
        f"{root}/big.jpg": "image too large: 10000x9000 = 90000000 pixels (--max-pixels 50000)",
        f"{root}/wide.jpg": "image too large: 300x200 = 60000 pixels (--max-pixels 50000)"}
    r = run("shard", f"list:{listing}", tmp_path / "out2")  # the default: 89,478,485 like PIL
    assert r.exit_code == 0 and "2 rejected" in r.stdout, r.output


# --- inputs that hung or tracebacked ------------------------------------------------------------

def _rejected(out) -> dict[str, str]:
    return dict(line.split("\t") for line in (out / "rejected.tsv").read_text().splitlines())


@pytest.mark.timeout(20)
def test_fifo_named_jpg_is_rejected_not_read(tmp_path):
    import os

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(jpeg())
    os.mkfifo(root / "cat" / "pipe.jpg")  # opening it for reading would wait for a writer
    (root / "cat" / "dir.jpg").mkdir()
    r = run("shard", f"imagefolder:{root}", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert _rejected(tmp_path / "out") == {f"{root}/cat/dir.jpg": "not a regular file",
                                           f"{root}/cat/pipe.jpg": "not a regular file"}


def test_non_utf8_names_in_imagefolder_are_rejected_rows(tmp_path):
    import os

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(jpeg())
    base = os.fsencode(root)
    with open(os.path.join(base, b"cat", b"caf\xe9.jpg"), "wb") as f:  # Latin-1, not UTF-8
        f.write(jpeg())
    os.mkdir(os.path.join(base, b"\xffdog"))
    with open(os.path.join(base, b"\xffdog", b"b.jpg"), "wb") as f:
        f.write(jpeg())
    r = run("shard", f"imagefolder:{root}", tmp_path / "out")
    assert r.exit_code == 0 and "1 train" in r.stdout, r.output
    assert _rejected(tmp_path / "out") == {f"{root}/cat/caf\\xe9.jpg": "file name is not UTF-8",
                                           f"{root}/\\xffdog/b.jpg": "class folder name is not "
                                                                     "UTF-8"}


def test_non_utf8_list_file_is_one_line(tmp_path):
    listing = _list_source(tmp_path, ["a.jpg 0"])
    listing.write_bytes(b"a.jpg 0\nb\xe9.jpg 1\n")
    one_line_error(run("shard", f"list:{listing}", tmp_path / "out"), f"{listing}:2: not UTF-8")


def _inat_json(path, images, annotations, categories=({"id": 0, "name": "c0"},)):
    import json

    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": list(categories)}))
    return path


def test_inat_json_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(run("shard", f"inat:{path}", tmp_path / "out"), "nested deeper than 32 levels")


def test_inat_lone_surrogates_are_a_row_or_one_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    path = _inat_json(tmp_path / "train.json",
                      [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b\ud800.jpg"}],
                      [{"image_id": 1, "category_id": 0}, {"image_id": 2, "category_id": 0}])
    r = run("shard", f"inat:{path}", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert _rejected(tmp_path / "out") == {
        f"{tmp_path}/b\\ud800.jpg": "file name is not valid Unicode (UTF-8)"}
    _inat_json(path, [{"id": 1, "file_name": "a.jpg"}], [{"image_id": 1, "category_id": 0}],
               [{"id": 0, "name": "bad\udc00name"}])
    one_line_error(run("shard", f"inat:{path}", tmp_path / "out2"), "is not valid Unicode")


# --- rejected.tsv: one record per input, the same bytes every run ------------------------------

def test_rejected_tsv_escapes_fields_and_is_deterministic(tmp_path):
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(jpeg())
    forged = "x.jpg\nforged.jpg\tlooks like a record\\n.jpg"
    (root / "cat" / forged).write_bytes(b"not an image")
    (root / "cat" / "cut.jpg").write_bytes(jpeg(size=(64, 64))[:300])
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for out in outs:
        assert run("shard", f"imagefolder:{root}", out).exit_code == 0
    text = (outs[0] / "rejected.tsv").read_bytes()
    assert text == (outs[1] / "rejected.tsv").read_bytes()
    assert b" at 0x" not in text  # PIL names the BytesIO object by its address
    rows = text.decode().splitlines()
    assert len(rows) == 2 and all(row.count("\t") == 1 for row in rows)
    assert any(row.startswith(f"{root}/cat/x.jpg\\nforged.jpg\\tlooks like a record\\\\n.jpg\t")
               for row in rows)


# --- paths that leave ROOT ----------------------------------------------------------------------

def test_list_paths_must_stay_inside_root(tmp_path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg())
    listing = _list_source(tmp_path, ["a.jpg 0", "./b.jpg 0", "../secret.jpg 0",
                                      f"{outside} 0", "c.jpg/../../secret.jpg 0"])
    root = listing.parent
    r = run("shard", f"list:{listing}", tmp_path / "out")
    assert r.exit_code == 0 and "2 train" in r.stdout, r.output
    reason = f"outside ROOT {root} (--allow-outside-root allows it)"
    assert _rejected(tmp_path / "out") == {f"{root}/../secret.jpg": reason, f"{outside}": reason,
                                           f"{root}/c.jpg/../../secret.jpg": reason}
    r = run("shard", f"list:{listing}", tmp_path / "out2", "--allow-outside-root")
    assert r.exit_code == 0 and "3 train" in r.stdout, r.output  # the secret once: 3 names, 1 file
    assert sorted(_rejected(tmp_path / "out2").values()) == [
        f"{listing}:4: duplicate of {listing}:3", f"{listing}:5: duplicate of {listing}:3"]


def test_inat_paths_must_stay_inside_root(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(jpeg())
    (tmp_path / "secret.jpg").write_bytes(jpeg())
    path = _inat_json(tmp_path / "train.json",
                      [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "../secret.jpg"},
                       {"id": 3, "file_name": "/etc/passwd"}],
                      [{"image_id": i, "category_id": 0} for i in (1, 2, 3)])
    r = run("shard", f"inat:{path}:{data}", tmp_path / "out")
    assert r.exit_code == 0 and "1 train" in r.stdout, r.output
    assert sorted(_rejected(tmp_path / "out")) == ["/etc/passwd", f"{data}/../secret.jpg"]
    assert set(_rejected(tmp_path / "out").values()) == {
        f"outside ROOT {data} (--allow-outside-root allows it)"}


# --- duplicates ---------------------------------------------------------------------------------

def test_list_duplicates_are_rejected_with_the_reason(tmp_path):
    listing = _list_source(tmp_path, ["a.jpg 0", "b.jpg 1", "c.jpg 1", "a.jpg 0", "b.jpg 0"])
    val = listing.parent / "val.txt"
    val.write_text("c.jpg 1\n")  # also a train image: it would leak into the evaluation
    r = run("shard", f"list:{listing}", tmp_path / "out", "--val-list", val)
    assert r.exit_code == 0 and r.stdout.startswith("wrote 2 train images"), r.output
    assert _rejected(tmp_path / "out") == {
        f"{listing.parent}/a.jpg": f"{listing}:4: duplicate of {listing}:1",
        f"{listing.parent}/b.jpg": f"{listing}:5: one file with 2 labels (0, 1)",
        f"{listing.parent}/c.jpg": f"{val}:1: also in the train split"}
    rows = (tmp_path / "out" / "rejected.tsv").read_text().splitlines()
    assert sum(row.startswith(f"{listing.parent}/b.jpg\t") for row in rows) == 2  # both lines


def test_inat_duplicate_ids_and_annotations_are_rejected(tmp_path):
    for name in "abcd":
        (tmp_path / f"{name}.jpg").write_bytes(jpeg())
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
              {"id": 2, "file_name": "c.jpg"}, {"id": 3, "file_name": "d.jpg"},
              {"id": 4, "file_name": "a.jpg"}]
    notes = [{"image_id": 1, "category_id": 0}, {"image_id": 2, "category_id": 0},
             {"image_id": 3, "category_id": 0}, {"image_id": 3, "category_id": 1},
             {"image_id": 4, "category_id": 0}]
    path = _inat_json(tmp_path / "train.json", images, notes,
                      [{"id": 0, "name": "c0"}, {"id": 1, "name": "c1"}])
    r = run("shard", f"inat:{path}", tmp_path / "out")
    assert r.exit_code == 0 and r.stdout.startswith("wrote 1 train images"), r.output
    rows = (tmp_path / "out" / "rejected.tsv").read_text().splitlines()
    assert sorted(rows) == sorted([
        f"{tmp_path}/b.jpg\t{path}: image id 2 appears 2 times",
        f"{tmp_path}/c.jpg\t{path}: image id 2 appears 2 times",
        f"{tmp_path}/d.jpg\t{path}: image id 3 has 2 annotations",
        f"{tmp_path}/a.jpg\t{path}: image id 4: duplicate of {path}: image id 1"])


# --- a val split, made at shard time -----------------------------------------------------------

def _folder(tmp_path, per_class=(5, 4, 3)):
    root = tmp_path / "imgs"
    for k, n in enumerate(per_class):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n):
            (root / f"c{k}" / f"{i}.jpg").write_bytes(jpeg((k * 60, i * 30, 0)))
    return root


def _val_paths(out):
    import json
    import tarfile

    from ltpipe.shards.format import load_manifest

    m = load_manifest(out)
    paths = []
    for shard in m.shard_paths("val"):
        with tarfile.open(shard) as tf:
            paths += [json.load(tf.extractfile(member))["path"] for member in tf
                      if member.name.endswith(".json")]
    return m.split("val").class_counts, sorted(paths)


def test_imagefolder_val_per_class_is_balanced_and_seeded(tmp_path):
    root = _folder(tmp_path)
    r = run("shard", f"imagefolder:{root}", tmp_path / "a", "--val-per-class", "2")
    assert r.exit_code == 0 and r.stdout.startswith("wrote 6 train / 6 val"), r.output
    assert "warning" not in r.stderr
    counts, paths = _val_paths(tmp_path / "a")
    assert counts == (2, 2, 2)
    assert run("shard", f"imagefolder:{root}", tmp_path / "b", "--val-per-class", "2").exit_code == 0
    assert _val_paths(tmp_path / "b")[1] == paths  # the same seed holds out the same images
    others = [_val_paths(tmp_path / f"s{seed}")[1] for seed in (1, 2, 3) if run(
        "shard", f"imagefolder:{root}", tmp_path / f"s{seed}", "--val-per-class", "2",
        "--seed", seed).exit_code == 0]
    assert len(others) == 3 and any(o != paths for o in others)
    one_line_error(run("shard", f"imagefolder:{root}", tmp_path / "c", "--val-per-class", "3"),
                   "class 'c2' has 3 images (it needs 4)")


def test_shard_without_val_warns(tmp_path):
    r = run("shard", f"imagefolder:{_folder(tmp_path)}", tmp_path / "out")
    assert r.exit_code == 0 and "6 val" not in r.stdout, r.output
    assert r.stderr.startswith("warning: ") and "no val split" in r.stderr
    assert "--val-per-class" in r.stderr


# --- a dead encoding worker ---------------------------------------------------------------------

KILL_A_WORKER = """
import multiprocessing, os, signal, sys
from ltpipe.shards import write
from ltpipe.train.cli import main

real = write._ShardSink.close

def close(self, inputs_end):  # after the first shard, SIGKILL a worker, as the OOM killer would
    real(self, inputs_end)
    if not getattr(write, "killed", False):
        write.killed = True
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

write._ShardSink.close = close
sys.argv = ["ltpipe", "shard", *sys.argv[1:]]
main()
"""


@pytest.mark.timeout(120)
def test_a_killed_encoding_worker_fails_in_one_line_and_the_job_resumes(tmp_path):
    """`--workers 2` with one worker killed hung forever (multiprocessing.Pool waits for the
    lost task's result)."""
    out = tmp_path / "out"
    args = ["synthetic", str(out), "--workers", "2", *TINY]
    res = subprocess.run([sys.executable, "-c", KILL_A_WORKER, *args], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 1, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "an encoding worker process died" in lines[0], res.stderr
    assert "re-run the same command to resume" in lines[0]
    assert not (out / "manifest.json").exists() and not (out / ".ltpipe.lock").exists()
    assert (out / "train" / "shard-000000.tar").is_file()  # the finished shard is kept
    assert run("shard", *args).exit_code == 0
    fresh = tmp_path / "fresh"
    assert run("shard", "synthetic", fresh, *TINY).exit_code == 0
    for split in ("train", "val"):
        assert {p.name: p.read_bytes() for p in (out / split).iterdir()} == \
            {p.name: p.read_bytes() for p in (fresh / split).iterdir()}


# --- paths --------------------------------------------------------------------------------------

def test_a_non_utf8_out_completes(tmp_path):
    """The manifest could not hold OUT's name: every shard was written, then the job failed,
    and the output could never complete."""
    import os

    out = tmp_path / os.fsdecode(b"x\xff")
    r = run("shard", "synthetic", out, *TINY)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert run("shard", "synthetic", out, *TINY).stdout.startswith("already complete")
    r = run("inspect", out, "--verify")
    assert r.exit_code == 0 and "x\\xff" in r.stdout and "verify: OK" in r.stdout


def test_nul_bytes_in_list_and_inat_paths_are_rejected_rows(tmp_path):
    listing = _list_source(tmp_path, ["a.jpg 0", "b\0.jpg 0", "c.jpg 1"])
    r = run("shard", f"list:{listing}", tmp_path / "l")
    assert r.exit_code == 0, r.output
    assert _rejected(tmp_path / "l") == {
        f"{listing.parent}/b\\x00.jpg": "file name contains a NUL byte"}
    path = _inat_json(tmp_path / "root" / "i.json", [{"id": 1, "file_name": "a.jpg"},
                                                     {"id": 2, "file_name": "x\0/../c.jpg"}],
                      [{"image_id": 1, "category_id": 0}, {"image_id": 2, "category_id": 0}])
    r = run("shard", f"inat:{path}", tmp_path / "i")
    assert r.exit_code == 0, r.output
    assert _rejected(tmp_path / "i") == {
        f"{listing.parent}/x\\x00/../c.jpg": "file name contains a NUL byte"}
    for out in ("l", "i"):  # finished: no journal, temporary or lock left
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == \
            ["manifest.json", "rejected.tsv", "train"]


def test_a_too_long_out_name_is_one_line(tmp_path):
    out = tmp_path / ("x" * 300)
    one_line_error(run("shard", "synthetic", out, *TINY), "File name too long")
    one_line_error(run("inspect", out), "File name too long")


# --- hostile tars under --verify ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "chardev", "huge"])
def test_verify_reports_hostile_tar_members_without_crashing(synthetic_out, tmp_path, kind):
    """A .jpg member that is a symlink (KeyError) or a character device (AttributeError), or one
    whose header claims more bytes than any image: reported, never followed or read."""
    import tarfile

    out = _copy(synthetic_out, tmp_path / "bad")
    tar = out / "train" / "shard-000000.tar"
    rebuilt = tmp_path / "rebuilt.tar"
    with tarfile.open(tar) as src, tarfile.open(rebuilt, "w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "000000001.jpg" and kind != "huge":
                member.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.CHRTYPE
                member.linkname, member.size, data = "/etc/passwd", 0, b""
            dst.addfile(member, io.BytesIO(data))
    if kind == "huge":  # the size field of one header, checksum fixed
        raw = bytearray(rebuilt.read_bytes())
        with tarfile.open(rebuilt) as tf:
            head = next(m for m in tf if m.name == "000000001.jpg").offset
        raw[head + 124:head + 136] = b"%011o\0" % (1 << 33)
        raw[head + 148:head + 156] = b" " * 8
        raw[head + 148:head + 155] = b"%06o\0" % sum(raw[head:head + 512])
        rebuilt.write_bytes(bytes(raw))
    tar.write_bytes(rebuilt.read_bytes())
    r = run("inspect", out, "--verify")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "verify: OK" not in r.stdout
    if kind != "huge":
        assert "member 000000001.jpg is not a regular file" in r.stderr, r.stderr


# --- shard names that leave the shard directory -------------------------------------------------

@pytest.mark.parametrize("name", ["../../x.tar", "/tmp/x.tar", "sub/shard-000000.tar", ".tar"])
def test_shard_names_outside_the_shard_directory_are_refused(synthetic_out, tmp_path, name):
    """train, `shards:` and --verify read ../../x.tar or an absolute path from a manifest."""
    import json

    from ltpipe.pipeline.shardset import open_split
    from ltpipe.shards.format import ShardFormatError

    out = _copy(synthetic_out, tmp_path / "bad")
    doc = json.loads((out / "manifest.json").read_text())
    doc["splits"]["train"]["shards"][0]["name"] = name
    (out / "manifest.json").write_text(json.dumps(doc))
    needle = "splits.train.shards[0].name"
    one_line_error(run("inspect", out, "--verify"), needle)
    one_line_error(run("shard", f"shards:{out}", tmp_path / "again"), needle)
    with pytest.raises(ShardFormatError, match=r"is not a shard file name"):
        open_split(out, "train")


def test_a_split_named_like_a_path_is_refused(synthetic_out, tmp_path):
    import json

    out = _copy(synthetic_out, tmp_path / "bad")
    doc = json.loads((out / "manifest.json").read_text())
    doc["splits"]["../../etc"] = doc["splits"].pop("val")
    (out / "manifest.json").write_text(json.dumps(doc))
    one_line_error(run("inspect", out), "is not a split (train, val)")


# --- class names --------------------------------------------------------------------------------

def test_escape_sequences_in_class_names_are_shown_escaped(tmp_path):
    root = tmp_path / "imgs"
    for name in ("plain", "red\x1b[31mRED\x1b[0m", "bell\x07"):
        (root / name).mkdir(parents=True)
        (root / name / "a.jpg").write_bytes(jpeg())
    r = run("shard", f"imagefolder:{root}", tmp_path / "out", "--dry-run")
    assert r.exit_code == 0 and "\x1b" not in r.output and "\x07" not in r.output, r.output
    assert "red\\x1b[31mRED\\x1b[0m" in r.stdout
    assert run("shard", f"imagefolder:{root}", tmp_path / "out").exit_code == 0
    r = run("inspect", tmp_path / "out")
    assert r.exit_code == 0 and "\x1b" not in r.output and "\x07" not in r.output, r.output
    assert "bell\\x07" in r.stdout


def test_class_folders_differing_only_in_unicode_normalisation(tmp_path):
    """café in NFC and in NFD became two classes that look identical."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    root = tmp_path / "imgs"
    for name in (nfc, nfd):
        (root / name).mkdir(parents=True)
        (root / name / "a.jpg").write_bytes(jpeg())
    one_line_error(run("shard", f"imagefolder:{root}", tmp_path / "out"),
                   "differ only in Unicode normalisation (NFC/NFD)")
    split = tmp_path / "split"  # one spelling in train, the other in val: one class
    for sub, name in (("train", nfd), ("val", nfc)):
        (split / sub / name).mkdir(parents=True)
        (split / sub / name / "a.jpg").write_bytes(jpeg())
        (split / sub / "other").mkdir(parents=True, exist_ok=True)
        (split / sub / "other" / "b.jpg").write_bytes(jpeg((0, 0, 200)))
    r = run("shard", f"imagefolder:{split}", tmp_path / "out2")
    assert r.exit_code == 0 and r.stdout.startswith("wrote 2 train / 2 val"), r.output
    from ltpipe.shards.format import load_manifest

    m = load_manifest(tmp_path / "out2")
    assert m.classes == (nfc, "other") and m.split("val").class_counts == (1, 1)


# --- rejected.tsv, links, labels ----------------------------------------------------------------

def test_rejected_tsv_escapes_every_line_break(tmp_path):
    """str.splitlines() also ends a line at VT, FF, FS/GS/RS, NEL, U+2028 and U+2029."""
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(jpeg())
    breaks = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    for i, ch in enumerate(breaks):
        (root / "cat" / f"x{i}{ch}forged.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert run("shard", f"imagefolder:{root}", out).exit_code == 0
    text = (out / "rejected.tsv").read_text()
    assert len(text.splitlines()) == len(breaks) and text.count("\n") == len(breaks)
    assert all(ch not in text for ch in breaks)
    assert f"{root}/cat/x7\\u2029forged.jpg\t" in text and f"{root}/cat/x5\\x85forged.jpg\t" in text


@pytest.mark.parametrize("link", ["hard", "sym"])
def test_the_same_file_in_train_and_val_through_a_link_is_a_leak(tmp_path, link):
    import os

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            (root / split / c / f"{split}.jpg").write_bytes(jpeg((len(split) * 20, 0, ord(c))))
    make = os.link if link == "hard" else os.symlink
    make(root / "train" / "a" / "train.jpg", root / "val" / "a" / "copy.jpg")
    make(root / "train" / "b" / "train.jpg", root / "train" / "b" / "again.jpg")
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0 and r.stdout.startswith("wrote 2 train / 2 val"), r.output
    assert _rejected(out) == {
        f"{root}/val/a/copy.jpg": f"the same file as {root}/train/a/train.jpg (a link), which "
                                  f"is in the train split",
        f"{root}/train/b/train.jpg": f"the same file as {root}/train/b/again.jpg (a link): a "
                                     f"duplicate"}
    listing = _list_source(tmp_path, ["a.jpg 0", "b.jpg 1"])
    make(listing.parent / "a.jpg", listing.parent / "a2.jpg")
    val = listing.parent / "val.txt"
    val.write_text("a2.jpg 0\nc.jpg 1\n")
    r = run("shard", f"list:{listing}", tmp_path / "l", "--val-list", val)
    assert r.exit_code == 0 and r.stdout.startswith("wrote 2 train / 1 val"), r.output
    assert list(_rejected(tmp_path / "l")) == [f"{listing.parent}/a2.jpg"]


def test_labels_with_leading_zeros_are_their_number(tmp_path):
    """"0000...3" was refused as "above 10,000,000"."""
    listing = _list_source(tmp_path, ["a.jpg 7", "b.jpg " + "0" * 5000 + "3", "c.jpg 0003"])
    r = run("shard", f"list:{listing}", tmp_path / "out")
    assert r.exit_code == 0, r.output
    from ltpipe.shards.format import load_manifest

    m = load_manifest(tmp_path / "out")
    assert m.raw["class_ids"] == [3, 7] and m.split("train").class_counts == (2, 1)
    listing.write_text("a.jpg 0\nb.jpg 00000000100000001\n")
    line = one_line_error(run("shard", f"list:{listing}", tmp_path / "o2"), "is above 10,000,000")
    assert "00000000100000001" in line


def test_a_cifar_batch_larger_than_any_is_refused_unread(tmp_path):
    _cifar100(tmp_path / "cifar-100-python", {b"fine_label_names": [b"a", b"b"]}, protocol=2)
    with open(tmp_path / "cifar-100-python" / "train", "r+b") as f:
        f.truncate(2 << 30)  # sparse: no disk blocks
    one_line_error(run("shard", f"cifar100:{tmp_path}", tmp_path / "out"),
                   "more than a CIFAR batch")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG, /proc")
def test_encoding_workers_end_with_a_killed_writer(tmp_path):
    """SIGKILL of `ltpipe shard` (the OOM killer's choice) left its encoding workers running,
    holding memory, for ever."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    writer = paused_writer(out, 60, classes=4, max_per_class=48, workers=2, samples_per_shard=10)
    try:
        children = open(f"/proc/{writer.pid}/task/{writer.pid}/children").read().split()
        assert len(children) >= 2
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    alive = set(children)
    for _ in range(100):
        alive = {pid for pid in alive if os.path.exists(f"/proc/{pid}")
                 and "Z" not in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[:1]}
        if not alive:
            break
        time.sleep(0.1)
    assert not alive
