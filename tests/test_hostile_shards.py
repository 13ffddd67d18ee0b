"""The shard writer against hostile and careless input: each case is refused with one line
(exit 2), or recorded in rejected.tsv, never a traceback, a hang or a silent change of the data."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

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

def test_second_writer_of_one_out_exits_2(tmp_path):
    """A real writer, paused after its first shard, makes a second `ltpipe shard` into the same
    OUT refuse (it once resumed from the first one's journal and both wrote, exit 0)."""
    out = tmp_path / "out"
    code = ("import sys, time; from ltpipe.shards.write import write_shards\n"
            "def pause(record):\n"
            "    print('shard', flush=True); time.sleep(30)\n"
            "write_shards('synthetic', sys.argv[1], classes=4, max_per_class=12,\n"
            "             samples_per_shard=10, progress=False, on_shard=pause)\n")
    first = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "shard"
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
